"""The offline HTML report: builder, pieces, circuitsvis without network, model views on every architecture,
and the page checked in headless Chromium with the network off."""

from __future__ import annotations

import html
import json
import re
import socket
import urllib.request

import numpy as np
import pytest
import torch
from browser import artifact_path, assert_report, check_report, open_report

from codecircuits.errors import InputError
from codecircuits.report import (
    Report,
    attention_of,
    attention_view,
    format_value,
    head_patterns,
    neuron_acts,
    neurons_of,
    position_labels,
    show_token,
)
from codecircuits.report._util import json_for_script
from codecircuits.report.cvis import bundle_js
from codecircuits.report.highlight import highlight_python

EVERY_KIND = ("heatmap", "attention", "neurons", "line-chart", "table", "tokens", "code")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    import circuitsvis.utils.render as cv_render

    monkeypatch.setattr(cv_render, "internet_on", refuse)


def _demo_report(model) -> tuple[Report, dict]:
    """A report with every kind of piece, from a tiny model."""
    prompt = "def f(x):\n    return str(len(x))"
    toks, pats, labels = head_patterns(model, prompt, ["L0H0", "L0H1", (1, 2), "L1H3"])
    ntoks, acts, nlabels = neuron_acts(model, prompt, ["L0N3", "L1N5", "L1N7"])
    metrics = {"accuracy_1": 1.0, "accuracy_4": 0.0, "n_prompts": 120, "logit_diff": -0.123456, "best_head": "L1H2"}
    r = Report("Demo: every piece of a report", subtitle="built from a tiny random Llama", meta={"model": "tiny llama"})
    r.section("Key numbers", text="The numbers a study reports, as cards; the browser test reads them back.")
    r.metrics(metrics, labels={"accuracy_1": "accuracy, 1 paren", "accuracy_4": "accuracy, 4 parens"})
    r.table(
        [{"layer": i, "head": i % 4, "score": float(np.sin(i)), "note": "x" * (i % 3)} for i in range(12)],
        caption="Scores per head (click a header to sort)",
    )
    r.section("Patching", text="A heatmap over layers and positions, with the token text on the x axis.")
    grid = np.random.default_rng(0).normal(size=(2, len(toks)))
    r.heatmap(
        grid,
        position_labels(toks),
        [f"{i}" for i in range(2)],
        title="Logit difference recovered",
        x_title="position",
        y_title="layer",
        center=0.0,
        value_label="recovered",
    )
    r.line_chart(
        list(range(5)),
        {"correct": [0, 1, 2, 1, 3], "wrong": [1, -1, 0.5, 2, 2.5]},
        title="Logit lens",
        x_title="layer",
        y_title="logit",
    )
    r.section("Attention and neurons")
    r.attention(toks, pats, labels, title="Chosen heads")
    r.neuron_activations(ntoks, acts, nlabels, title="Chosen neurons")
    r.token_values(ntoks, acts[:, 0], title="L0N3 over the code", marked=[-1], value_label="activation")
    r.code(prompt, title="The prompt")
    r.data({"metrics": metrics})
    return r, metrics


# ------------------------------------------------------------------------------------------------ the builder


def test_report_is_self_contained_and_offline(tiny, tmp_path, no_network):
    r, metrics = _demo_report(tiny)
    path = r.save(tmp_path / "sub" / "report.html")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<title>Demo: every piece of a report</title>" in text
    # no external resource of any kind; circuitsvis inlined once, without its source map or CDN
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "unpkg.com" not in text and "sourceMappingURL" not in text
    assert text.count('data-origin="circuitsvis"') == 1
    assert text.count("CircuitsVis") >= 1 and 'type="module"' not in text
    # the embedded data and the metric cards carry the exact numbers
    data = json.loads(html.unescape(re.search(r'id="cc-data-results">(.*?)</script>', text).group(1)))
    assert data == {"metrics": metrics}
    for key, value in metrics.items():
        m = re.search(rf'data-metric="{key}" data-value="([^"]*)"><div class="value">([^<]*)<', text)
        assert m and json.loads(html.unescape(m.group(1))) == value and html.unescape(m.group(2)) == format_value(value)
    # contents list links every section
    for slug in ("key-numbers", "patching", "attention-and-neurons"):
        assert f'href="#{slug}"' in text and f'<section id="{slug}">' in text


def test_report_without_views_does_not_inline_circuitsvis(tmp_path):
    r = Report("Just numbers").metrics({"a": 1})
    text = r.to_html()
    assert 'data-origin="circuitsvis"' not in text and "var CircuitsVis=" not in text
    assert len(text) < 50_000


def test_bundle_is_safe_to_inline():
    js = bundle_js()
    assert "</script" not in js.lower() and "<!--" not in js and "sourceMappingURL" not in js
    assert js.startswith('"use strict";var CircuitsVis=')


def test_titles_and_text_are_escaped():
    r = Report("<b>a & b</b>").section("x < y", text="<script>alert(1)</script>").metrics({"k<": "v>"})
    out = r.to_html()
    assert "<b>a" not in out and "&lt;b&gt;a &amp; b&lt;/b&gt;" in out
    assert "<script>alert(1)" not in out and 'data-metric="k&lt;"' in out


def test_heatmap_cells_colours_and_labels():
    vals = np.array([[-2.0, 0.0, 2.0], [1.0, np.nan, -1.0]])
    svg = Report("h").heatmap(vals, ["a", "b", "c"], ["L0", "L1"], center=0.0, x_title="position", y_title="layer")
    out = svg.to_html()
    cells = re.findall(
        r'<rect x="[^"]+" y="[^"]+" width="[^"]+" height="[^"]+" fill="(#[0-9a-f]{6})"><title>([^<]*)', out
    )
    assert len(cells) == 6
    fills = [f for f, _ in cells]
    assert fills[1] == "#f7f7f7"  # the centre is white
    assert fills[0] == "#053061" and fills[2] == "#67001f"  # the extremes are darkest blue / red
    assert fills[4] == "#d9d9d9"  # NaN is grey
    assert "layer L1, position b: value n/a" in html.unescape(cells[4][1])
    assert ">position</text>" in out and ">layer</text>" in out
    bar = re.search(r'<g class="colourbar">.*?</g>', out).group(0)
    assert re.findall(r">([^<>]+)</text>", bar) == ["2.0", "-2.0", "0.0", "value"]
    clipped = Report("h").heatmap(vals, center=0.0, vmin=-1, vmax=1, value_label="ld").to_html()
    bar = re.search(r'<g class="colourbar">.*?</g>', clipped).group(0)
    assert re.findall(r">([^<>]+)</text>", bar) == ["≥ 1.0", "≤ -1.0", "0.0", "ld"]
    # a title too long to stand beside a short plot is written horizontally above it, not clipped
    short = Report("h").heatmap(np.ones((2, 2)), y_title="pair (clean -> counterfactual count)").to_html()
    assert 'y="14" text-anchor="start">pair (clean -&gt; counterfactual count) ↓</text>' in short


@pytest.mark.parametrize(
    "lo, hi", [(5.719, 5.863), (0.0, 29.0), (-15.2, 0.0), (0.001, 0.004), (3.0, 3.0), (-1e-3, 2e5)]
)
def test_axis_ticks_cover_the_data(lo, hi):
    from codecircuits.figures.svg import _nice_ticks

    ticks = _nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and 2 <= len(ticks) <= 12
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0])


def test_line_chart_and_table_contents():
    out = (
        Report("c")
        .line_chart([0, 1, 2], {"a": [1.0, float("nan"), 3.0]}, x_title="layer", y_title="ld")
        .table({"name": ["x", "y"], "score": [0.5, -2.0]})
        .to_html()
    )
    assert out.count("<circle") == 2  # the NaN point is a gap, not a point
    assert 'data-sort="-2.0"' in out and "<td>x</td>" in out
    import pandas as pd

    dicts = Report("t").table([{1: "a", "x": 2}, {"x": 3, "y": None}]).to_html()
    assert re.findall(r'<th scope="col">([^<]*)</th>', dicts) == ["1", "x", "y"]
    indexed = Report("t").table(pd.DataFrame({"a": [1, 2]}, index=pd.Index(["p", "q"], name="k"))).to_html()
    assert re.findall(r'<th scope="col">([^<]*)</th>', indexed) == ["k", "a"] and "<td>q</td>" in indexed
    long = Report("t").table({"i": list(range(30))}, max_rows=10).to_html()
    assert long.count("<tr>") == 11 and "Showing the first 10 of 30 rows." in long


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r: r.attention(["a", "b"], np.ones((2, 3, 3))), "query and key lengths"),
        (lambda r: r.attention(["a", "b"], np.ones((2, 2, 2)), ["h0"]), "head_labels"),
        (lambda r: r.heatmap(np.ones((2, 3)), x_labels=["a"]), "x_labels"),
        (lambda r: r.heatmap(np.ones((2, 3, 4))), "2-D"),
        (lambda r: r.token_values(["a", "b"], [1.0]), "one value per token"),
        (lambda r: r.line_chart([0, 1], {"a": [1.0]}), "one value per x"),
        (lambda r: r.table([[1, 2], [3]]), "different lengths"),
        (lambda r: r.metrics({}), "non-empty dict"),
        (lambda r: r.metrics({"a": 1}).metrics({"a": 2}), "already added"),
        (lambda r: r.metrics({"a": [1, 2]}), "must be a number"),
        (lambda r: r.data(float("nan")), "JSON"),
        (lambda r: r.save("report.txt"), ".html"),
        (lambda r: r.neuron_activations(["a"], np.ones((2, 3))), "positions"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises(InputError, match=re.escape(message)):
        call(Report("bad input"))


@pytest.mark.parametrize(
    "src",
    [
        "def f(x):\n    return str(len(x)) + 1  # done\n",
        "#print the string 123\nprint(str(str(123",
        "s = f\"{x!r} is\" + 'a\\n'\nclass A(B): pass\n",
        '"""doc\nstring"""\nif x:\n\ty = [1, 2.5e3, 0x1F]\n',
        "x = (1,\n",
        "   weird indent\n  more",
    ],
)
def test_highlighter_keeps_every_character(src):
    out = highlight_python(src)
    assert html.unescape(re.sub(r"</?span[^>]*>", "", out)) == src


def test_highlighter_classes():
    out = highlight_python("def f(x):\n    return len(x)  # c\n")
    assert '<span class="hl-keyword">def</span> <span class="hl-defname">f</span>' in out
    assert '<span class="hl-builtin">len</span>' in out and '<span class="hl-comment"># c</span>' in out


def test_format_value_and_token_labels():
    assert [format_value(v) for v in (1.0, 0.0, 120, 0.123456, float("nan"), True, "x", None, 12345.0)] == [
        "1.0",
        "0.0",
        "120",
        "0.1235",
        "n/a",
        "yes",
        "x",
        "—",
        "12,345",
    ]
    assert format_value(np.float32(0.5)) == "0.5" and format_value(torch.tensor(3)) == "3"
    assert show_token("\n") == "⏎" and show_token("  ") == "··" and show_token(" x") == " x"
    assert show_token("\x1d") == "\\x1d" and show_token("a\x00") == "a\\x00" and show_token("é") == "é"
    assert position_labels(["<s>", "a\n"]) == ["0 <s>", "1 a⏎"]


def test_token_values_show_newlines_and_values():
    out = Report("t").token_values(["<s>", "x", "\n", " y"], [0.0, 1.0, -1.0, 0.5], value_label="act").to_html()
    spans = re.findall(
        r'<span class="tok[^"]*" data-pos="(\d)" style="background:(#[0-9a-f]{6})[^"]*" title="([^"]*)">', out
    )
    assert [p for p, _, _ in spans] == ["0", "1", "2", "3"]
    assert spans[0][1] == "#f7f7f7" and spans[1][1] == "#67001f" and spans[2][1] == "#053061"  # diverging at 0
    assert html.unescape(spans[2][2]) == "position 2 · ⏎ · act -1.0"
    assert '<span class="nl">⏎</span>\n' in out and '<span class="special">&lt;s&gt;</span>' in out


def test_missing_chromium_skips_locally_and_fails_in_ci(monkeypatch):
    import browser

    monkeypatch.setattr(browser, "find_chromium", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        browser.require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser test"):
        browser.require_chromium()


# ------------------------------------------------------------------------ model views, on every architecture


def test_head_patterns_match_the_cache(tiny):
    prompt = "print(str(123))"
    toks, pats, labels = head_patterns(tiny, prompt, ["L1H3", (0, 1)])
    _, cache = tiny.run_with_cache(prompt)
    assert labels == ["L1H3", "L0H1"] and len(toks) == pats.shape[1] == pats.shape[2]
    torch.testing.assert_close(pats[0], cache["blocks.1.attn.hook_pattern"][0, 3].float())
    torch.testing.assert_close(pats[1], cache["blocks.0.attn.hook_pattern"][0, 1].float())
    torch.testing.assert_close(pats.sum(-1), torch.ones(2, len(toks)))
    assert torch.all(pats.triu(1) == 0)  # causal


def test_neuron_acts_match_the_cache(tiny):
    code = "for i in range(10):\n    print(i)"
    toks, acts, labels = neuron_acts(tiny, code, "L0N2,L1N7")
    _, cache = tiny.run_with_cache(code)
    assert labels == ["L0N2", "L1N7"] and acts.shape == (len(toks), 2)
    torch.testing.assert_close(acts[:, 1], cache["blocks.1.mlp.hook_post"][0, :, 7].float())


def test_bad_heads_and_neurons(tiny):
    with pytest.raises(InputError, match="does not exist"):
        head_patterns(tiny, "x = 1", ["L9H0"])
    with pytest.raises(InputError, match="L3H2"):
        head_patterns(tiny, "x = 1", ["layer3head2"])
    with pytest.raises(InputError, match="does not exist"):
        neuron_acts(tiny, "x = 1", [(0, 10**6)])


def test_prompt_report_on_every_family(tiny):
    from codecircuits.report.prompt import prompt_report

    r, s = prompt_report(tiny, "print(str(len(x", k_heads=3, k_neurons=2)
    n_layers, n_heads = tiny.cfg.n_layers, tiny.cfg.n_heads
    assert len(s.head_direct_logit) == n_layers and len(s.head_direct_logit[0]) == n_heads
    assert len(s.lens_logprob) == n_layers and len(s.heads) == 3 and len(s.neurons) == 2
    direct = torch.tensor(s.head_direct_logit)
    best = {f"L{int(i) // n_heads}H{int(i) % n_heads}" for i in direct.flatten().topk(3).indices}
    assert set(s.heads) == best and s.top_head in best
    assert s.lens_logprob[-1] == pytest.approx(float(np.log(s.top_prob)), abs=1e-3)  # the lens ends at the model
    assert json.loads(json.dumps(s.to_dict()))["metrics"] == s.metrics()
    assert r.needs_circuitsvis


def test_notebook_views_display_offline(tiny, no_network):
    view = neurons_of(tiny, "x = [1, 2]", ["L0N0", "L1N1"])
    out = view._repr_html_()
    assert 'data-component="TextNeuronActivations"' in out and "var CircuitsVis=" in out
    assert "unpkg.com" not in out and "<style>" in out
    toks, pats, labels = head_patterns(tiny, "x = [1, 2]", ["L0H0"])
    assert "AttentionHeads" in attention_view(toks, pats, labels)._repr_html_()
    both = attention_of(tiny, ["x = [1, 2]", "print(x)"], "L0H0,L1H1")._repr_html_()
    assert both.count('data-component="AttentionHeads"') == 2 and both.count("var CircuitsVis=") == 1
    assert 'class="ccr"' in Report("nb").metrics({"a": 1})._repr_html_()


# --------------------------------------------------------------------------------- in a real browser (Chromium)


@pytest.fixture(scope="module")
def tiny_llama():
    from codecircuits.testing import tiny_model

    return tiny_model("llama")


def test_demo_report_in_browser(tiny_llama, tmp_path):
    r, metrics = _demo_report(tiny_llama)
    path = r.save(tmp_path / "demo.html")
    # click "score" once (ascending) and twice (descending), then read the column back
    column = "[...document.querySelectorAll('table.cc-table tbody tr')].map(r => +r.cells[2].dataset.sort)"
    click = "document.querySelectorAll('table.cc-table th')[2].click()"
    c = open_report(
        path, artifact_path("report_demo.png"), evaluate=(column, click, column, click, column, "document.title")
    )
    assert_report(c, metrics, title="Demo: every piece of a report", require=EVERY_KIND)
    before, _, up, _, down, _ = c.evaluated
    assert before == [float(np.sin(i)) for i in range(12)]
    assert up == sorted(before) and down == sorted(before, reverse=True)
    assert c.requests == [path.resolve().as_uri()]  # the page itself, nothing else
    assert c.screenshot.stat().st_size > 10_000
    views = {v["kind"]: v for v in c.page["views"]}
    assert views["attention"]["text"].startswith("Head Selector") and "L1H2" in views["attention"]["text"]
    assert c.page["heatmaps"][0]["xlabels"] == len(
        position_labels(head_patterns(tiny_llama, "def f(x):\n    return str(len(x))")[0])
    )


def test_browser_check_catches_problems(tmp_path):
    """The harness is not a rubber stamp: wrong numbers, network requests and script errors all fail it."""
    from browser import Browser, require_chromium

    page = Report("Caught").metrics({"a": 0.5, "b": float("nan")}).heatmap(np.eye(2)).to_html()
    good, bad = tmp_path / "good.html", tmp_path / "bad.html"
    good.write_text(page)
    bad.write_text(
        page.replace(
            "</body>",
            '<img src="https://example.com/pixel.png"><script>fetch("http://example.org/x");'
            "console.error('boom'); null.x;</script></body>",
        )
    )
    with Browser(require_chromium()) as b:
        ok = open_report(good, tmp_path / "good.png", browser=b)
        c = open_report(bad, None, browser=b)
    nan = float("nan")
    assert_report(ok, {"a": 0.5, "b": nan}, title="Caught", require=("heatmap",))
    with pytest.raises(AssertionError, match="metric a"):
        assert_report(ok, {"a": 0.25, "b": nan})
    with pytest.raises(AssertionError, match="metric b"):
        assert_report(ok, {"a": 0.5, "b": 1.0})
    with pytest.raises(AssertionError, match="not expected"):
        assert_report(ok, {"a": 0.5})
    with pytest.raises(AssertionError, match="not shown"):
        assert_report(ok, {"a": 0.5, "b": nan, "c": 1})
    with pytest.raises(AssertionError, match="page title"):
        assert_report(ok, {"a": 0.5, "b": nan}, title="Other")
    with pytest.raises(AssertionError, match="has no attention"):
        assert_report(ok, {"a": 0.5, "b": nan}, require=("attention",))
    assert "https://example.com/pixel.png" in c.outgoing and "http://example.org/x" in c.outgoing
    assert any("boom" in e for e in c.console_errors) and any("uncaught" in e for e in c.console_errors)
    assert c.failed_requests
    with pytest.raises(AssertionError, match="console errors"):
        assert_report(c, {"a": 0.5, "b": nan})


def test_notebook_outputs_render_offline_in_browser(tiny_llama, tmp_path):
    """Two views and a report inserted the way Jupyter inserts HTML outputs (innerHTML, then each script
    re-created so it runs) all draw, with no network and no console errors."""
    toks, pats, labels = head_patterns(tiny_llama, "x = [1, 2]", ["L0H0", "L1H1"])
    outputs = [
        attention_view(toks, pats, labels)._repr_html_(),
        neurons_of(tiny_llama, "for i in x:\n    print(i)", ["L0N0", "L1N1"])._repr_html_(),
        Report("Inline report").metrics({"a": 1}).heatmap(np.eye(3))._repr_html_(),
    ]
    page = tmp_path / "notebook.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Notebook</title></head><body>"
        "<h1 data-report-title>Notebook</h1>"
        f"<script>const outputs = {json_for_script(outputs)};"
        """
        for (const out of outputs) {
          const cell = document.createElement('div'); cell.className = 'output';
          document.body.appendChild(cell);
          cell.innerHTML = out;
          for (const old of cell.querySelectorAll('script')) {
            if (old.type === 'application/json') continue;
            const s = document.createElement('script'); s.textContent = old.textContent;
            old.replaceWith(s);
          }
        }
        </script></body></html>"""
    )
    c = check_report(
        page,
        {"a": 1},
        artifact_path("report_notebook.png"),
        title="Notebook",
        require=("attention", "neurons", "heatmap"),
    )
    assert len(c.page["views"]) == 2 and all(v["drawn"] for v in c.page["views"])


def test_report_command_in_browser(tiny_dirs, tmp_path, capsys):
    from codecircuits.cli import main

    out = tmp_path / "cmd" / "report.html"
    assert (
        main(["report", "--model", str(tiny_dirs["qwen2"]), "--prompt", "x = 1\\nprint(str(len(x", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert f"report written to {out}" in printed
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["prompt"] == "x = 1\nprint(str(len(x"  # the shell's \n is read as a newline
    assert len(data["heads"]) == 6 and len(data["neurons"]) == 8 and data["metrics"]["n_tokens"] == len(data["tokens"])
    assert main(["report", "--model", str(tiny_dirs["qwen2"]), "--heads", "L7H0", "--out", str(out)]) == 2
    assert "head L7H0 does not exist" in capsys.readouterr().err
    check_report(
        out,
        data["metrics"],
        artifact_path("report_command.png"),
        title=f"What {tiny_dirs['qwen2'].name} does on one prompt",
        require=EVERY_KIND,
    )


@pytest.mark.slow
def test_prompt_report_on_default_model(default_model, tmp_path):
    """On smollm2-135m the paren prompt is answered with ')))' and the page shows exactly the JSON's numbers."""
    from codecircuits.report.prompt import prompt_report

    r, s = prompt_report(default_model, "#print the string 123\nprint(str(str(123", model_name="smollm2-135m")
    assert s.top_token == ")))" and s.top_prob > 0.5
    assert s.lens_logprob[-1] > s.lens_logprob[0] + 5  # the answer gets much likelier with depth
    # the heads that write ')))' directly are late ones (measured: L28H4, direct logit 4.6)
    layer = int(s.top_head[1:].split("H")[0])
    assert layer >= 20 and max(max(row) for row in s.head_direct_logit) > 1.0
    path = r.save(tmp_path / "smollm2.html")
    check_report(
        path,
        s.metrics(),
        artifact_path("report_smollm2.png"),
        title="What smollm2-135m does on one prompt",
        require=EVERY_KIND,
    )
