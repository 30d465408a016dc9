"""The circuit study: the whole study on a tiny model of every family, the command line, a refused architecture;
its headline on smollm2-135m (CPR and CMD against random circuits, the report in a browser)."""

from __future__ import annotations

import json
import re

import pytest
from browser import artifact_path, assert_report, open_report

from codecircuits.errors import InputError, UnsupportedArchitectureError
from codecircuits.studies import circuit as study

# the circuit graphs as the browser lays them out: how many, their drawn edges and nodes, their size on the page
GRAPHS_JS = """[...document.querySelectorAll('svg[data-kind=circuit-graph]')].map(e => {
  const r = e.getBoundingClientRect();
  return {edges: e.querySelectorAll('path.edge').length, nodes: e.querySelectorAll('g.node').length,
          kinds: [...new Set([...e.querySelectorAll('path.edge')].map(p => p.getAttribute('data-edge-kind')))],
          w: r.width, h: r.height};
})"""


@pytest.fixture(scope="module")
def tiny_study():
    memo = {}

    def get(model):
        if id(model) not in memo:
            memo[id(model)] = study.run(model, study.CircuitConfig.tiny(), progress=False)
        return memo[id(model)]

    return get


def _number(prompt: str) -> int:
    return int(re.search(r"string (\d+)", prompt).group(1))


def check_circuit_report(html, js, screenshot: str):
    """The study's report in headless Chromium: the checks of every study report, plus one visible circuit graph
    per drawn size with as many edges as the SVG says it drew."""
    data = json.loads(js.read_text())
    c = open_report(html, artifact_path(screenshot), evaluate=(GRAPHS_JS,))
    assert_report(c, data["metrics"], require=("line-chart", "table", "code"))
    assert data["model"] in c.page["title"]
    graphs = c.evaluated[0]
    assert len(graphs) == len(data["circuits"])
    page = html.read_text()
    drawn = [int(n) for n in re.findall(r'data-kind="circuit-graph" data-edges="(\d+)"', page)]
    for g, n in zip(graphs, drawn):
        assert g["edges"] == n and g["w"] > 200 and g["h"] > 100, g
        assert g["nodes"] >= 1  # the input at least
    return c, graphs


def test_whole_study_on_every_family(tiny, tiny_study, tmp_path):
    s = tiny_study(tiny)
    cfg = s.config
    g = s.graph
    assert s.scores.edge_matrix.shape == g.valid.shape and s.scores.n_examples == len(s.pairs["train"])
    # edges are scored on train numbers and evaluated on held-out ones
    train = {_number(p["clean"]) for p in s.pairs["train"]}
    test = {_number(p["clean"]) for p in s.pairs["test"]}
    assert train and test and not train & test
    assert all(p["answer"] == ")" * cfg.n_open for p in s.pairs["test"])
    for name in ("signed", "absolute"):
        c = s.curves[name]
        assert c.percentages == list(cfg.percentages) and len(c.random) == cfg.n_random
        assert c.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)  # 100% of edges is the full model
        assert c.n_edges[-1] == g.n_edges
    assert s.cpr == s.curves["signed"].area and s.cmd == s.curves["absolute"].area_from_1
    assert len(s.random_cpr) == len(s.random_cmd) == cfg.n_random
    for p, d in s.drawn.items():
        # the drawn circuit is the curve's |score| circuit of that size, measured again per pair
        j = cfg.percentages.index(p)
        assert d["n_edges"] == s.curves["absolute"].n_edges[j] == s.circuits[p].n_edges
        assert d["faithfulness"] == pytest.approx(s.curves["absolute"].faithfulness[j], abs=1e-4)
        assert len(d["random"]) == cfg.n_random and len(d["metric_per_pair"]) == len(s.pairs["test"])
        lo, hi = d["interval"]
        assert lo <= hi
        assert set(d["shared_promoters"]) == set(d["heads"]) & set(s.paren_heads["promoters"])
        assert set(d["shared_counting"]) == set(d["heads"]) & set(s.paren_heads["counting"])
    assert len(s.paren_heads["promoters"]) <= cfg.top_heads and len(s.paren_heads["counting"]) == cfg.top_heads
    # every number goes to JSON; the report has one graph per drawn size and every metric card
    data = json.loads(json.dumps(s.to_json()))
    assert data["metrics"] == json.loads(json.dumps(s.metrics()))
    assert data["cpr"] == data["metrics"]["cpr"] and data["wall_s"] > 0
    html, js = s.save(tmp_path / "circuit")
    page = html.read_text()
    assert page.count('data-kind="circuit-graph"') == len(cfg.drawn)
    assert page.count('<polygon class="band"') == 1  # the random circuits' range under the curves
    for key in s.metrics():
        assert f'data-metric="{key}"' in page
    assert json.loads(js.read_text())["curves"]["signed"]["faithfulness"] == data["curves"]["signed"]["faithfulness"]


def test_report_in_a_browser(tiny_dirs, tmp_path):
    from codecircuits import load_model

    model = load_model(tiny_dirs["llama"], device="cpu")
    s = study.run(model, study.CircuitConfig.tiny(), progress=False)
    html, js = s.save(tmp_path / "circuit")
    _, graphs = check_circuit_report(html, js, "circuit-tiny-llama.png")
    assert max(gr["edges"] for gr in graphs) > 0
    # what the command prints: CPR and CMD beside random circuits, then one line per drawn circuit
    lines = s.summary_text().splitlines()
    assert lines[0].startswith(f"CPR {s.cpr:.3f}  (random circuits: mean ") and lines[1].startswith("CMD ")
    assert [line.split("%")[0] for line in lines[2:]] == [f"{p:g}" for p in s.drawn]


def test_command_line_on_a_model_directory(tiny_dirs, tmp_path, capsys):
    from codecircuits.cli import main

    out = tmp_path / "out"
    argv = ["circuit", "--model", str(tiny_dirs["qwen2"]), "--out", str(out), "--quiet", "--threads", "1"]
    argv += ["--n-pairs", "2", "--n-test-pairs", "2", "--steps", "1", "--n-random", "1", "--n-numbers", "20"]
    argv += ["--percentages", "5,50,100", "--drawn", "50", "--head-prompts", "2", "--n-bootstrap", "50"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "CPR" in printed and "CMD" in printed and "50% of edges" in printed
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["percentages"] == [5.0, 50.0, 100.0] and data["config"]["n_pairs"] == 2
    assert set(data["random"]) == {"cpr", "cmd"} and len(data["random"]["cpr"]) == 1
    assert (out / "report.html").is_file()


def test_post_norm_blocks_are_refused_naming_the_block(tmp_path):
    from codecircuits import load_model
    from codecircuits.testing import save_tiny_model

    model = load_model(save_tiny_model("gemma3", tmp_path / "gemma3"), device="cpu")
    with pytest.raises(UnsupportedArchitectureError, match=r"blocks\.0 \(\w+\)"):
        study.run(model, study.CircuitConfig.tiny(), progress=False)


def test_config_errors():
    with pytest.raises(InputError, match="n_pairs"):
        study.CircuitConfig(n_pairs=0)
    with pytest.raises(InputError, match="counterfactual"):
        study.CircuitConfig(counterfactual="swap")
    with pytest.raises(InputError, match="method"):
        study.CircuitConfig(method="ACDC")
    with pytest.raises(InputError, match="percentages"):
        study.CircuitConfig(percentages=(10.0, 5.0))
    with pytest.raises(InputError, match="has no setting"):
        study.run(object(), n_pair=3)


# ----------------------------------------------------------------------------------------------------------------
# the default model at the study's defaults


@pytest.fixture(scope="module")
def smollm2_study(default_model):
    return study.run(default_model, progress=False)


@pytest.mark.slow
def test_smollm2_circuit_beats_random_circuits(smollm2_study):
    s = smollm2_study
    assert s.curves["signed"].full > s.curves["signed"].empty + 1.0  # the pairs move the logit difference
    # CPR above every random circuit's area, CMD below every random circuit's
    assert s.cpr > max(s.random_cpr)
    assert s.cmd < min(s.random_cmd)
    # at the largest drawn size, even the bootstrap interval's low end is above every random circuit of that size
    big = s.drawn[max(s.drawn)]
    assert big["faithfulness"] > max(big["random"])
    assert big["interval"][0] > max(big["random"])


@pytest.mark.slow
def test_smollm2_report_in_a_browser(smollm2_study, tmp_path):
    html, js = smollm2_study.save(tmp_path / "circuit")
    _, graphs = check_circuit_report(html, js, "circuit-smollm2-135m.png")
    assert all(gr["edges"] > 0 for gr in graphs)
    assert any({"q", "k", "v"} <= set(gr["kinds"]) for gr in graphs)
