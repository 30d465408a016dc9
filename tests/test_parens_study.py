"""The closing-paren study: the whole study on a tiny model of every family; its findings on smollm2-135m."""

from __future__ import annotations

import json

import pytest
import torch
from browser import SCREENSHOT_FAMILY, check_study_report

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
    # accuracy is the argmax on the same prompts the paren task scores
    ds = task.dataset(tiny, n_numbers=20, split="test").select(limit=4)
    assert s.accuracy == pytest.approx(task.accuracy(tiny, ds))
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
        assert entry["corrupted_count"] == [k - 1]
    assert len(s.ablation["rows"]) == len(s.ablation["candidates"]) > 0
    assert s.scaling["hardest"] in s.counts and s.scaling["rows"]
    assert s.mined["available"] and s.mined["candidates"] == {1: 3, 2: 3, 3: 3, 4: 3}
    assert all(s.mined["by_count"][k]["n"] == 3 for k in s.counts)
    # every number goes to JSON, and the report and JSON files are written
    data = json.loads(json.dumps(s.to_json()))
    for key in ("accuracy", "logit_lens", "contributions", "promoters", "counting", "patching", "ablation", "scaling"):
        assert key in data
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


SLOW_CONFIG = study.ParensConfig(
    prompts_per_n=8,
    pairs_per_n=1,
    intervention_prompts_per_n=3,
    n_candidates=4,
    scale_top_k=(5,),
    scale_factors=(2.0,),
    mined=False,
)


@pytest.fixture(scope="module")
def smollm2_study(default_model):
    return study.run(default_model, SLOW_CONFIG, progress=False)


@pytest.mark.slow
def test_smollm2_closes_1_to_3_parens_and_fails_at_4(smollm2_study):
    s = smollm2_study
    for k in (1, 2, 3):
        assert s.accuracy[k] >= 0.95
    assert s.accuracy[4] <= 0.2
    assert s.predictions[4].count(")))") >= 0.8 * len(s.predictions[4])  # it closes three instead of four


@pytest.mark.slow
def test_smollm2_answer_emerges_late(smollm2_study):
    s = smollm2_study
    for k in (1, 2, 3):
        assert s.emergence[k] is not None and s.emergence[k] >= 15  # of 30 layers
    # for 4 parens the wrong ")))" leads through all of the last ten layers
    assert (s.lens[4].post().mean(-1)[-10:] < 0).all()
    # the biggest direct writes to the logit difference are in the last quarter of the network
    for k in (1, 2, 3):
        c = s.contributions[k]
        both = torch.stack([c.attn.mean(-1), c.mlp.mean(-1)]).abs()
        assert both.argmax().item() % both.shape[1] >= 22


@pytest.mark.slow
def test_smollm2_attention_and_heads(smollm2_study):
    s = smollm2_study
    # patching one late attention layer restores a large part of the clean logit difference
    for k in (1, 2, 3):
        assert max(s.patching[k]["attn_out"][20:]) >= 0.3
    # each of 1-3 parens has a head that promotes it with F1 >= 0.5
    for k in (1, 2, 3):
        assert s.promoters.f1[s.counts.index(k)].max() >= 0.5
    # a counting head: its attention to the "(" tokens follows the count closely
    assert s.counting.attn_corr.nan_to_num(0).max() >= 0.8


@pytest.mark.slow
def test_smollm2_one_head_hurts_4_and_amplification_targets_it(smollm2_study):
    s = smollm2_study
    rows = s.ablation["rows"]
    # removing some promoter raises the 4-paren logit difference while it lowers the 3-paren one
    assert any(r["d_logit_diff_4"] > 0.3 and r["d_logit_diff_3"] < 0 for r in rows)
    # removing the top counting head lowers the logit difference for 1-3 parens
    top_counting = "L{}H{}".format(*s.counting.heads(1)[0])
    row = next(r for r in rows if r["head"] == top_counting)
    assert all(row[f"d_logit_diff_{k}"] < -0.3 for k in (1, 2, 3))
    # the amplification sweep targets the failing count (its outcome depends on which heads the F1 ranking
    # picks from few prompts: see docs/findings_parens.md)
    assert s.scaling["hardest"] == 4 and s.scaling["rows"]


@pytest.mark.slow
def test_smollm2_report_in_a_browser(smollm2_study, tmp_path):
    html, js = smollm2_study.save(tmp_path / "parens")
    check_study_report(
        html, js, "parens-smollm2-135m.png", require=("heatmap", "attention", "line-chart", "table", "code")
    )
    assert json.loads(js.read_text())["accuracy"]["4"] <= 0.2
