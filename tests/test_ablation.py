"""Ablation: the context managers against hand-written hooks, the batched sweeps against one run per cell."""

from __future__ import annotations

import pytest
import torch

from codecircuits import ablation
from codecircuits.errors import InputError
from codecircuits.testing import toy_metric

PROMPTS = ["print(str(str(123", "print(len(str(456", "print(str(str(789", "print(len(str(101"]
ATOL = 1e-4


@pytest.fixture(scope="module")
def toks_of():
    cache = {}

    def get(model):
        key = id(model)
        if key not in cache:
            cache[key] = model.to_tokens(PROMPTS)
        return cache[key]

    return get


def _zero_head_hook(head):
    def hook(z, hook=None):
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    return hook


def test_ablate_zero_head_matches_hand_hook(tiny, toks_of):
    toks = toks_of(tiny)
    ref = tiny.run_with_hooks(toks, fwd_hooks=[("blocks.1.attn.hook_z", _zero_head_hook(2))])
    with ablation.ablate(tiny, heads=[(1, 2)]):
        got = tiny(toks)
    assert torch.allclose(got, ref, atol=ATOL)
    # hooks are removed on exit
    assert torch.allclose(tiny(toks), tiny.run_with_hooks(toks, fwd_hooks=[]), atol=ATOL)
    assert not torch.allclose(got, tiny(toks), atol=ATOL)


def test_head_sweep_zero_matches_one_run_per_head(tiny, toks_of):
    toks = toks_of(tiny)
    res = ablation.head_sweep(tiny, toks, toy_metric, progress=False)
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    assert res.axes == ("layer", "head") and res.values.shape == (L, H)
    assert res.per_example.shape == (L, H, len(PROMPTS))
    for layer in range(L):
        for head in range(H):
            logits = tiny.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", _zero_head_hook(head))])
            torch.testing.assert_close(res.per_example[layer, head], toy_metric(logits), atol=ATOL, rtol=0)
    torch.testing.assert_close(res.base, toy_metric(tiny(toks)), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["mean", "resample"])
def test_head_sweep_matches_context_manager(tiny, toks_of, kind):
    toks = toks_of(tiny)
    res = ablation.head_sweep(tiny, toks, toy_metric, kind=kind, positions=[-3, -2, -1], progress=False)
    for layer in range(tiny.cfg.n_layers):
        for head in (0, tiny.cfg.n_heads - 1):
            with ablation.ablate(tiny, heads=[(layer, head)], kind=kind, reference=toks, positions=[-3, -2, -1]):
                want = toy_metric(tiny(toks))
            torch.testing.assert_close(res.per_example[layer, head], want, atol=ATOL, rtol=0)


def test_mean_ablation_is_the_reference_mean(tiny, toks_of):
    toks = toks_of(tiny)
    name = "blocks.0.attn.hook_z"
    _, clean = tiny.run_with_cache(toks, names_filter=name)
    seen = {}
    with ablation.ablate(tiny, heads=[(0, 1)], kind="mean", reference=toks):
        tiny.run_with_hooks(toks, fwd_hooks=[(name, lambda z, hook: seen.__setitem__("z", z.clone()))])
    want = clean[name][:, :, 1].mean(0, keepdim=True).expand_as(seen["z"][:, :, 1])
    torch.testing.assert_close(seen["z"][:, :, 1], want, atol=1e-6, rtol=0)
    torch.testing.assert_close(seen["z"][:, :, 0], clean[name][:, :, 0], atol=1e-6, rtol=0)


def test_resample_takes_another_prompt(tiny, toks_of):
    toks = toks_of(tiny)
    idx = ablation.resample_index(len(PROMPTS), len(PROMPTS), seed=3)
    assert not bool((idx == torch.arange(len(PROMPTS))).any())
    name = "blocks.1.mlp.hook_post"
    _, clean = tiny.run_with_cache(toks, names_filter=name)
    seen = {}
    with ablation.ablate(tiny, neurons={1: [0, 3]}, kind="resample", reference=toks, seed=3):
        tiny.run_with_hooks(toks, fwd_hooks=[(name, lambda a, hook: seen.__setitem__("a", a.clone()))])
    torch.testing.assert_close(seen["a"][..., [0, 3]], clean[name][idx][..., [0, 3]], atol=1e-6, rtol=0)
    torch.testing.assert_close(seen["a"][..., 1], clean[name][..., 1], atol=1e-6, rtol=0)


def test_neuron_sweep_matches_context_manager(tiny, toks_of):
    toks = toks_of(tiny)
    picks = [0, 7, tiny.cfg.d_mlp - 1]
    res = ablation.neuron_sweep(tiny, toks, toy_metric, neurons=picks, memory_budget="1MB", progress=False)
    assert res.values.shape == (tiny.cfg.n_layers, len(picks))
    for layer in range(tiny.cfg.n_layers):
        for j, n in enumerate(picks):
            with ablation.ablate(tiny, neurons={layer: [n]}):
                want = toy_metric(tiny(toks))
            torch.testing.assert_close(res.per_example[layer, j], want, atol=ATOL, rtol=0)


def test_layer_sweep_matches_context_manager(tiny, toks_of):
    toks = toks_of(tiny)
    res = ablation.layer_sweep(tiny, toks, toy_metric, kind="mean", progress=False)
    assert res.axes == ("layer", "part") and res.labels["part"] == ["attn", "mlp"]
    for layer in range(tiny.cfg.n_layers):
        for j, part in enumerate(("attn", "mlp")):
            with ablation.ablate(tiny, layers=[(layer, part)], kind="mean", reference=toks):
                want = toy_metric(tiny(toks))
            torch.testing.assert_close(res.per_example[layer, j], want, atol=ATOL, rtol=0)
    with ablation.ablate(tiny, layers=[0]):  # a bare int ablates both parts
        both = tiny(toks)
    with ablation.ablate(tiny, layers=[(0, "attn"), (0, "mlp")]):
        torch.testing.assert_close(tiny(toks), both, atol=ATOL, rtol=0)


def test_scale_heads(tiny, toks_of):
    toks = toks_of(tiny)
    name = "blocks.1.attn.hook_z"
    _, clean = tiny.run_with_cache(toks, names_filter=name)
    seen = {}
    with ablation.scale_heads(tiny, {(1, 0): 2.0, (1, 2): 0.5}):
        tiny.run_with_hooks(toks, fwd_hooks=[(name, lambda z, hook: seen.__setitem__("z", z.clone()))])
    z, c = seen["z"], clean[name]
    torch.testing.assert_close(z[:, :, 0], 2 * c[:, :, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z[:, :, 2], 0.5 * c[:, :, 2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z[:, :, 1], c[:, :, 1], atol=1e-6, rtol=0)
    with ablation.scale_heads(tiny, {(1, 2): 0.0}):
        scaled0 = tiny(toks)
    with ablation.ablate(tiny, heads=[(1, 2)]):
        torch.testing.assert_close(tiny(toks), scaled0, atol=ATOL, rtol=0)


def test_one_query_head_of_a_shared_kv_group(tiny, toks_of):
    """Ablating one query head differs from ablating its whole key/value group (GQA/MQA too)."""
    from codecircuits.models import kv_groups

    toks = toks_of(tiny)
    group = next(g for g in kv_groups(tiny))
    with ablation.ablate(tiny, heads=[(0, group[0])]):
        one = tiny(toks)
    with ablation.ablate(tiny, heads=[(0, h) for h in range(tiny.cfg.n_heads)]):
        every = tiny(toks)
    assert not torch.allclose(one, every, atol=ATOL)


def test_result_table(tiny, toks_of):
    res = ablation.head_sweep(tiny, toks_of(tiny), toy_metric, layers=[1], progress=False)
    df = res.to_dataframe()
    assert list(df.columns[:2]) == ["layer", "head"] and len(df) == tiny.cfg.n_heads
    assert df["layer"].tolist() == [1] * tiny.cfg.n_heads  # the real layer number, not the index
    top = res.top(2)
    assert len(top) == 2 and top["effect"].abs().iloc[0] >= top["effect"].abs().iloc[1]
    assert "<svg" in res.plot().to_svg()


def test_bad_input_is_explained(tiny, toks_of):
    toks = toks_of(tiny)
    with pytest.raises(InputError, match="kind"):
        ablation.ablation_hooks(tiny, heads=[(0, 0)], kind="gaussian")
    with pytest.raises(InputError, match="does not exist"):
        ablation.ablation_hooks(tiny, heads=[(0, tiny.cfg.n_heads)])
    with pytest.raises(InputError, match="reference"):
        ablation.ablation_hooks(tiny, heads=[(0, 0)], kind="mean")
    with pytest.raises(InputError, match="one value per example"):
        ablation.head_sweep(tiny, toks, lambda logits: logits[:, -1, 0].mean(), progress=False)
    with pytest.raises(InputError, match="token length"):
        with ablation.ablate(tiny, heads=[(0, 0)], kind="mean", reference=toks[:, :-2]):
            tiny(toks)
