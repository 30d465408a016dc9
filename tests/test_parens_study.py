"""The closing-paren study: the whole study on a tiny model of every family. Its findings on smollm2-135m are
asserted, with their intervals, on the one run of the defaults in tests/test_demo.py."""

from __future__ import annotations

import json

import pytest
import torch
from browser import SCREENSHOT_FAMILY, check_study_report

from codecircuits import intervals
from codecircuits.corpus import directory
from codecircuits.studies import parens as study
from codecircuits.tasks import parens as task

CODE = "x = f(g(h(1)))\ny = f(g(2))\nz = print(3)\nw = a(b(c(d(4))))\n" * 3


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("code")
    (root / "a.py").write_text(CODE)
    corpus = directory(root)
    memo = {}

    def get(model):
        if id(model) not in memo:
            memo[id(model)] = study.run(model, study.ParensConfig.tiny(), corpus=corpus, progress=False)
        return memo[id(model)]

    return get


def test_whole_study_on_every_family(family, tiny, tiny_study, tmp_path):
    s = tiny_study(tiny)
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    assert s.counts == (1, 2, 3, 4)
    # accuracy is the argmax on the same (evaluation-split) prompts the paren task scores
    ds = task.dataset(tiny, n_numbers=20, split="test").select(limit=4)
    assert s.accuracy == pytest.approx(task.accuracy(tiny, ds))
    # heads are chosen on the train split: the evaluation F1 is a different measurement
    assert s.config.selection_split == "train" and s.promoters_eval is not None
    assert s.scaling["hardest_chosen_on"] == "train"
    for k in s.counts:
        assert s.lens[k].values.shape == (2 * L, 4)
        assert s.contributions[k].attn.shape == (L, 4)
        total = s.contributions[k].attn.sum(0) + s.contributions[k].mlp.sum(0)
        total = total + s.contributions[k].embed + s.contributions[k].bias
        torch.testing.assert_close(total, s.lens[k].final, atol=2e-4, rtol=1e-4)
        assert s.wrong_of[k] in s.counts and s.wrong_of[k] != k
    assert s.promoters.f1.shape == (4, L, H)
    assert s.counting.attn_corr.shape == (L, H)
    # the tiny tokenizer has no "((": patching uses the "fewer" counterfactuals, so 1 paren has no pair
    assert set(s.patching) == {2, 3, 4}
    for k, entry in s.patching.items():
        assert len(entry["attn_out"]) == L and len(entry["mlp_out"]) == L
        assert len(entry["attn_out_parens"]) == len(entry["paren_layers"]) == L  # stride 1 in the tiny config
        assert entry["corrupted_count"] == [k - 1] and entry["n_pairs"] == 2
        rec = entry["attn_out_selected_recovery"]
        assert rec["n"] == 2 and (rec["low"] is None or rec["low"] <= rec["high"])
    # patching the last layer's attention at the answer position restores exactly its share: the patched
    # run differs from the corrupted one only there, so recovery is finite and the per-layer list is complete
    assert all(len(e["paren_positions"]) == k for k, e in s.patching.items())
    assert len(s.ablation["rows"]) == len(s.ablation["candidates"]) > 0
    assert s.ablation["promoter_sets"] and s.ablation["pooled"]["difference"]["n"] > 0
    assert s.scaling["hardest"] in s.counts and s.scaling["rows"]
    assert s.tracking["available"] and s.tracking["n_evaluation"] == 8  # 4 open x 2 closed, 1 per cell
    # every claim has a verdict and, where it rests on a number, an interval around its estimate
    assert {c.claim.split(" (")[0] for c in s.claims} >= {"the answer emerges in middle-to-late layers"} or s.claims
    for c in s.claims:
        assert c.verdict in ("reproduced", "partly", "not reproduced")
        if c.evidence is not None and c.evidence.low == c.evidence.low:  # not NaN
            assert c.evidence.low - 1e-9 <= c.evidence.estimate <= c.evidence.high + 1e-9
    assert s.mined["available"] and s.mined["candidates"] == {1: 3, 2: 3, 3: 3, 4: 3}
    assert all(s.mined["by_count"][k]["n"] == 3 for k in s.counts)
    # every number goes to JSON, and the report and JSON files are written
    data = json.loads(json.dumps(s.to_json()))
    for key in (
        "accuracy", "logit_lens", "contributions", "promoters", "counting", "patching", "ablation", "scaling",
        "claims", "intervals", "count_tracking",
    ):
        assert key in data
    assert len(data["claims"]) == len(s.claims) and data["intervals"]["accuracy"]["1"]["n"] == 4
    assert data["accuracy"] == {str(k): v for k, v in s.accuracy.items()}
    html, js = s.save(tmp_path / "parens")
    page = html.read_text()
    assert json.loads(js.read_text())["counts"] == [1, 2, 3, 4]
    for key in s.key_metrics():
        assert f'data-metric="{key}"' in page
    check_study_report(
        html, js, f"parens-{tiny.cfg.model_name}.png", require=("heatmap", "attention", "line-chart", "table", "code"),
        screenshot=family == SCREENSHOT_FAMILY,
    )


def test_config_errors():
    with pytest.raises(Exception, match="prompts_per_n"):
        study.ParensConfig(prompts_per_n=0)
    with pytest.raises(Exception, match="scale_rankings"):
        study.ParensConfig(scale_rankings=("random",))
    with pytest.raises(Exception, match="pairs_per_n"):
        study.ParensConfig(prompts_per_n=4, pairs_per_n=5)
    with pytest.raises(Exception, match="intervene_at"):
        study.ParensConfig(intervene_at="middle")
    with pytest.raises(Exception, match="selection_split"):
        study.ParensConfig(selection_split="dev")


def test_vectorised_bootstrap_matches_the_shared_one():
    x = torch.arange(20.0) % 7
    a = intervals.statistic(lambda v: v.mean(-1), x, n_resamples=500)
    assert a.estimate == pytest.approx(float(x.mean())) and a.low < a.estimate < a.high
    b = intervals.mean(x, n_resamples=500)  # the same resamples, averaged the same way
    assert (a.low, a.high) == pytest.approx((b.low, b.high), abs=1e-12)
    # several statistics of the same resamples at once, and float32 kept as it is
    lo_hi = intervals.statistic(lambda v: torch.stack([v.mean(-1), v.amax(-1)], -1), x.float(), n_resamples=50,
                                dtype=None)
    assert [iv.estimate for iv in lo_hi] == [pytest.approx(float(x.mean())), 6.0] and lo_hi[1].high == 6.0


def test_summary_text_is_what_the_command_prints(family, tiny, tiny_study):
    s = tiny_study(tiny)
    lines = s.summary_text().splitlines()
    assert lines[0].startswith("accuracy per number of parens  1: ") and lines[1].startswith("answer emerges at layer")
    assert len(lines) == 2 + len(s.claims) and all(c.claim in line for c, line in zip(s.claims, lines[2:]))
