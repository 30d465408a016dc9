"""Neuron-level attribution (codecircuits.neurons) on every architecture of the test matrix, checked against
straightforward per-component computations; one study-level check on the default model."""

from __future__ import annotations

import pytest
import torch

from codecircuits import ablation, neurons
from codecircuits.errors import InputError
from codecircuits.models import kv_head_of

PROMPTS = ["def f(x):\n    return (x", "print(str(str(12"]


def _explicit_logits(model, x, scale, bias=True):
    if str(model.cfg.normalization_type).upper().startswith("LN"):
        x = x - x.mean(-1, keepdim=True)
    out = (x / scale) @ model.W_U
    return out + model.b_U if bias else out


@pytest.fixture(scope="module")
def runs(tiny):
    """Clean-run activations at the last position, from a plain run_with_cache (independent of neurons.py)."""
    out = []
    for p in PROMPTS:
        logits, cache = tiny.run_with_cache(tiny.to_tokens(p))
        out.append((logits[0, -1], cache))
    return out


def _ffn_base(model, cache, layer):
    if "blocks.0.hook_resid_mid" in model.hook_dict and not model.cfg.parallel_attn_mlp:
        return cache[f"blocks.{layer}.hook_resid_mid"][0, -1]
    return cache[f"blocks.{layer}.hook_resid_pre"][0, -1] + cache[f"blocks.{layer}.hook_attn_out"][0, -1]


def test_sub_values_rebuild_the_mlp_output(tiny, runs):
    """The decomposition the scores rely on: mlp_out = sum_k hook_post[k] * W_out[k] (+ b_out), every family."""
    _, cache = runs[0]
    for layer in range(tiny.cfg.n_layers):
        post = cache[f"blocks.{layer}.mlp.hook_post"][0, -1]
        rebuilt = post @ tiny.W_out[layer]
        try:
            rebuilt = rebuilt + tiny.b_out[layer]
        except AttributeError:
            pass
        torch.testing.assert_close(rebuilt, cache[f"blocks.{layer}.hook_mlp_out"][0, -1], atol=1e-4, rtol=1e-4)


def test_every_ffn_score_matches_an_explicit_computation(tiny, runs):
    res = neurons.ffn_neurons(tiny, PROMPTS, scores="all", progress=False, memory_budget="0.05MB")
    assert set(res.scores) == set(neurons.FFN_SCORES)
    assert res["logprob_increase"].shape == (2, tiny.cfg.n_layers, tiny.cfg.d_mlp)
    for b, (logits, cache) in enumerate(runs):
        w = int(logits.argmax())
        assert int(res.target[b]) == w
        scale = cache["ln_final.hook_scale"][0, -1]
        for layer in range(tiny.cfg.n_layers):
            base = _ffn_base(tiny, cache, layer)
            base_lp = torch.log_softmax(_explicit_logits(tiny, base, scale), -1)[w]
            for k in (0, 7, tiny.cfg.d_mlp - 1):
                m = cache[f"blocks.{layer}.mlp.hook_post"][0, -1, k]
                v = tiny.W_out[layer, k]
                lp = torch.log_softmax(_explicit_logits(tiny, base + m * v, scale), -1)[w]
                alone = torch.log_softmax(_explicit_logits(tiny, m * v, scale), -1)[w]
                proj = _explicit_logits(tiny, v, torch.tensor(1.0), bias=False)
                rr = 1.0 / (1.0 + (proj > proj[w]).sum().float())
                want = {
                    "logprob_increase": lp - base_lp,
                    "prob_increase": lp.exp() - base_lp.exp(),
                    "logprob": alone,
                    "norm": v.norm(),
                    "coefficient": m,
                    "coef_norm": m * v.norm(),
                    "rank": rr,
                    "coef_rank": m * rr,
                }
                for name, value in want.items():
                    got = res[name][b, layer, k]
                    torch.testing.assert_close(got, value.float(), atol=2e-5, rtol=1e-4, msg=f"{name} {layer}_{k}")


def test_vectorised_matches_the_per_neuron_loop(tiny):
    fast = neurons.ffn_neurons(tiny, PROMPTS, progress=False)
    ref = neurons.ffn_neurons_loop(tiny, PROMPTS, neurons={0: range(0, 40, 3), tiny.cfg.n_layers - 1: range(5, 30)})
    assert len(ref) == 2 * (14 + 25)
    for (b, layer, k), v in ref.items():
        assert abs(float(fast["logprob_increase"][b, layer, k]) - v) < 1e-5


def test_exact_authors_lens_drops_the_unembedding_bias(tiny, runs):
    with torch.no_grad():
        tiny.b_U.add_(torch.linspace(-1, 1, tiny.cfg.d_vocab))  # make the bias matter (restored below)
    try:
        logits, cache = tiny.run_with_cache(tiny.to_tokens(PROMPTS[0]))
        w = int(logits[0, -1].argmax())
        ours = neurons.ffn_neurons(tiny, PROMPTS[:1], progress=False)
        authors = neurons.ffn_neurons(tiny, PROMPTS[:1], exact_authors_lens=True, progress=False)
        scale = cache["ln_final.hook_scale"][0, -1]
        layer, k = tiny.cfg.n_layers - 1, 3
        base = _ffn_base(tiny, cache, layer)
        x = base + cache[f"blocks.{layer}.mlp.hook_post"][0, -1, k] * tiny.W_out[layer, k]
        for bias, res in ((True, ours), (False, authors)):
            want = (
                torch.log_softmax(_explicit_logits(tiny, x, scale, bias), -1)[w]
                - torch.log_softmax(_explicit_logits(tiny, base, scale, bias), -1)[w]
            )
            torch.testing.assert_close(res["logprob_increase"][0, layer, k], want, atol=2e-5, rtol=1e-4)
        assert not torch.allclose(ours["logprob_increase"], authors["logprob_increase"])
    finally:
        with torch.no_grad():
            tiny.b_U.sub_(torch.linspace(-1, 1, tiny.cfg.d_vocab))


def test_head_scores_match_explicit_readout(tiny, runs):
    res = neurons.heads(tiny, PROMPTS, progress=False)
    assert res["logprob_increase"].shape == (2, tiny.cfg.n_layers, tiny.cfg.n_heads)
    assert sum(len(g) for g in res.kv_groups) == tiny.cfg.n_heads
    for b, (logits, cache) in enumerate(runs):
        w = int(logits.argmax())
        scale = cache["ln_final.hook_scale"][0, -1]
        for layer in range(tiny.cfg.n_layers):
            base = cache[f"blocks.{layer}.hook_resid_pre"][0, -1]
            base_lp = torch.log_softmax(_explicit_logits(tiny, base, scale), -1)[w]
            for h in range(tiny.cfg.n_heads):
                v = cache[f"blocks.{layer}.attn.hook_z"][0, -1, h] @ tiny.W_O[layer, h]
                lp = torch.log_softmax(_explicit_logits(tiny, base + v, scale), -1)[w]
                torch.testing.assert_close(res["logprob_increase"][b, layer, h], lp - base_lp, atol=2e-5, rtol=1e-4)


def test_attention_neurons_sum_to_the_head_and_match_explicit(tiny, runs):
    res = neurons.attention_neurons(tiny, PROMPTS[:1], progress=False, memory_budget="0.05MB")
    logits, cache = runs[0]
    n_pos = cache["blocks.0.hook_resid_pre"].shape[1]
    assert res["logprob_increase"].shape == (1, tiny.cfg.n_layers, tiny.cfg.n_heads, tiny.cfg.d_head, n_pos)
    w = int(logits.argmax())
    scale = cache["ln_final.hook_scale"][0, -1]
    owner = kv_head_of(tiny)
    layer = tiny.cfg.n_layers - 1
    # the coefficients summed over source positions are the head's z at the last position (grouped-query too)
    torch.testing.assert_close(res.coefficients[0, layer].sum(-1), cache[f"blocks.{layer}.attn.hook_z"][0, -1])
    base = cache[f"blocks.{layer}.hook_resid_pre"][0, -1]
    base_lp = torch.log_softmax(_explicit_logits(tiny, base, scale), -1)[w]
    for h, j, p in ((0, 0, 0), (tiny.cfg.n_heads - 1, 5, n_pos - 1), (1, 3, n_pos // 2)):
        coef = (
            cache[f"blocks.{layer}.attn.hook_pattern"][0, h, -1, p]
            * cache[f"blocks.{layer}.attn.hook_v"][0, p, owner[h], j]
        )
        lp = torch.log_softmax(_explicit_logits(tiny, base + coef * tiny.W_O[layer, h, j], scale), -1)[w]
        torch.testing.assert_close(res["logprob_increase"][0, layer, h, j, p], lp - base_lp, atol=2e-5, rtol=1e-4)


def test_top_neuron_evaluation_zeroes_the_chosen_neurons(tiny):
    attr = neurons.ffn_neurons(tiny, PROMPTS, scores=("logprob_increase", "coefficient"), progress=False)
    ev = neurons.evaluate_top_neurons(tiny, PROMPTS, attr, k=5, progress=False)
    assert list(ev.table["method"]) == ["original", "logprob_increase", "coefficient", "random"]
    # the target is the clean top-1, so the original reciprocal rank is exactly 1
    assert torch.all(ev.per_prompt["original"][:, 0] == 1.0)
    # recompute one intervention by hand: zero prompt 0's top-5 neurons with explicit hooks
    idx = attr.top_indices(5)[0]
    d = tiny.cfg.d_mlp
    hooks = []
    for layer in range(tiny.cfg.n_layers):
        ks = [int(i) % d for i in idx if int(i) // d == layer]

        def hook(act, hook, ks=ks):
            act = act.clone()
            act[..., ks] = 0.0
            return act

        hooks.append((f"blocks.{layer}.mlp.hook_post", hook))
    with torch.no_grad(), tiny.hooks(fwd_hooks=hooks):
        logits = tiny(tiny.to_tokens(PROMPTS[0]))[0, -1]
    prob = torch.softmax(logits, -1)[attr.target[0]]
    torch.testing.assert_close(ev.per_prompt["logprob_increase"][0, 1], prob, atol=1e-6, rtol=1e-4)
    assert ev.top(1)["method"].iloc[0] != "original"


def test_query_scores_match_the_formula(tiny, runs):
    value = neurons.ffn_neurons(tiny, PROMPTS[:1], progress=False)
    q = neurons.query_neurons(tiny, PROMPTS[:1], value, top=1, progress=False)
    (vl, vk) = q.value_neurons[0, 0].tolist()
    _, cache = runs[0]
    imp = value["logprob_increase"][0, vl, vk]
    ln = str(tiny.cfg.normalization_type).upper().startswith("LN")
    c = (lambda x: x - x.mean(-1, keepdim=True)) if ln else (lambda x: x)  # noqa: E731
    sequential = not tiny.cfg.parallel_attn_mlp
    x = c(_ffn_base(tiny, cache, vl) if sequential else cache[f"blocks.{vl}.hook_resid_pre"][0, -1])
    keys = [tiny.W_in[vl, :, vk]] + ([tiny.W_gate[vl, :, vk]] if tiny.cfg.gated_mlp else [])
    if vl == 0:
        assert torch.all(q.ffn == 0)
        return
    layer, j = vl - 1, 4
    u = c(cache[f"blocks.{layer}.mlp.hook_post"][0, -1, j] * tiny.W_out[layer, j])
    want = sum((u @ key) / (x @ key) for key in keys) / len(keys) * imp
    torch.testing.assert_close(q.ffn[0, layer, j], want, atol=1e-5, rtol=1e-3)
    assert torch.all(q.ffn[0, vl:] == 0)  # nothing at or after the value neuron's layer is upstream of it
    assert not q.top(3).empty and "<svg" in q.plot().to_svg()


def test_results_are_tables(tiny):
    res = neurons.ffn_neurons(tiny, PROMPTS, scores=("logprob_increase", "norm"), progress=False)
    top = res.top(4)
    assert list(top.columns[:4]) == ["rank", "layer", "neuron", "name"]
    assert top["logprob_increase"].is_monotonic_decreasing
    df = res.to_dataframe()
    assert len(df) == 2 * tiny.cfg.n_layers * tiny.cfg.d_mlp
    assert {"prompt", "layer", "neuron", "logprob_increase", "norm", "coefficient_m"} <= set(df.columns)


def test_prompts_of_different_lengths_are_grouped(tiny):
    prompts = ["def f(x):", "print(str(str(123)))\nprint(len(", "x = 1"]
    together = neurons.ffn_neurons(tiny, prompts, progress=False)
    alone = [neurons.ffn_neurons(tiny, [p], progress=False) for p in prompts]
    for i, a in enumerate(alone):
        torch.testing.assert_close(together["logprob_increase"][i], a["logprob_increase"][0], atol=1e-5, rtol=1e-4)


def test_bad_input_gets_a_clear_error(tiny):
    with pytest.raises(InputError, match="Unknown score"):
        neurons.ffn_neurons(tiny, PROMPTS, scores=("logprob_increse",), progress=False)
    with pytest.raises(InputError, match="targets for 2 prompts"):
        neurons.ffn_neurons(tiny, PROMPTS, target=[1, 2, 3], progress=False)
    with pytest.raises(InputError, match="not a single token"):
        neurons.ffn_neurons(tiny, PROMPTS, target="return value", progress=False)
    with pytest.raises(InputError, match="do not exist"):
        neurons.ffn_neurons(tiny, PROMPTS, layers=[99], progress=False)
    with pytest.raises(InputError, match="No prompts"):
        neurons.heads(tiny, [], progress=False)
    with pytest.raises(InputError, match="does not exist"):
        ablation.ablation_hooks(tiny, [(0, 99)])
    with pytest.warns(DeprecationWarning, match="codecircuits.ablation.ablation_hooks"):
        assert neurons.head_zero_hooks is ablation.ablation_hooks  # the old name, deprecated


def test_attention_neuron_evaluation_zeroes_the_chosen_neurons(tiny):
    prompts = ["print(str(str(12", "print(len(str(45"]  # one token length: attention neurons keep sources apart
    last = tiny.cfg.n_layers - 1
    attr = neurons.attention_neurons(tiny, prompts, layers=[last], progress=False)
    ev = neurons.evaluate_top_attention_neurons(tiny, prompts, attr, k=3, progress=False)
    assert list(ev.table["method"]) == ["original", "logprob_increase", "random"]
    # by hand: zero prompt 0's top-3 (head, dim) of the last layer, scored summed over source positions
    flat = attr["logprob_increase"][0].sum(-1).reshape(-1)
    idx = flat.topk(3).indices.tolist()
    d = tiny.cfg.d_head

    def hook(z, hook):
        z = z.clone()
        for i in idx:
            z[:, :, i // d, i % d] = 0.0
        return z

    with torch.no_grad(), tiny.hooks(fwd_hooks=[(f"blocks.{last}.attn.hook_z", hook)]):
        logits = tiny(tiny.to_tokens(prompts[0]))[0, -1]
    prob = torch.softmax(logits, -1)[attr.target[0]]
    torch.testing.assert_close(ev.per_prompt["logprob_increase"][0, 1], prob, atol=1e-6, rtol=1e-4)
    with pytest.raises(InputError, match="attention_neurons"):
        neurons.evaluate_top_attention_neurons(tiny, prompts, neurons.heads(tiny, prompts, progress=False))


def test_query_neurons_as_an_attribution_can_be_zeroed(tiny):
    value = neurons.ffn_neurons(tiny, PROMPTS, progress=False)
    q = neurons.query_neurons(tiny, PROMPTS, value, top=5, progress=False)
    attr = q.to_attribution(value)
    assert attr.kind == "ffn" and torch.equal(attr["query_score"], q.ffn) and torch.equal(attr.target, value.target)
    ev = neurons.evaluate_top_neurons(tiny, PROMPTS, attr, k=4, progress=False)
    assert list(ev.table["method"]) == ["original", "query_score", "random"]
    assert torch.all(ev.per_prompt["original"][:, 0] == 1.0)


def test_a_subset_of_layers_reports_model_layer_numbers(tiny):
    last = tiny.cfg.n_layers - 1
    full = neurons.ffn_neurons(tiny, PROMPTS, progress=False)
    part = neurons.ffn_neurons(tiny, PROMPTS, layers=[last], progress=False)
    torch.testing.assert_close(part["logprob_increase"][:, 0], full["logprob_increase"][:, last])
    top = part.top(3, prompt=1)
    assert set(top["layer"]) == {last}
    assert set(part.to_dataframe()["layer"]) == {last}
    ev = neurons.evaluate_top_neurons(tiny, PROMPTS, part, k=2, random_control=False, progress=False)
    assert list(ev.table["method"]) == ["original", "logprob_increase"]


def test_memory_mb_is_the_deprecated_name_of_memory_budget(tiny):
    """One name for a memory limit: memory_mb still works, warns, and gives the numbers of the same memory_budget."""
    a = neurons.ffn_neurons(tiny, PROMPTS[:2], scores="coefficient", progress=False, memory_budget="0.05MB")
    with pytest.warns(DeprecationWarning, match="memory_budget"):
        b = neurons.ffn_neurons(tiny, PROMPTS[:2], scores="coefficient", progress=False, memory_mb=0.05)
    assert torch.equal(a.scores["coefficient"], b.scores["coefficient"])
