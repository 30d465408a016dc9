"""The engines rebuilt on ``codecircuits.core`` give the numbers of their frozen pre-core copies
(``tests/_reference``), on every family of the architecture matrix.

The arithmetic is the same (the same batched forwards, the same selections), so results are compared for
equality up to float rounding of the batched matmuls (``atol`` 1e-5); TransformerLens's own functions stay the
outer reference in test_patching, test_ablation and test_metric_contract.
"""

from __future__ import annotations

import pytest
import torch
from _reference import ablation as ref_ablation
from _reference import patching as ref_patching

from codecircuits import ablation, patching
from codecircuits.core import Head, Neuron, hook_name, metric_positions, resid_at, run_from, skipped_blocks
from codecircuits.core.interventions import Mean, Resample, Scale, Zero, hook
from codecircuits.core.metrics import rowwise
from codecircuits.errors import InputError
from codecircuits.testing import toy_metric

PROMPTS = ["print(str(str(123", "print(len(str(456", "print(str(str(789", "print(len(str(101"]
ATOL = 1e-5


def _answers(model, n):
    return torch.arange(n) * 7 % int(model.cfg.d_vocab)


def _labelled(model, n):
    answers = _answers(model, n)
    return lambda logits: logits[torch.arange(logits.shape[0]), -1, answers[: logits.shape[0]]]


def _same(new, old):
    assert new.axes == old.axes and new.labels == old.labels and new.site == old.site and new.method == old.method
    torch.testing.assert_close(new.per_example, old.per_example, atol=ATOL, rtol=0)
    torch.testing.assert_close(new.base, old.base, atol=ATOL, rtol=0)
    if old.source is not None:
        torch.testing.assert_close(new.source, old.source, atol=ATOL, rtol=0)


SWEEPS = [
    ("resid_pre", None),
    ("attn_out", None),
    ("mlp_out", ("layer",)),
    ("z", None),
    ("z", ("layer", "pos", "head")),
    ("k", None),
    ("v", ("layer", "kv_head")),
    ("v", ("layer", "pos", "head")),
    ("pattern", ("layer", "head", "dest_pos")),
    ("post", None),
]


@pytest.mark.parametrize("site,by", SWEEPS, ids=lambda x: "x".join(x) if isinstance(x, tuple) else str(x))
def test_patching_sweep_equals_reference(tiny, pair, site, by):
    clean, corr, _ = pair(tiny)
    metric = _labelled(tiny, clean.shape[0])
    kw = dict(site=site, by=by, progress=False)
    if site == "post":
        kw["neurons"] = [0, 3, 5]
    _same(patching.sweep(tiny, clean, corr, metric, **kw), ref_patching.sweep(tiny, clean, corr, metric, **kw))


def test_patching_noising_and_subsets_equal_reference(tiny, pair):
    clean, corr, _ = pair(tiny)
    kw = dict(site="z", into="clean", layers=[1], heads=[0, 2], positions=[-1, -2], progress=False)
    _same(
        patching.sweep(tiny, clean, corr, toy_metric, **kw),
        ref_patching.sweep(tiny, clean, corr, toy_metric, **kw),
    )


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_ablation_sweeps_equal_reference(tiny, kind):
    toks = tiny.to_tokens(PROMPTS)
    for name in ("head_sweep", "neuron_sweep", "layer_sweep"):
        kw = dict(kind=kind, progress=False)
        if name == "neuron_sweep":
            kw["neurons"] = [1, 4]
        if name == "head_sweep":
            kw["positions"] = [-1, -3]
        new = getattr(ablation, name)(tiny, toks, toy_metric, **kw)
        old = getattr(ref_ablation, name)(tiny, toks, toy_metric, **kw)
        _same(new, old)


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_ablate_context_equals_reference(tiny, kind):
    toks = tiny.to_tokens(PROMPTS)
    kw = dict(heads=[(0, 1), (1, 0)], neurons={1: [2, 3]}, layers=[(0, "mlp")], kind=kind, reference=toks)
    with ablation.ablate(tiny, **kw, positions=[1, -1]):
        new = tiny(toks)
    with ref_ablation.ablate(tiny, **kw, positions=[1, -1]):
        old = tiny(toks)
    torch.testing.assert_close(new, old, atol=ATOL, rtol=0)
    with ablation.scale_heads(tiny, {(1, 1): 1.5, (0, 0): 0.0}, positions=[2]):
        new = tiny(toks)
    with ref_ablation.scale_heads(tiny, {(1, 1): 1.5, (0, 0): 0.0}, positions=[2]):
        old = tiny(toks)
    torch.testing.assert_close(new, old, atol=ATOL, rtol=0)


def test_named_metrics_come_from_one_sweep(tiny):
    """Several metrics from the same forwards equal one sweep per metric."""
    toks = tiny.to_tokens(PROMPTS)
    answers = _answers(tiny, len(PROMPTS))
    logprob = rowwise(lambda lg, ex: lg[:, -1].log_softmax(-1)[torch.arange(len(ex)), answers[ex]])
    correct = rowwise(lambda lg, ex: (lg[:, -1].argmax(-1) == answers[ex]).float())
    both = ablation.head_sweep(tiny, toks, {"logprob": logprob, "correct": correct}, progress=False)
    assert set(both) == {"logprob", "correct"}
    for name, m in (("logprob", logprob), ("correct", correct)):
        _same(both[name], ref_ablation.head_sweep(tiny, toks, m, progress=False))


def test_run_from_skips_the_blocks_before_the_layer(tiny):
    toks = tiny.to_tokens(PROMPTS)
    layer = int(tiny.cfg.n_layers) - 1
    resid = resid_at(tiny, toks, layer)
    ran = []
    handles = [b.attn.register_forward_pre_hook(lambda m, a, i=i: ran.append(i)) for i, b in enumerate(tiny.blocks)]
    try:
        with torch.no_grad():
            out = run_from(tiny, resid, layer)
    finally:
        for h in handles:
            h.remove()
    assert ran == [layer], f"attention of blocks {ran} ran"  # the identity blocks never call their attention
    torch.testing.assert_close(out, tiny(toks), atol=ATOL, rtol=0)
    # with read positions only those are unembedded
    with torch.no_grad():
        last = run_from(tiny, resid, layer, read_positions=[toks.shape[1] - 1])
    assert last.shape[1] == 1
    torch.testing.assert_close(last[:, 0], out[:, -1], atol=ATOL, rtol=0)
    with skipped_blocks(tiny, layer):  # restored afterwards
        pass
    assert all("forward" not in vars(b) for b in tiny.blocks)


def test_interventions_as_hooks_equal_hand_written_ones(tiny):
    toks = tiny.to_tokens(PROMPTS)
    name = hook_name("z", 1)
    m = torch.zeros(1, toks.shape[1], int(tiny.cfg.n_heads), 1, dtype=torch.bool)
    m[:, :, 2] = True

    def hand(z, hook=None):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    got = tiny.run_with_hooks(toks, fwd_hooks=[hook(name, Zero(), m)])
    torch.testing.assert_close(got, tiny.run_with_hooks(toks, fwd_hooks=[(name, hand)]), atol=ATOL, rtol=0)
    got = tiny.run_with_hooks(
        toks, fwd_hooks=[hook(name, Scale(torch.tensor([1.0, 1.0, 0.0, 1.0])[: tiny.cfg.n_heads]))]
    )
    torch.testing.assert_close(got, tiny.run_with_hooks(toks, fwd_hooks=[(name, hand)]), atol=ATOL, rtol=0)
    _, cache = tiny.run_with_cache(toks, names_filter=name)
    with pytest.raises(InputError, match="token length"):
        Mean(cache[name].mean(0))(cache[name][:, :-1])
    with pytest.raises(InputError, match="token length"):
        Resample(cache[name])(cache[name][:, :-1])
    assert str(Head(3, 7)) == "L3H7" and Head.parse("L3H7") == Head(3, 7) and tuple(Head(3, 7)) == (3, 7)
    assert Neuron(2, 5).hook == "blocks.2.mlp.hook_post" and str(Neuron(2, 5)) == "L2N5"


def test_metric_position_probe(tiny):
    toks = tiny.to_tokens(PROMPTS)
    logits = tiny(toks)
    n = toks.shape[1]
    assert metric_positions(toy_metric, logits) == [n - 1]
    assert metric_positions(lambda lg: lg[:, 2, 0] - lg[:, 4, 1], logits) == [2, 4]
    assert metric_positions(lambda lg: lg.mean((1, 2)), logits) is None
    both = {"a": lambda lg: lg[:, 1, 0], "b": lambda lg: lg[:, -1, 0]}
    assert metric_positions(both, logits) == [1, n - 1]


def test_edge_mask_interpolates_between_the_run_and_its_source(tiny, pair):
    """EdgeMask: weight 0 is the run itself, weight 1 is the source patched in (= Replace), 0.5 the midpoint."""
    from codecircuits.core.interventions import Add, EdgeMask, Replace

    clean, corr, _ = pair(tiny)
    name = hook_name("resid_mid", 1) if "blocks.1.hook_resid_mid" in tiny.hook_dict else hook_name("attn_out", 1)
    _, cache = tiny.run_with_cache(clean, names_filter=name)
    src = cache[name]
    with torch.no_grad():
        base = tiny(corr)
        replaced = tiny.run_with_hooks(corr, fwd_hooks=[hook(name, Replace(src))])
        ones = tiny.run_with_hooks(corr, fwd_hooks=[hook(name, EdgeMask(src, torch.tensor(1.0)))])
        zeros = tiny.run_with_hooks(corr, fwd_hooks=[hook(name, EdgeMask(src, torch.tensor(0.0)))])
        _, corr_cache = tiny.run_with_cache(corr, names_filter=name)
        half = EdgeMask(src, torch.tensor(0.5))(corr_cache[name])
        added = Add(src - corr_cache[name], per_example=True)(corr_cache[name])
    torch.testing.assert_close(ones, replaced, atol=ATOL, rtol=0)
    torch.testing.assert_close(zeros, base, atol=ATOL, rtol=0)
    torch.testing.assert_close(half, (src + corr_cache[name]) / 2, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(added, src, atol=ATOL, rtol=1e-5)
