"""The tracr-compiled models (codecircuits/data/tracr, made by scripts/compile_tracr.py): they run their RASP
programs, give edge attribution the hooks it needs with the meaning it assumes, and their ground truth names real
edges."""

from __future__ import annotations

import json
import random

import pytest
import torch

from codecircuits.errors import InputError
from codecircuits.tracr_models import (
    DATA_DIR,
    PAIR_LENGTH,
    PROGRAMS,
    TracrVocab,
    all_inputs,
    load_tracr,
    run_program,
    tracr_pairs,
)

_LOADED: dict = {}


@pytest.fixture(scope="module", params=PROGRAMS)
def tracr(request):
    """(name, bridge, vocab, truth) of each compiled program, its bridge with split inputs on."""
    name = request.param
    if name not in _LOADED:
        bridge, vocab, truth = load_tracr(name)
        bridge.set_use_split_qkv_input(True)
        bridge.set_use_hook_mlp_in(True)
        _LOADED[name] = (name, bridge, vocab, truth)
    return _LOADED[name]


def _random_inputs(name, vocab, n, seed=0):
    rng = random.Random(seed)
    tokens = list(vocab.input_tokens)
    out = []
    for length in range(1, vocab.max_seq_len + 1):
        for _ in range(n):
            out.append(rng.sample(tokens, length) if name == "sort_unique" else rng.choices(tokens, k=length))
    return out


def test_outputs_are_the_programs(tracr):
    name, bridge, vocab, _ = tracr
    examples = json.loads((DATA_DIR / name / "examples.json").read_text())
    for ex in examples:  # what the compiled JAX model output
        assert run_program(name, ex["input"]) == ex["output"]
        assert vocab.decode(bridge(vocab.encode([ex["input"]]))) == [ex["output"]]
    by_length: dict = {}
    for seq in _random_inputs(name, vocab, 6):
        by_length.setdefault(len(seq), []).append(seq)
    with torch.no_grad():
        for seqs in by_length.values():
            assert vocab.decode(bridge(vocab.encode(seqs))) == [run_program(name, s) for s in seqs]


def test_same_logits_as_the_native_bridge(tracr):
    """Swapping boot_native's AttentionBridge for the split-capable one computes the same function."""
    from safetensors.torch import load_file
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    name, bridge, vocab, _ = tracr
    cfg = TransformerBridgeConfig(**json.loads((DATA_DIR / name / "config.json").read_text()))
    native = TransformerBridge.boot_native(cfg)
    native.load_state_dict(load_file(str(DATA_DIR / name / "model.safetensors")), strict=False)
    tokens = vocab.encode(all_inputs(name, vocab, PAIR_LENGTH[name])[:64])
    with torch.no_grad():
        assert torch.equal(native(tokens), bridge(tokens))


def _cache(bridge, tokens, fwd_hooks=()):
    with torch.no_grad(), bridge.hooks(fwd_hooks=list(fwd_hooks)):
        return bridge.run_with_cache(tokens)


def test_hooks_fire_with_their_shapes(tracr):
    name, bridge, vocab, _ = tracr
    cfg = bridge.cfg
    tokens = vocab.encode(all_inputs(name, vocab, 3)[:4])
    b, p = tokens.shape
    _, cache = _cache(bridge, tokens)
    assert cache["blocks.0.hook_resid_pre"].shape == (b, p, cfg.d_model)
    assert cache["ln_final.hook_in"].shape == (b, p, cfg.d_model)
    for layer in range(cfg.n_layers):
        for x in "qkv":
            assert cache[f"blocks.{layer}.hook_{x}_input"].shape == (b, p, cfg.n_heads, cfg.d_model)
        assert cache[f"blocks.{layer}.attn.hook_z"].shape == (b, p, cfg.n_heads, cfg.d_head)
        assert cache[f"blocks.{layer}.hook_mlp_in"].shape == (b, p, cfg.d_model)
        assert cache[f"blocks.{layer}.hook_mlp_out"].shape == (b, p, cfg.d_model)


def test_residual_is_the_sum_of_its_writes(tracr):
    name, bridge, vocab, _ = tracr
    tokens = vocab.encode(all_inputs(name, vocab, PAIR_LENGTH[name])[:32])
    logits, cache = _cache(bridge, tokens)
    resid = cache["blocks.0.hook_resid_pre"]
    for layer, block in enumerate(bridge.blocks):
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_pre"], resid)
        z = cache[f"blocks.{layer}.attn.hook_z"]
        attn_out = torch.einsum("bphe,hed->bpd", z, block.attn.W_O) + block.attn.b_O
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_attn_out"], attn_out)
        resid = resid + attn_out + cache[f"blocks.{layer}.hook_mlp_out"]
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], resid)
    torch.testing.assert_close(cache["ln_final.hook_in"], resid)
    torch.testing.assert_close(logits, resid @ bridge.W_U + bridge.b_U)


def test_split_inputs_feed_one_head_each():
    """A delta at hook_{q,k,v}_input[:, :, h] moves head h's q/k/v only (count_other has two used heads)."""
    bridge, vocab, truth = load_tracr("count_other")
    bridge.set_use_split_qkv_input(True)
    assert {"a0.h0", "a0.h1"} <= set(truth.heads)
    tokens = vocab.encode(all_inputs("count_other", vocab, 4)[:8])
    _, base = _cache(bridge, tokens)
    gen = torch.Generator().manual_seed(0)
    for x in "qkv":
        for head in range(bridge.cfg.n_heads):
            delta = torch.randn(*tokens.shape, bridge.cfg.d_model, generator=gen)

            def add(act, hook=None, head=head, delta=delta):
                act = act.clone()
                act[:, :, head] += delta
                return act

            _, cache = _cache(bridge, tokens, [(f"blocks.0.hook_{x}_input", add)])
            for y in "qkv":
                for h in range(bridge.cfg.n_heads):
                    moved = not torch.equal(
                        cache[f"blocks.0.attn.hook_{y}"][:, :, h], base[f"blocks.0.attn.hook_{y}"][:, :, h]
                    )
                    assert moved == (y == x and h == head), (x, head, y, h)


def test_mlp_input_feeds_only_the_mlp(tracr):
    name, bridge, vocab, truth = tracr
    tokens = vocab.encode(all_inputs(name, vocab, PAIR_LENGTH[name])[:16])
    _, base = _cache(bridge, tokens)
    layer = int(truth.mlps[0][1:])
    delta = 0.3 * torch.randn(*tokens.shape, bridge.cfg.d_model, generator=torch.Generator().manual_seed(1))
    _, cache = _cache(bridge, tokens, [(f"blocks.{layer}.hook_mlp_in", lambda act, hook=None: act + delta)])
    pre = f"blocks.{layer}"
    assert not torch.equal(cache[f"{pre}.hook_mlp_out"], base[f"{pre}.hook_mlp_out"])
    torch.testing.assert_close(cache[f"{pre}.hook_attn_out"], base[f"{pre}.hook_attn_out"])
    # the residual passed on is the unpatched one plus the (changed) MLP output
    passed = base[f"{pre}.hook_resid_post"] - base[f"{pre}.hook_mlp_out"] + cache[f"{pre}.hook_mlp_out"]
    torch.testing.assert_close(cache[f"{pre}.hook_resid_post"], passed)


def test_ground_truth_names_real_edges(tracr):
    from codecircuits.circuits import Graph

    name, bridge, _, truth = tracr
    cfg = bridge.cfg
    assert set(Graph.from_model(bridge, grouped=False).edge_names()) == set(truth.all_edges)
    assert len(truth.all_edges) == len(set(truth.all_edges))
    assert truth.effective_edges <= truth.true_edges <= set(truth.all_edges)
    assert truth.effective_edges and truth.pair_length == PAIR_LENGTH[name]
    components = {"input", "logits", *truth.heads, *truth.mlps}
    for edge in truth.true_edges:
        source, target = edge.split("->")
        assert source in components and target.split("<")[0] in components, edge
    heads = {f"a{layer}.h{h}" for layer in range(cfg.n_layers) for h in range(cfg.n_heads)}
    assert set(truth.heads) <= heads and set(truth.mlps) <= {f"m{layer}" for layer in range(cfg.n_layers)}
    # a used component is on some true path to the logits
    assert any(e.endswith("->logits") for e in truth.true_edges)
    labels = truth.labels()
    assert labels.sum().item() == len(truth.true_edges)
    with pytest.raises(InputError):
        truth.labels(["a9.h9->logits"])


def test_pairs_and_metric(tracr):
    name, bridge, vocab, _ = tracr
    pairs = tracr_pairs(name, 12, seed=3)
    assert pairs.clean_tokens.shape == pairs.corrupted_tokens.shape == (12, 1 + PAIR_LENGTH[name])
    assert pairs.differ.any(-1).all()
    assert tracr_pairs(name, 12, seed=3).clean == pairs.clean
    with torch.no_grad():
        clean, corrupted = bridge(pairs.clean_tokens), bridge(pairs.corrupted_tokens)
    m_clean, m_corr = pairs.metric(clean), pairs.metric(corrupted)
    assert m_clean.shape == (12,)
    assert (m_clean > 0.5).all() and (m_corr < -0.5).all()
    # row-wise: the value of a row depends on its example index only
    rows = torch.tensor([5, 2])
    torch.testing.assert_close(pairs.metric.fn(clean[rows], rows), m_clean[rows])


def test_bad_names_and_inputs():
    with pytest.raises(InputError):
        load_tracr("no-such-program")
    with pytest.raises(InputError):
        tracr_pairs("no-such-program", 2)
    vocab = TracrVocab.from_json(json.loads((DATA_DIR / "hist" / "vocab.json").read_text()))
    with pytest.raises(InputError):
        vocab.encode([["a"], ["a", "b"]])
    with pytest.raises(InputError):
        vocab.encode([["z"]])
