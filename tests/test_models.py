"""The loader on the architecture matrix: hook names, caching, parity with Hugging Face, partial runs."""

from __future__ import annotations

import torch

from codecircuits import describe
from codecircuits.models import kv_head_of

PROMPT = "def f(x):\n    return (x + 1)"
CLASSIC = [
    "hook_embed",
    "blocks.{l}.hook_resid_pre",
    "blocks.{l}.hook_resid_post",
    "blocks.{l}.attn.hook_q",
    "blocks.{l}.attn.hook_k",
    "blocks.{l}.attn.hook_v",
    "blocks.{l}.attn.hook_z",
    "blocks.{l}.attn.hook_pattern",
    "blocks.{l}.hook_attn_out",
    "blocks.{l}.mlp.hook_pre",
    "blocks.{l}.mlp.hook_post",
    "blocks.{l}.hook_mlp_out",
    "ln_final.hook_scale",
]


def test_classic_hooks_exist_and_fire(tiny):
    toks = tiny.to_tokens(PROMPT)
    names = [n.format(l=layer) for layer in range(tiny.cfg.n_layers) for n in CLASSIC]
    if not describe(tiny).parallel_attn_mlp:  # parallel blocks (GPT-NeoX, CodeGen) have no resid_mid
        names += [f"blocks.{layer}.hook_resid_mid" for layer in range(tiny.cfg.n_layers)]
    fired = []
    hooks = [(n, lambda t, hook, n=n: fired.append(n)) for n in set(names)]
    tiny.run_with_hooks(toks, fwd_hooks=hooks)
    assert set(names) <= set(fired), set(names) - set(fired)


def test_run_with_cache_shapes(tiny):
    toks = tiny.to_tokens(PROMPT)
    logits, cache = tiny.run_with_cache(toks)
    b, p = toks.shape
    cfg = tiny.cfg
    assert logits.shape == (b, p, cfg.d_vocab)
    assert cache["blocks.0.attn.hook_z"].shape == (b, p, cfg.n_heads, cfg.d_head)
    assert cache["blocks.0.attn.hook_pattern"].shape == (b, cfg.n_heads, p, p)
    assert cache["blocks.0.mlp.hook_post"].shape == (b, p, cfg.d_mlp)
    assert cache["blocks.0.attn.hook_k"].shape[2] == describe(tiny).n_kv_heads


def test_logits_match_huggingface(tiny):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny.codecircuits_path, attn_implementation="eager").eval()
    toks = tiny.to_tokens(PROMPT)
    with torch.no_grad():
        ours = tiny(toks)
        ref = hf(toks).logits
    centred = (ours - ours.mean(-1, keepdim=True)) - (ref - ref.mean(-1, keepdim=True))
    assert centred.abs().max().item() < 1e-4


def test_start_and_stop_at_layer(tiny):
    toks = tiny.to_tokens(PROMPT)
    logits, cache = tiny.run_with_cache(toks)
    last = tiny.cfg.n_layers - 1
    resid = tiny(toks, stop_at_layer=last)
    assert torch.allclose(resid, cache[f"blocks.{last}.hook_resid_pre"], atol=1e-5)
    resumed = tiny(cache[f"blocks.{last}.hook_resid_pre"], start_at_layer=last)
    assert torch.allclose(resumed, logits, atol=1e-4)


def test_head_groups(tiny, family):
    s = describe(tiny)
    expected_kv = {"llama": 4, "gpt_neox": 4, "codegen": 4, "gpt_bigcode": 1, "qwen2": 2, "starcoder2": 2}[family]
    assert s.n_kv_heads == expected_kv
    assert sorted(h for g in s.kv_groups for h in g) == list(range(s.n_heads))
    owner = kv_head_of(tiny)
    for g, heads in enumerate(s.kv_groups):
        assert all(owner[h] == g for h in heads)
    if expected_kv == 2:
        assert s.kv_groups == ((0, 1), (2, 3))
    assert s.attention_kind == {4: "multi-head", 2: "grouped-query", 1: "multi-query"}[expected_kv]
    # the grouping is the one attention really uses: zeroing kv head 0's values silences exactly its heads
    toks = tiny.to_tokens(PROMPT)

    def zero_v(v, hook):
        v[:, :, 0] = 0.0
        return v

    _, cache = tiny.run_with_cache(toks, names_filter="blocks.0.attn.hook_z")
    with tiny.hooks(fwd_hooks=[("blocks.0.attn.hook_v", zero_v)]):
        _, cache2 = tiny.run_with_cache(toks, names_filter="blocks.0.attn.hook_z")
    z, z2 = cache["blocks.0.attn.hook_z"], cache2["blocks.0.attn.hook_z"]
    for h in range(s.n_heads):
        silenced = z2[:, :, h].abs().max().item() < 1e-6
        assert silenced == (owner[h] == 0), (h, owner)
    assert not torch.equal(z, z2)


def test_describe_text(tiny):
    text = str(describe(tiny))
    assert "layers 2" in text and "head groups" in text
