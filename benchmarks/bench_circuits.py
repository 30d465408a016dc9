"""Benchmark: circuit discovery on ``smollm2-135m`` (30 layers, 9 query heads, 3 key/value groups) with the 8
closing-paren pairs of ``bench_patching`` and the metric ``logit[)))] - logit[))]``.

It prints, from one run on one thread (CPU seconds of this process):

- F, the time of one plain forward of the 8 clean prompts, and F + B, a forward and backward to the embeddings;
- EAP and EAP-IG-inputs (5 steps) for all edges, in forward-equivalents, beside their ideals 2 F + 1 B and
  2 F + 5 (F + B);
- the ten-point faithfulness curve (one batched evaluation of ten circuits) against ten plain forwards;
- exact edge patching of a random sample of edges, extrapolated to all edges;
- the number of edges of the grouped and the ungrouped graph;
- TransformerLens 4.3's edge ``attribution_patch`` against our EAP on a randomly initialised Llama with the default
  model's sizes but one key/value head per query head (TL refuses grouped-query models), on the same tokens: the
  time ratio and the largest score difference. TL scores one example at a time into Python dictionaries (millions
  of entries per example here), so it is timed on the first example and multiplied by the number of examples,
  exact for its per-example loop; the output says so.

``main(quick=True)`` runs everything on a tiny random Llama in seconds.
"""

from __future__ import annotations

import random
import tempfile

import torch

from .bench_patching import NUMS, _timed, pairs


def _forward_backward(model, tokens, metric):
    leaf = {}

    def make_leaf(act, hook=None):
        leaf["x"] = act.detach().clone().requires_grad_(True)
        return leaf["x"]

    with torch.enable_grad(), model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", make_leaf)]):
        torch.autograd.grad(metric(model(tokens)).sum(), [leaf["x"]])


def _best(fn, n=3):
    times = []
    for _ in range(n):
        _, t = _timed(fn)
        times.append(t)
    return min(times)


def _llama_like(model, directory):
    """A random Llama with ``model``'s sizes and as many key/value heads as query heads."""
    import transformers as tf

    from codecircuits import load_model
    from codecircuits.testing import tiny_tokenizer

    cfg = model.cfg
    hf = tf.LlamaConfig(
        vocab_size=cfg.d_vocab,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    tf.LlamaForCausalLM(hf).eval().save_pretrained(directory, safe_serialization=True)
    tiny_tokenizer().save_pretrained(directory)
    return load_model(directory, device="cpu")


def main(quick: bool = False) -> dict:
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    from codecircuits import load_model
    from codecircuits.circuits import Graph, circuit_metric, edge_scores, exact_edge_scores, from_transformer_lens
    from codecircuits.circuits.faithfulness import MIB_PERCENTAGES
    from codecircuits.core.batching import paired_tokens
    from codecircuits.core.inputs import single_token_id
    from codecircuits.testing import tiny_model

    torch.set_num_threads(1)
    if quick:
        model = tiny_model("llama", n_layers=3)
        clean_p, corr_p = pairs(model, NUMS[:4])
        name = "tiny-llama (3 layers)"
    else:
        model = load_model("smollm2-135m", device="cpu")
        clean_p, corr_p = pairs(model)
        name = "smollm2-135m"
    clean, corr = paired_tokens(model, clean_p, corr_p)
    right, wrong = single_token_id(model, ")))"), single_token_id(model, "))")

    def metric(logits):
        return logits[:, -1, right] - logits[:, -1, wrong]

    out: dict = {"model": name, "n_pairs": int(clean.shape[0]), "n_pos": int(clean.shape[1])}
    g, u = Graph.from_model(model), Graph.from_model(model, grouped=False)
    out.update(edges_grouped=g.n_edges, edges_ungrouped=u.n_edges)
    print(
        f"{name}: {clean.shape[0]} pairs of {clean.shape[1]} tokens; edges grouped {g.n_edges:,}, ungrouped {u.n_edges:,}"
    )

    with torch.no_grad():
        f = _best(lambda: model(clean))
    fb = _best(lambda: _forward_backward(model, clean, metric))
    out.update(F=f, F_plus_B=fb)
    print(f"  F = {f:.3f} s, F + B = {fb:.3f} s")

    for method, steps, ideal in (("EAP", 1, f + fb), ("EAP-IG-inputs", 5, 2 * f + 5 * fb)):
        _, t = _timed(lambda m=method, s=steps: edge_scores(model, clean, corr, metric, method=m, steps=s))
        out[method] = {
            "seconds": t,
            "forward_equivalents": t / f,
            "ideal_forward_equivalents": ideal / f,
            "over_ideal": t / ideal,
        }
        print(f"  {method:14s} {t:7.2f} s = {t / f:5.1f} F; ideal {ideal / f:5.1f} F; {t / ideal:.2f}x the ideal")

    scores = edge_scores(model, clean, corr, metric, method="EAP")
    total = int(g.valid.sum())
    circuits = [scores.top_n(int(p / 100 * total)) for p in MIB_PERCENTAGES]
    _, t_curve = _timed(lambda: circuit_metric(model, clean, corr, metric, circuits, graph=g))
    out["curve"] = {"seconds": t_curve, "ten_forwards": 10 * f, "ratio": t_curve / (10 * f)}
    print(f"  faithfulness curve (10 circuits, batched) {t_curve:.2f} s = {t_curve / (10 * f):.2f}x ten plain forwards")

    sample = random.Random(0).sample([tuple(x) for x in g.valid.nonzero().tolist()], 4 if quick else 16)
    _, t_exact = _timed(lambda: exact_edge_scores(model, clean, corr, metric, edges=sample))
    per_edge = t_exact / (len(sample) + 1)
    out["exact"] = {
        "sampled_edges": len(sample),
        "seconds_per_edge": per_edge,
        "all_edges_hours": per_edge * total / 3600,
    }
    print(
        f"  exact patching: {per_edge:.3f} s per edge (sampled {len(sample)}), all {total:,} edges ~ "
        f"{per_edge * total / 3600:.1f} h; EAP-IG is {per_edge * total / out['EAP-IG-inputs']['seconds']:.0f}x faster"
    )

    with tempfile.TemporaryDirectory() as d:
        twin = model if quick else _llama_like(model, d)
        one_c, one_k = clean[:1], corr[:1]
        res, t_tl1 = _timed(
            lambda: attribution_patch(
                twin,
                one_c,
                one_k,
                lambda lg: lg[0, -1, right] - lg[0, -1, wrong],
                EdgeAttributionConfig(granularity="edge"),
            )
        )
        ours1 = edge_scores(twin, one_k, one_c, metric, method="EAP")
        _, t_ours = _timed(lambda: edge_scores(twin, corr, clean, metric, method="EAP"))
        tl = from_transformer_lens(res, ours1.graph).scores
        diff = float((tl - ours1.scores).abs().max())
        t_tl = t_tl1 * clean.shape[0]
    out["tl_edge_eap"] = {
        "tl_seconds": t_tl,
        "tl_timed_examples": 1,
        "ours_seconds": t_ours,
        "ratio": t_tl / t_ours,
        "max_abs_diff": diff,
        "max_abs_score": float(tl.abs().max()),
    }
    print(
        f"  TL edge attribution_patch (Llama, default sizes, MHA): {t_tl:.1f} s for {clean.shape[0]} examples "
        f"(timed on 1, x{clean.shape[0]}) vs ours {t_ours:.2f} s: {t_tl / t_ours:.0f}x; largest score difference "
        f"{diff:.1e} (scores up to {float(tl.abs().max()):.2f})"
    )
    return out


if __name__ == "__main__":
    main()
