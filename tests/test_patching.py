"""Patching sweeps give transformer_lens.patching's numbers (max abs diff <= 1e-4, fp32) on every family."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching as tlp

from codecircuits import patching
from codecircuits.errors import InputError
from codecircuits.models import kv_groups, kv_head_of
from codecircuits.testing import toy_metric

ATOL = 1e-4


def _tl(fn, model, corr, clean_cache):
    return fn(model, corr, clean_cache, toy_metric, reduce="mean")


def _check(ours: torch.Tensor, ref: torch.Tensor):
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    assert diff <= ATOL, f"max abs diff {diff:.2e}"


TL_SWEEPS = [
    ("resid_pre", None, tlp.get_act_patch_resid_pre),
    ("resid_mid", None, tlp.get_act_patch_resid_mid),
    ("attn_out", None, tlp.get_act_patch_attn_out),
    ("mlp_out", None, tlp.get_act_patch_mlp_out),
    ("z", ("layer", "head"), tlp.get_act_patch_attn_head_out_all_pos),
    ("z", ("layer", "pos", "head"), tlp.get_act_patch_attn_head_out_by_pos),
    ("q", ("layer", "head"), tlp.get_act_patch_attn_head_q_all_pos),
    ("q", ("layer", "pos", "head"), tlp.get_act_patch_attn_head_q_by_pos),
    ("k", ("layer", "kv_head"), tlp.get_act_patch_attn_head_k_all_pos),
    ("k", ("layer", "pos", "kv_head"), tlp.get_act_patch_attn_head_k_by_pos),
    ("v", ("layer", "kv_head"), tlp.get_act_patch_attn_head_v_all_pos),
    ("v", ("layer", "pos", "kv_head"), tlp.get_act_patch_attn_head_v_by_pos),
    ("pattern", ("layer", "head"), tlp.get_act_patch_attn_head_pattern_all_pos),
    ("pattern", ("layer", "head", "dest_pos"), tlp.get_act_patch_attn_head_pattern_by_pos),
]


@pytest.mark.parametrize(
    "site,by,fn", TL_SWEEPS, ids=[f"{s}-{'x'.join(b or ('layer', 'pos'))}" for s, b, _ in TL_SWEEPS]
)
def test_same_numbers_as_transformer_lens(tiny, pair, site, by, fn):
    clean, corr, clean_cache = pair(tiny)
    if site == "resid_mid" and tiny.cfg.parallel_attn_mlp:
        with pytest.raises(Exception, match="resid_mid"):
            patching.sweep(tiny, clean, corr, toy_metric, site=site, progress=False)
        return
    ours = patching.sweep(tiny, clean, corr, toy_metric, site=site, by=by, progress=False)
    _check(ours.values, _tl(fn, tiny, corr, clean_cache))


def test_query_head_kv_equals_slot_patch_when_not_shared(tiny, pair):
    """Per-query-head k/v equals TL's slot patch for multi-head models; for shared slots it touches one head."""
    clean, corr, clean_cache = pair(tiny)
    for site, fn in (("k", tlp.get_act_patch_attn_head_k_by_pos), ("v", tlp.get_act_patch_attn_head_v_all_pos)):
        by = ("layer", "pos", "head") if site == "k" else ("layer", "head")
        ours = patching.sweep(tiny, clean, corr, toy_metric, site=site, by=by, progress=False)
        if len(kv_groups(tiny)) == tiny.cfg.n_heads:
            _check(ours.values, _tl(fn, tiny, corr, clean_cache))
        else:
            assert ours.values.shape[-1] == tiny.cfg.n_heads


def _query_head_reference(model, clean, corr, site, layer, head, pos=None):
    """Hand-written per-query-head k/v patch: the query head's attention is recomputed from its pattern.

    Patching the shared slot changes every head of its group; this reference keeps the group's other heads at
    their corrupted pattern / z by patching their output back, one full forward per cell.
    """
    name = f"blocks.{layer}.attn.hook_{site}"
    _, cc = model.run_with_cache(clean)
    _, kc = model.run_with_cache(corr)
    g = kv_head_of(model)[head]
    others = [h for h in range(model.cfg.n_heads) if kv_head_of(model)[h] == g and h != head]

    def patch(act, hook):
        p = slice(None) if pos is None else pos
        act[:, p, g] = cc[name][:, p, g]
        return act

    keep = "pattern" if site == "k" else "z"
    keep_name = f"blocks.{layer}.attn.hook_{keep}"

    def restore(act, hook):
        for h in others:
            if keep == "pattern":
                act[:, h] = kc[keep_name][:, h]
            else:
                act[:, :, h] = kc[keep_name][:, :, h]
        return act

    return toy_metric(model.run_with_hooks(corr, fwd_hooks=[(name, patch), (keep_name, restore)]))


@pytest.mark.parametrize("site", ["k", "v"])
def test_query_head_kv_on_shared_slots(tiny, pair, site):
    clean, corr, _ = pair(tiny)
    res = patching.sweep(tiny, clean, corr, toy_metric, site=site, by=("layer", "pos", "head"), progress=False)
    n = clean.shape[1]
    for layer in range(tiny.cfg.n_layers):
        for head in (0, tiny.cfg.n_heads - 1):
            for pos in (n - 3, n - 1):
                want = _query_head_reference(tiny, clean, corr, site, layer, head, pos)
                torch.testing.assert_close(res.per_example[layer, pos, head], want, atol=ATOL, rtol=0)


def test_neurons_and_noising_direction(tiny, pair):
    clean, corr, _ = pair(tiny)
    n = clean.shape[1]
    picks = [1, 9, tiny.cfg.d_mlp - 1]
    res = patching.sweep(
        tiny,
        clean,
        corr,
        toy_metric,
        site="post",
        neurons=picks,
        positions=[n - 2, n - 1],
        into="clean",
        progress=False,
    )
    assert res.axes == ("layer", "neuron") and res.values.shape == (tiny.cfg.n_layers, len(picks))
    _, kc = tiny.run_with_cache(corr)
    for layer in range(tiny.cfg.n_layers):
        name = f"blocks.{layer}.mlp.hook_post"
        for j, nrn in enumerate(picks):

            def hook(act, hook, nrn=nrn, name=name):
                act[:, n - 2 :, nrn] = kc[name][:, n - 2 :, nrn]
                return act

            want = toy_metric(tiny.run_with_hooks(clean, fwd_hooks=[(name, hook)]))
            torch.testing.assert_close(res.per_example[layer, j], want, atol=ATOL, rtol=0)
    torch.testing.assert_close(res.base, toy_metric(tiny(clean)), atol=ATOL, rtol=0)
    torch.testing.assert_close(res.source, toy_metric(tiny(corr)), atol=ATOL, rtol=0)


def test_unchanged_prefix_is_the_baseline_exactly(tiny, pair):
    clean, corr, _ = pair(tiny)
    d = patching.first_difference(clean, corr)
    res = patching.sweep(tiny, clean, corr, toy_metric, site="resid_pre", progress=False, memory_budget="64KB")
    assert torch.equal(res.per_example[:, :d], res.base.expand(tiny.cfg.n_layers, d, -1))
    # patching the whole residual at layer 0, last position... restores the clean logits at the last position
    full = patching.sweep(tiny, clean, corr, toy_metric, site="resid_pre", by=("layer",), progress=False)
    torch.testing.assert_close(full.per_example[0], full.source, atol=ATOL, rtol=0)
    torch.testing.assert_close(full.recovery[0], torch.tensor(1.0), atol=1e-4, rtol=0)


def test_result_api(tiny, pair):
    clean, corr, _ = pair(tiny)
    res = patching.sweep(tiny, clean, corr, toy_metric, site="z", by=("layer", "pos", "head"), progress=False)
    assert res.axes == ("layer", "pos", "head")
    df = res.to_dataframe()
    assert {"layer", "pos", "pos_label", "head", "value", "effect", "recovery"} <= set(df.columns)
    assert len(df) == tiny.cfg.n_layers * clean.shape[1] * tiny.cfg.n_heads
    top = res.top(3)
    assert len(top) == 3 and top["recovery"].abs().is_monotonic_decreasing
    assert res.plot().to_svg().startswith("<svg")


def test_patch_layers_is_the_sweep_at_fixed_positions(tiny, pair):
    from codecircuits.core.runner import Receiver
    from codecircuits.core.sites import hook_name

    clean, corr, _ = pair(tiny)
    L = tiny.cfg.n_layers
    positions = list(range(patching.first_difference(clean, corr), clean.shape[1]))
    names = [hook_name(site, layer) for layer in range(L) for site in ("attn_out", "mlp_out")]
    rec = Receiver(tiny, corr, metric=toy_metric)
    donor = Receiver(tiny, clean, extra_names=names, metric=toy_metric)
    out = patching.patch_layers(rec, donor, toy_metric, list(range(L)), positions, chunk=2)
    for site in ("attn_out", "mlp_out"):
        ref = patching.sweep(tiny, clean, corr, toy_metric, site=site, by=("layer",), positions=positions,
                             progress=False)
        assert out[site].axes == ("layer",) and out[site].labels["layer"] == list(range(L))
        torch.testing.assert_close(out[site].per_example, ref.per_example.cpu().float(), atol=ATOL, rtol=0)
        torch.testing.assert_close(out[site].recovery, ref.recovery.cpu().float(), atol=1e-3, rtol=0)
    # donor rows pick each receiver prompt's donor: the same donor twice is the same patch twice
    rows = torch.zeros(clean.shape[0], dtype=torch.long)
    twice = patching.patch_layers(rec, donor, toy_metric, [L - 1], positions, donor_rows=rows, sites=("mlp_out",))
    torch.testing.assert_close(twice["mlp_out"].source, toy_metric(donor.logits[rows]).float().cpu())
    with pytest.raises(InputError, match="residual-shaped"):
        patching.patch_layers(rec, donor, toy_metric, [0], positions, sites=("z",))


def test_logit_diff_metric():
    from codecircuits.core.metrics import RowwiseMetric, logit_diff

    logits = torch.randn(3, 4, 10, generator=torch.Generator().manual_seed(0))
    c, w = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    want = logits[torch.arange(3), -1, c] - logits[torch.arange(3), -1, w]
    assert torch.equal(logit_diff(c, w)(logits), want) and torch.equal(logit_diff(c, w, loss=True)(logits), -want)
    rows = logit_diff(c, w, rows=True)
    assert isinstance(rows, RowwiseMetric) and torch.equal(rows(logits), want)
    assert torch.equal(rows(logits[[2, 0]], torch.tensor([2, 0])), want[[2, 0]])
    # one answer per position: the mean over the positions where the answers differ (-1: no answer there)
    per_pos = logit_diff(torch.tensor([[-1, 1, 2, 3]]), torch.tensor([[-1, 1, 5, 6]]))(logits[:1])
    expected = (logits[0, 2, 2] - logits[0, 2, 5] + logits[0, 3, 3] - logits[0, 3, 6]) / 2
    torch.testing.assert_close(per_pos, expected[None])
    with pytest.raises(InputError, match="one shape"):
        logit_diff(c, w[:2])


def test_bad_input_is_explained(tiny):
    clean = ["print(str(str(123"]
    longer = ["print(str(str(str(str(123"]
    with pytest.raises(InputError, match="differ by"):
        patching.sweep(tiny, clean, longer, toy_metric, progress=False)
    with pytest.raises(InputError, match="Unknown patching site"):
        patching.sweep(tiny, clean, clean, toy_metric, site="resid", progress=False)
    with pytest.raises(InputError, match="cannot be swept by"):
        patching.sweep(tiny, clean, clean, toy_metric, site="resid_pre", by=("layer", "head"), progress=False)
    with pytest.raises(InputError, match="into"):
        patching.sweep(tiny, clean, clean, toy_metric, into="both", progress=False)


def test_benchmark_runs_quick(monkeypatch):
    """`python -m benchmarks.run --quick --only patching` still runs and prints its ratios."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--only", "patching"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("ideal") == 3 and "Spearman" in proc.stdout
    monkeypatch.syspath_prepend(str(root))
    from benchmarks import run

    assert "bench_patching" in run.discover()
    with pytest.raises(SystemExit, match="No benchmark named"):
        run.main(["--only", "no_such_bench"])


@pytest.mark.slow
def test_paren_count_moves_from_the_nesting_token_to_the_last_position(default_model):
    """SmolLM2 on the closing-paren task: patching the residual stream shows the nesting information carried at
    the corrupted token early and at the last position late (one sweep over two positions, every layer)."""
    from codecircuits.core.inputs import single_token_id

    model = default_model
    nums = (123, 457, 281, 905)
    clean = [f"#print the string {n}\nprint(str(str({n}" for n in nums]
    corrupted = [f"#print the string {n}\nprint(str+str({n}" for n in nums]
    right, wrong = single_token_id(model, ")))"), single_token_id(model, "))")

    def metric(logits):
        return logits[:, -1, right] - logits[:, -1, wrong]

    toks = model.to_tokens(clean)
    d, last = patching.first_difference(toks, model.to_tokens(corrupted)), toks.shape[1] - 1
    res = patching.sweep(model, clean, corrupted, metric, site="resid_pre", positions=[d, last], progress=False)
    assert res.source.mean() > 0 > res.base.mean()  # the clean prompts prefer ))), the corrupted ones ))
    rec = res.recovery  # [layer, 2]
    assert rec[0, 0] > 0.99 and abs(rec[0, 1]) < 0.05  # layer 0: only the corrupted token matters
    assert rec[-1, 1] > 0.99 and abs(rec[-1, 0]) < 0.05  # last layer: only the last position matters
    # the hand-over happens in the middle of the network, not at either end
    moved = int((rec[:, 1] > 0.5).nonzero()[0])
    assert 3 <= moved <= model.cfg.n_layers - 3, rec
