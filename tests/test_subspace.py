"""Subspace activation patching, DAS and the illusion checks, on every family of the test matrix."""

from __future__ import annotations

import math

import pytest
import torch
from browser import SCREENSHOT_FAMILY, check_study_report

from codecircuits import HookNameError, InputError, intervals
from codecircuits import subspace as sub

BASE = ["print(str(123", "print(str(45", "print(str(str(7", "x = (1 + 2", "print(str(str(88", "print(str(6"]
SOURCE = ["print(str(str(123", "print(str(str(4", "print(str(8", "x = ((1 + 2", "print(str(31", "print(str(str(60"]
BV = [0, 0, 1, 0, 1, 0]
SV = [1, 1, 0, 1, 0, 1]


def _pairs(model):
    return sub.PatchPairs.from_prompts(model, BASE, SOURCE, BV, SV, ["))", ")))"], groups=list("aabbcc"))


def _equal_length_pairs(model):
    base = ["print(str(123", "print(str(456", "print(str(789", "print(str(321"]
    source = ["print(str(124", "print(str(457", "print(str(788", "print(str(320"]
    return sub.PatchPairs.from_prompts(model, base, source, [0, 1, 0, 1], [1, 0, 1, 0], ["))", ")))"])


def _reference_full_patch(model, pairs, hook):
    """Last-position answer logits with the whole activation replaced by the source's, by plain hooks."""
    store = {}

    def grab(act, hook):
        store["src"] = act[torch.arange(len(act)), pairs.source_positions].clone()

    with torch.no_grad():
        model.run_with_hooks(pairs.source_tokens, fwd_hooks=[(hook, grab)])

        def put(act, hook):
            act = act.clone()
            act[torch.arange(len(act)), pairs.base_positions] = store["src"]
            return act

        logits = model.run_with_hooks(pairs.base_tokens, fwd_hooks=[(hook, put)])
    rows = torch.arange(len(pairs))
    return logits[rows, pairs.base_positions][:, pairs.answer_ids]


HOOKS = ("blocks.1.mlp.hook_post", "blocks.0.hook_resid_post")


@pytest.mark.parametrize("hook", HOOKS)
def test_zero_patch_changes_nothing(tiny, hook):
    pairs = _pairs(tiny)
    d = sub.activations(tiny, hook, pairs.base_tokens, pairs.base_positions).shape[1]
    none = sub.patch(tiny, pairs, hook, torch.zeros(d, 0))
    assert none.dimension == 0
    # the patched runs start at the hook's layer, the clean run at the tokens: equal up to float rounding
    assert torch.allclose(none.ld_patched, none.ld_clean, atol=1e-5) and abs(none.fldd) < 1e-3
    v = sub.random_direction(tiny, hook, seed=3)
    weak = sub.patch(tiny, pairs, hook, v, strength=0.0)
    assert torch.allclose(weak.ld_patched, weak.ld_clean, atol=1e-5)
    assert abs(weak.fldd) < 1e-3
    # a real 1-D patch does change something (so the two checks above can fail)
    strong = sub.patch(tiny, pairs, hook, v, strength=50.0)
    assert not torch.allclose(strong.ld_patched, strong.ld_clean, atol=1e-4)


@pytest.mark.parametrize("hook", HOOKS)
def test_full_basis_equals_full_component_patch(tiny, hook):
    pairs = _pairs(tiny)
    full = sub.patch(tiny, pairs, hook, None)
    d = sub.activations(tiny, hook, pairs.base_tokens, pairs.base_positions).shape[1]
    basis = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))[0]
    rotated = sub.patch(tiny, pairs, hook, basis)  # any orthonormal full basis is the identity patch
    ref = _reference_full_patch(tiny, pairs, hook)
    ref_ld = ref[torch.arange(len(pairs)), pairs.base_values] - ref[torch.arange(len(pairs)), pairs.source_values]
    assert full.dimension == d
    assert torch.allclose(full.ld_patched, ref_ld, atol=1e-4)
    assert torch.allclose(rotated.ld_patched, ref_ld, atol=1e-3)
    # and it is not the clean run
    assert not torch.allclose(full.ld_patched, full.ld_clean, atol=1e-4)


def test_nullspace_of_mlp_output_is_inert(tiny):
    hook = "blocks.1.mlp.hook_post"
    W = sub.readout_matrix(tiny, hook)
    assert W is not None and W.shape == (tiny.cfg.d_mlp, tiny.cfg.d_model)
    v = torch.randn(tiny.cfg.d_mlp, generator=torch.Generator().manual_seed(1))
    v_row, v_null = sub.rowspace_split(v, W)
    assert torch.allclose(v_row + v_null, v, atol=1e-5)
    assert (v_null @ W).abs().max() < 1e-3 * v.norm() * W.abs().max()
    assert abs(float(v_row @ v_null)) < 1e-3
    pairs = _pairs(tiny)
    null = sub.patch(tiny, pairs, hook, v_null, strength=20.0)
    assert torch.allclose(null.ld_patched, null.ld_clean, atol=1e-3)
    row = sub.patch(tiny, pairs, hook, v_row, strength=20.0)
    assert not torch.allclose(row.ld_patched, row.ld_clean, atol=1e-3)
    assert sub.readout_matrix(tiny, "blocks.0.hook_resid_post") is None


@pytest.mark.parametrize("hook", HOOKS)
def test_das_trains_and_lowers_its_loss(tiny, hook):
    pairs = _pairs(tiny)
    flags = [p.requires_grad for p in tiny.parameters()]
    d = sub.fit_direction(tiny, pairs, hook, epochs=6, batch_size=3, lr=0.05, progress=False)
    assert d.kind == "das" and len(d.losses) == 6
    assert abs(float(d.vector.norm()) - 1.0) < 1e-5
    assert d.losses[-1] < d.losses[0]
    assert [p.requires_grad for p in tiny.parameters()] == flags  # the model's flags are restored
    assert len(d.top(5)) == 5 and d.top(5)["weight"].abs().is_monotonic_decreasing and "<svg" in d.plot().to_svg()


def test_das_matches_transformer_lens_fit_das(tiny):
    from transformer_lens.tools.analysis.interchange import fit_das

    hook = "blocks.1.mlp.hook_post"
    pairs = _equal_length_pairs(tiny)
    pos = pairs.base_positions
    assert (pos == pos[0]).all() and (pairs.source_positions == pos[0]).all()
    ours = sub.fit_direction(
        tiny, pairs, hook, epochs=3, batch_size=2, lr=0.02, final_lr_factor=1.0, seed=4, progress=False
    )
    ref = fit_das(
        tiny,
        hook,
        pairs.base_tokens,
        pairs.source_tokens,
        pairs.source_values,
        lambda t: tiny(t)[:, -1, pairs.answer_ids],
        rank=1,
        base_positions=pos,
        source_positions=pairs.source_positions,
        epochs=3,
        batch_size=2,
        lr=0.02,
        seed=4,
    )
    assert torch.allclose(ours.vector, ref.basis[:, 0].float(), atol=1e-4)
    assert torch.allclose(torch.tensor(ours.losses), torch.tensor(ref.losses), atol=1e-4)


def test_illusion_checks_run_and_are_consistent(tiny):
    hook = "blocks.1.mlp.hook_post"
    pairs = _pairs(tiny)
    train, test = pairs.in_groups(["a", "b"]), pairs.in_groups(["c"])
    rep = sub.illusion_checks(tiny, train, test, hook, epochs=2, batch_size=2, seeds=(0, 1), progress=False)
    assert len(rep.seeds) == 2 and all(v in sub.VERDICTS for v in rep.verdicts)
    assert rep.verdict == (rep.verdicts[0] if len(set(rep.verdicts)) == 1 else "seeds disagree")
    assert not torch.allclose(rep.seeds[0].direction.vector, rep.seeds[1].direction.vector)  # two seeds, two fits
    assert abs(rep.row_norm**2 + rep.null_norm**2 - 1.0) < 1e-4
    keys = {k.split("/")[0] for k in rep.patches}
    assert {"full", "das", "rowspace", "nullspace", "mean_difference", "random", "random_rowspace"} <= keys
    # the report's DAS number is the DAS direction patched on its own, with an interval around it
    again = sub.patch(tiny, test, hook, rep.direction)
    assert abs(again.fldd - rep.fldd("das/test")) < 1e-3
    ci = rep.patches["das/test"].fldd_interval
    assert ci.low <= ci.estimate <= ci.high and ci.n == len(test)
    # the full-vocabulary accuracy can only be lower than the two-token one (a hit over the vocabulary is a hit
    # among the answers)
    das = rep.patches["das/test"]
    assert bool((das.hits_vocab <= das.hits).all())
    # the rowspace fraction is FLDD_row / FLDD_das
    assert rep.fraction.estimate == pytest.approx(rep.fldd("rowspace/test") / rep.fldd("das/test"), rel=1e-4)
    # the nullspace part is causally inert
    assert torch.allclose(rep.patches["nullspace/test"].ld_patched, rep.patches["nullspace/test"].ld_clean, atol=1e-3)
    assert {"v", "v_row", "v_null", "mean_difference", "random", "random_rowspace"} <= set(rep.separation)
    b = rep.norm_baseline
    assert b.row_low <= b.row_mean <= b.row_high and b.row_mean == pytest.approx(math.sqrt(b.rank / b.dim), abs=0.05)
    df = rep.to_dataframe()
    assert len(df) == len(rep.patches) and len(rep.top(3)) == 3 and rep.top()["fldd"].is_monotonic_decreasing
    das = rep.patches["das/test"]
    assert das.top(3)["drop"].is_monotonic_decreasing and das.top(3).index.isin(range(das.n_pairs)).all()
    for result in (rep, das, rep.separation["v"]):
        assert "<svg" in result.plot().to_svg()
    resid = sub.illusion_checks(tiny, train, test, "blocks.0.hook_resid_post", epochs=1, batch_size=2, progress=False)
    assert "rowspace/test" not in resid.patches and resid.row_norm != resid.row_norm  # nan: no readout
    assert resid.fraction is None and resid.norm_baseline is None


def _iv(estimate, low, high, n=20):
    return intervals.Interval(estimate, low, high, n)


def test_decide_follows_its_stated_rule():
    """The verdict rule, case by case, with the library's own thresholds (sub.RULE)."""
    r = sub.RULE
    strong = _iv(60, 40, 80)
    base = dict(
        effect=strong,
        train_effect=60.0,
        control=_iv(0, -1, 1),
        separation=_iv(3, 2, 4),
        full=_iv(0, -5, 5),
    )
    # no effect: the effect's interval reaches below min_effect, or below the random control's upper end
    assert sub.decide(**{**base, "effect": _iv(12, r.min_effect - 1, 20)})[0] == "no effect"
    assert sub.decide(**{**base, "control": _iv(45, 30, 50)})[0] == "no effect"
    # the residual stream (no readout): faithful when it generalises and activations separate along it
    assert sub.decide(**base)[0] == "faithful"
    assert sub.decide(**{**base, "separation": _iv(1.2, r.min_cohens_d - 0.1, 2)})[0] == "inconclusive"
    assert sub.decide(**{**base, "train_effect": 60 / r.min_generalisation + 1})[0] == "inconclusive"
    # with a readout: dormant rowspace (fraction's interval below min_fraction, or d along v_row below) -> illusion
    lo = r.min_fraction
    verdict, reasons, flags = sub.decide(**base, fraction=_iv(0.2, 0.1, lo - 0.01), row_separation=_iv(3, 2, 4))
    assert verdict == "illusion" and flags["dormant"] and flags["exceeds_component"]
    assert sub.decide(**base, fraction=_iv(0.8, 0.6, 1), row_separation=_iv(0.3, 0.1, r.min_cohens_d - 0.1))[0] == (
        "illusion"
    )
    # active rowspace (fraction's interval at or above min_fraction, d along v_row above min_cohens_d) -> faithful
    verdict, _, flags = sub.decide(**base, fraction=_iv(0.8, lo, 1), row_separation=_iv(3, 2, 4))
    assert verdict == "faithful" and flags["active"]
    # a fraction interval that straddles min_fraction decides nothing
    verdict, reasons, flags = sub.decide(**base, fraction=_iv(0.5, lo - 0.1, lo + 0.1), row_separation=_iv(3, 2, 4))
    assert verdict == "inconclusive" and not flags["dormant"] and not flags["active"]
    assert any("straddles" in x for x in reasons)


def test_vectorised_intervals_equal_the_shared_bootstrap():
    """codecircuits.subspace.stats resamples as codecircuits.intervals does: the same intervals, vectorised."""
    from codecircuits.subspace import stats

    g = torch.Generator().manual_seed(0)
    c, p, r = torch.randn(3, 25, generator=g).double() + torch.tensor([[2.0], [1.0], [1.5]], dtype=torch.float64)
    ref = intervals.paired(sub.fldd_of, c, p)
    got = stats.bootstrap_rows(stats.fldd_rows, c, p)
    assert (got.estimate, got.low, got.high, got.n) == pytest.approx((ref.estimate, ref.low, ref.high, ref.n))
    share = intervals.paired(lambda c, d, r: (c.mean() - r.mean()) / (c.mean() - d.mean()), c, p, r)
    got = stats.bootstrap_rows(stats.share_rows, c, p, r)
    assert (got.estimate, got.low, got.high) == pytest.approx((share.estimate, share.low, share.high))
    proj, values = torch.randn(30, generator=g).double(), (torch.arange(30) % 2).double()
    proj = proj + values
    ref = intervals.bootstrap(sub.cohens_d, proj, values)
    got = stats.bootstrap_rows(stats.cohens_d_rows, proj, values)
    assert (got.estimate, got.low, got.high) == pytest.approx((ref.estimate, ref.low, ref.high))


def test_norm_baseline_of_random_vectors():
    W = torch.randn(40, 10, generator=torch.Generator().manual_seed(0))
    b = sub.random_norm_baseline(W, n=4000, seed=1)
    assert b.rank == 10 and b.dim == 40
    assert b.row_mean == pytest.approx(math.sqrt(10 / 40), abs=0.02)
    assert b.row_low < b.row_mean < b.row_high and b.null_low < b.null_mean < b.null_high
    v = sub.random_rowspace_direction(W, seed=2)
    v_row, v_null = sub.rowspace_split(v, W)
    assert float(v.norm()) == pytest.approx(1.0) and float(v_null.norm()) < 1e-5
    with pytest.raises(InputError, match="at least 2"):
        sub.random_norm_baseline(W, n=1)


@pytest.mark.parametrize("rule", ["prompt", "covariance"])
def test_rank1_edit_of_w_out_equals_the_patch(tiny, rule):
    hook = "blocks.1.mlp.hook_post"
    pairs = _pairs(tiny)
    v = sub.random_direction(tiny, hook, seed=3)
    W = sub.readout_matrix(tiny, hook)
    before = W.clone()
    sigma = sub.second_moment_pinv(tiny, pairs, hook) if rule == "covariance" else None
    e = sub.edit_equivalence(tiny, pairs, v, rule=rule, sigma_pinv=sigma)
    # the edited MLP writes exactly what the patched MLP writes at the patched position
    assert float(e.mlp_out_diff.max()) < 1e-4
    if rule == "prompt":  # and, with the key orthogonal to the prompt's other positions, the logits are equal
        assert float(e.max_logit_diff.max()) < 1e-4
        assert torch.allclose(e.ld_edit, e.ld_patch, atol=1e-4)
    assert not torch.allclose(e.ld_patch, e.ld_clean, atol=1e-4)  # the patch did something (the test can fail)
    assert e.top(3)["max_logit_diff"].is_monotonic_decreasing and "<svg" in e.plot().to_svg()
    assert torch.equal(sub.readout_matrix(tiny, hook), before)  # every edit was undone, bit for bit
    with pytest.raises(InputError, match="hook_post"):
        sub.edit_equivalence(tiny, pairs, torch.ones(tiny.cfg.d_model), "blocks.0.hook_resid_post")


def test_controls_are_what_they_claim(tiny):
    hook = "blocks.1.mlp.hook_post"
    pairs = _pairs(tiny)
    planted = sub.planted_illusion(tiny, pairs, hook)
    W = sub.readout_matrix(tiny, hook)
    v_row, v_null = sub.rowspace_split(planted.vector, W)
    assert float(v_row.norm()) == pytest.approx(2**-0.5, abs=1e-4)  # half of it in the rowspace, half outside
    acts, values = sub.clean_activations(tiny, pairs, hook)
    along_r = acts @ (v_row / v_row.norm())
    assert float(along_r.std()) < 1e-3 * float(acts.std())  # the prompts never vary along its rowspace part
    probe = sub.probe_direction(tiny, pairs, hook)
    assert probe.kind == "probe" and abs(float(probe.vector.norm()) - 1) < 1e-5


def test_separation_measures_what_it_says():
    acts = torch.tensor([[0.0, 1.0], [0.1, -1.0], [2.0, 0.5], [2.1, -0.5]])
    values = torch.tensor([0, 0, 1, 1])
    good = sub._separation("x", acts, values, torch.tensor([1.0, 0.0]))
    bad = sub._separation("y", acts, values, torch.tensor([0.0, 1.0]))
    assert good.accuracy == 1.0 and good.cohens_d > 10
    assert bad.accuracy <= 0.75 and bad.cohens_d == 0.0  # the best cut of (-1, -.5 | .5, 1) gets 3 of 4


def test_bad_input_is_a_clear_error(tiny):
    with pytest.raises(InputError, match="same feature value"):
        sub.PatchPairs.from_prompts(tiny, ["print(1"], ["print(2"], [0], [0], ["))", ")))"])
    with pytest.raises(InputError, match="one of each"):
        sub.PatchPairs.from_prompts(tiny, ["print(1", "print(3"], ["print(2"], [0], [1], ["))", ")))"])
    with pytest.raises(InputError, match="not a single token"):
        sub.PatchPairs.from_prompts(tiny, ["print(1"], ["print(2"], [0], [1], [")", "zq)x"])
    pairs = _pairs(tiny)
    with pytest.raises(HookNameError):
        sub.patch(tiny, pairs, "blocks.1.mlp.hook_postt", None)
    with pytest.raises(InputError, match="shape"):
        sub.patch(tiny, pairs, "blocks.0.attn.hook_z", None)
    with pytest.raises(InputError, match="size"):
        sub.patch(tiny, pairs, "blocks.0.hook_resid_post", torch.ones(tiny.cfg.d_model + 1))
    with pytest.raises(InputError, match="zero"):
        sub.patch(tiny, pairs, "blocks.0.hook_resid_post", torch.zeros(tiny.cfg.d_model))


def test_study_runs_end_to_end_and_writes_its_report(family, tiny, tmp_path):
    import json

    from codecircuits.studies import subspace as study

    cfg = study.SubspaceConfig(
        train_pairs=6, test_pairs=4, template_pairs=2, sweep_pairs=4, epochs=1, seeds=(0,), only_correct=False
    )
    s = study.run(tiny, cfg, progress=False)
    assert len(s.sweep["resid"]) == len(s.sweep["mlp"]) == tiny.cfg.n_layers
    assert set(s.choice) == {"mlp_causal", "mlp_inert", "resid"}
    assert set(s.checks) == {c["hook"] for c in s.choice.values()}
    html, js = s.save(tmp_path / "out")
    data = json.loads(js.read_text())
    check_study_report(
        html,
        js,
        f"subspace-{tiny.cfg.model_name}.png",
        require=("table", "line-chart"),
        screenshot=family == SCREENSHOT_FAMILY,
    )
    assert set(data["checks"]) == set(s.checks)
    page = html.read_text()
    hook = next(iter(s.checks))
    key = hook.replace(".", "_") + "_fldd_das_test"
    assert f'data-metric="{key}"' in page
    # the page shows the same number as the JSON
    assert data["checks"][hook]["patches"]["das/test"]["fldd"] == pytest.approx(s.checks[hook].fldd("das/test"))


# ------------------------------------------------------------------------------------------------------------
# Study-level findings on the default model (smollm2-135m), all from one shared fixture: at the quiet MLP 18 a DAS
# direction moves the answer while the whole MLP does not (every seed), but its rowspace part is not dormant; at
# MLP 26, which carries the count, the checks call the DAS direction and a probe's direction faithful; they call a
# planted illusion an illusion; the patch equals a rank-1 edit of W_out. Every assertion is on an interval, with
# the library's own thresholds (sub.RULE).

QUIET, CAUSAL = "blocks.18.mlp.hook_post", "blocks.26.mlp.hook_post"


@pytest.fixture(scope="module")
def smol(default_model):
    from types import SimpleNamespace

    from codecircuits.studies import subspace as study

    m = default_model
    cfg = study.SubspaceConfig(train_pairs=12, test_pairs=12, template_pairs=3)
    train, test, accuracy = study.build_pairs(m, cfg)
    kw = dict(epochs=3, batch_size=6, progress=False)
    quiet = sub.illusion_checks(m, train, test, QUIET, seeds=(0, 1, 2), **kw)
    causal = sub.illusion_checks(m, train, test, CAUSAL, seeds=(0,), **kw)
    probe = sub.probe_direction(m, train, CAUSAL)
    probe = sub.illusion_checks(m, train, test, CAUSAL, direction=probe, reuse=causal, progress=False)
    planted = sub.planted_illusion(m, train, QUIET)
    planted = sub.illusion_checks(m, train, test, QUIET, direction=planted, reuse=quiet, progress=False)
    edit = sub.edit_equivalence(m, test, quiet.direction, rule="prompt")
    return SimpleNamespace(
        train=train, test=test, accuracy=accuracy, quiet=quiet, causal=causal, probe=probe, planted=planted, edit=edit
    )


@pytest.mark.slow
def test_smollm2_illusion_at_a_quiet_mlp(smol):
    rule = sub.RULE
    assert smol.accuracy["paper"][2] == 1.0 and smol.accuracy["paper"][3] >= 0.85  # the model can do the task
    rep = smol.quiet
    full = rep.patches["full/test"].fldd_interval
    assert full.below(rule.quiet_full)  # patching the whole MLP does little ...
    assert len(rep.seeds) == 3
    for c in rep.seeds:  # ... but one learned direction inside it does, for every seed
        das = c.patches["das/test"].fldd_interval
        assert das.above(full.high) and das.above(rep.patches["random/test"].fldd_interval.high)
        assert c.flags["exceeds_component"]
        # the rowspace-only patch loses part of the effect, yet the counts separate along v_row on clean inputs
        # (the study's 40 pairs put the share just below a half, so the rule calls MLP 18 an illusion on the share
        # alone; the separation says the rowspace part is not dormant)
        assert c.fraction.below(1.0)
        assert not c.separation["v_row"].cohens_d_interval.below(rule.min_cohens_d)
        assert c.separation["v_row"].cohens_d > rule.min_cohens_d
        # the random-vector baseline of |v_null| (a random unit vector: ~0.79 here) lies above the direction's
        assert c.null_norm < rep.norm_baseline.null_low
    null = rep.patches["nullspace/test"].fldd_interval
    assert max(abs(null.low), abs(null.high)) < 1e-2  # W_out maps the nullspace part to zero


@pytest.mark.slow
def test_smollm2_mlp26_direction_passes(smol):
    rule = sub.RULE
    for rep in (smol.causal, smol.probe):  # the DAS direction, and the positive control: a probe's direction
        full = rep.patches["full/test"].fldd_interval  # MLP 26 carries the count: its full patch is not quiet
        assert full.above(rule.min_effect) and not full.below(rule.quiet_full)
        assert rep.verdict == "faithful", rep.reasons
        assert rep.fraction.low >= rule.min_fraction
        assert rep.separation["v_row"].cohens_d_interval.above(rule.min_cohens_d)


@pytest.mark.slow
def test_smollm2_checks_catch_a_planted_illusion(smol):
    rep = smol.planted
    assert rep.patches["das/test"].fldd_interval.above(sub.RULE.min_effect)  # the planted patch moves the answer
    assert rep.verdict == "illusion", rep.reasons
    assert rep.fraction.below(sub.RULE.min_fraction)


@pytest.mark.slow
def test_smollm2_patch_is_a_rank1_edit(smol):
    e = smol.edit
    assert float(e.max_logit_diff.max()) < 1e-3 and float(e.mlp_out_diff.max()) < 1e-3
    assert not e.fldd_patch.excludes(e.fldd_edit.estimate)
    assert e.fldd_patch.above(sub.RULE.min_effect)  # the patch it equals does something


def test_choose_hooks_reads_the_sweep_or_the_given_layers():
    sweep = {"mlp": [5.0, 80.0, 1.0, 20.0, 3.0], "resid": [0.0, 30.0, 60.0, 90.0, 100.0]}
    c = sub.choose_hooks(sweep)
    assert c["mlp_causal"]["hook"] == "blocks.1.mlp.hook_post"  # the largest full-MLP effect
    assert c["mlp_inert"]["hook"] == "blocks.2.mlp.hook_post"  # the quietest from layer 2 (resid first >= 50)
    assert c["resid"]["hook"] == "blocks.2.hook_resid_post" and "60.0%" in c["resid"]["why"]
    given = sub.choose_hooks(sweep, mlp_layers=(3,), resid_layer=0)
    assert [v["hook"] for v in given.values()] == ["blocks.3.mlp.hook_post", "blocks.0.hook_resid_post"]


def test_paren_pairs_refuse_values_that_are_not_two_counts(tiny):
    with pytest.raises(InputError, match="two different numbers"):
        sub.paren_pairs(tiny, (2, 2))
    assert sub.paren_prompt(sub.PAREN_TEMPLATES["paper"], 3, 123).endswith("print(str(str(123")


def test_separation_histogram_counts_each_value_over_shared_bins():
    sep = sub.Separation("v", 1.0, 1.0, (0.0, 2.5), (0.5, 0.5), 1.0, torch.tensor([0.0, 1.0, 2.0, 3.0]),
                         torch.tensor([0, 0, 1, 1]))
    centres, series = sep.histogram(bins=2)
    assert len(centres) == 2 and series == {"value 0": [2.0, 0.0], "value 1": [0.0, 2.0]}
