"""Logit-difference lens, sublayer and per-head direct contributions: exact sums and TransformerLens references."""

from __future__ import annotations

import pytest
import torch

from codecircuits import lens
from codecircuits.errors import InputError

PROMPTS = ["print(str(str(123", "print(str(str(456", "print(str(str(789"]
ATOL = 2e-4


@pytest.fixture(scope="module")
def run_of():
    memo = {}

    def get(model):
        if id(model) not in memo:
            toks = model.to_tokens(PROMPTS)
            logits, cache = lens.run_cache(model, toks)
            memo[id(model)] = (toks, logits, cache)
        return memo[id(model)]

    return get


def _ids(model):
    return model.to_tokens(")))", prepend_bos=False)[0, 0].item(), model.to_tokens("))", prepend_bos=False)[0, 0].item()


def test_lens_final_site_is_the_models_logit_diff(tiny, run_of):
    toks, logits, cache = run_of(tiny)
    c, w = _ids(tiny)
    ll = lens.logit_diff_lens(tiny, toks, c, w, cache=cache, logits=logits)
    assert ll.values.shape == (2 * tiny.cfg.n_layers, len(PROMPTS))
    want = logits[:, -1, c] - logits[:, -1, w]
    torch.testing.assert_close(ll.values[-1], want, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(ll.final, want)
    assert 'data-points="' + str(2 * tiny.cfg.n_layers) + '"' in ll.plot().svg
    # resid_pre of layer l+1 is resid_post of layer l
    for layer in range(tiny.cfg.n_layers - 1):
        i_post = ll.sites.index((layer, "post"))
        i_pre = ll.sites.index((layer + 1, "pre"))
        torch.testing.assert_close(ll.values[i_post], ll.values[i_pre])
    # without a cache it runs the model itself and agrees
    again = lens.logit_diff_lens(tiny, toks, c, w)
    torch.testing.assert_close(again.values, ll.values, atol=ATOL, rtol=1e-4)
    df = ll.to_dataframe()
    assert list(df.columns[:3]) == ["layer", "site", "logit_diff"] and len(df) == 2 * tiny.cfg.n_layers


def test_lens_against_transformer_lens_accumulated_resid(tiny, run_of):
    toks, logits, cache = run_of(tiny)
    c, w = _ids(tiny)
    ll = lens.logit_diff_lens(tiny, toks, c, w, cache=cache)
    acc, labels = cache.accumulated_resid(layer=None, pos_slice=-1, return_labels=True)  # resid_pre 0..L-1, final
    scale = cache["ln_final.hook_scale"][:, -1]
    x = lens.apply_final_norm(tiny, acc, scale)
    ref = x @ (tiny.W_U[:, c] - tiny.W_U[:, w]) + (tiny.b_U[c] - tiny.b_U[w])
    pre = torch.stack([ll.values[ll.sites.index((layer, "pre"))] for layer in range(tiny.cfg.n_layers)])
    torch.testing.assert_close(pre, ref[: tiny.cfg.n_layers], atol=ATOL, rtol=1e-4)


def test_sublayer_contributions_sum_to_the_logit_diff(tiny, run_of):
    toks, logits, cache = run_of(tiny)
    c, w = _ids(tiny)
    sc = lens.sublayer_contributions(tiny, toks, c, w, cache=cache)
    total = sc.attn.sum(0) + sc.mlp.sum(0) + sc.embed + sc.bias
    torch.testing.assert_close(total, logits[:, -1, c] - logits[:, -1, w], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(sc.total, total, atol=ATOL, rtol=1e-4)
    # reference: TransformerLens's decomposition of the residual stream
    comps, labels = cache.decompose_resid(layer=None, pos_slice=-1, return_labels=True)
    scale = cache["ln_final.hook_scale"][:, -1]
    ref = lens.apply_final_norm(tiny, comps, scale) @ (tiny.W_U[:, c] - tiny.W_U[:, w])
    for layer in range(tiny.cfg.n_layers):
        torch.testing.assert_close(sc.attn[layer], ref[labels.index(f"{layer}_attn_out")], atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(sc.mlp[layer], ref[labels.index(f"{layer}_mlp_out")], atol=ATOL, rtol=1e-4)
    assert 0.0 <= sc.attn_share() <= 1.0
    assert len(sc.top(3)) == 3 and sc.top(3).value.abs().is_monotonic_decreasing
    assert f'data-bars="{2 * tiny.cfg.n_layers}"' in sc.plot().svg


def test_head_logits_against_stack_head_results(tiny, run_of):
    toks, logits, cache = run_of(tiny)
    ids = [tiny.to_tokens(")" * k, prepend_bos=False)[0, 0].item() for k in (1, 2, 3, 4)]
    raw = lens.head_logits(tiny, toks, ids, cache=cache, frozen_scale=False)
    assert raw.values.shape == (len(PROMPTS), tiny.cfg.n_layers, tiny.cfg.n_heads, 4)
    stacked, labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)  # [comp, batch, d]
    ref = stacked @ tiny.W_U[:, ids]  # [layer*head, batch, token]
    ref = ref.reshape(tiny.cfg.n_layers, tiny.cfg.n_heads, len(PROMPTS), 4).permute(2, 0, 1, 3)
    torch.testing.assert_close(raw.values, ref, atol=ATOL, rtol=1e-4)
    # with the frozen scale the heads plus the attention biases add up to each attention sublayer's contribution
    fro = lens.head_logits(tiny, toks, ids, cache=cache)
    c, w = ids[2], ids[1]
    sc = lens.sublayer_contributions(tiny, toks, c, w, cache=cache)
    heads_sum = (fro.values[..., 2] - fro.values[..., 1]).sum(-1).T  # [layer, batch]
    b_o = getattr(tiny, "b_O", None)
    if b_o is not None:
        scale = cache["ln_final.hook_scale"][:, -1]
        bias = lens.apply_final_norm(tiny, b_o[:, None, :].expand(-1, len(PROMPTS), -1), scale) @ (
            tiny.W_U[:, c] - tiny.W_U[:, w]
        )
        heads_sum = heads_sum + bias
    torch.testing.assert_close(heads_sum, sc.attn, atol=ATOL, rtol=1e-4)
    assert list(fro.top(2).columns[:3]) == ["head", "layer", "head_index"]
    assert f'data-rows="{tiny.cfg.n_layers}"' in fro.plot().svg


def test_head_logits_pass_the_norm_after_attention(tmp_path):
    """Gemma 3 normalises each attention output before the residual: with that norm's scale frozen, the heads of a
    layer add up to the layer's attention contribution exactly, as in models without it."""
    from codecircuits import load_model
    from codecircuits.testing import save_tiny_model

    model = load_model(save_tiny_model("gemma3", tmp_path / "gemma3"), device="cpu")
    assert lens.has_post_attention_norm(model)
    toks = model.to_tokens(PROMPTS)
    _, cache = lens.run_cache(model, toks)
    for layer in range(model.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"]
        pre = torch.einsum("bphd,hdm->bpm", z, model.W_O[layer])
        want = pre / cache[f"blocks.{layer}.ln1_post.hook_scale"] * lens.post_attention_gain(model, layer)
        torch.testing.assert_close(want, cache[f"blocks.{layer}.hook_attn_out"], atol=ATOL, rtol=1e-4)
    c, w = _ids(model)
    fro = lens.head_logits(model, toks, [c, w], cache=cache)
    sc = lens.sublayer_contributions(model, toks, c, w, cache=cache)
    heads_sum = (fro.values[..., 0] - fro.values[..., 1]).sum(-1).T  # [layer, batch]
    torch.testing.assert_close(heads_sum, sc.attn, atol=ATOL, rtol=1e-4)


def test_bad_ids_are_clear_errors(tiny, run_of):
    toks, logits, cache = run_of(tiny)
    with pytest.raises(InputError, match="one id per prompt"):
        lens.logit_diff_lens(tiny, toks, [1, 2], 3, cache=cache)
    with pytest.raises(InputError, match="Token ids"):
        lens.sublayer_contributions(tiny, toks, tiny.cfg.d_vocab, 3, cache=cache)
    with pytest.raises(InputError):
        lens.head_logits(tiny, toks, [-1], cache=cache)


def test_cache_names_are_the_hooks_the_lens_reads(tiny):
    names = lens.cache_names(tiny)
    assert set(names) <= set(tiny.hook_dict)
    assert {f"blocks.{i}.hook_resid_post" for i in range(tiny.cfg.n_layers)} <= set(names)
    extra = lens.cache_names(tiny, extra=("attn.hook_pattern",))
    assert set(extra) - set(names) == {f"blocks.{i}.attn.hook_pattern" for i in range(tiny.cfg.n_layers)}
