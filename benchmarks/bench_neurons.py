"""Benchmark: vectorised FFN-neuron log-probability increase vs a per-neuron loop in the authors' style.

Prints, measured in one run on the same prompts and layers:
- the vectorised time (:func:`codecircuits.neurons.ffn_neurons`: readout rows ``W_out @ W_U`` once per layer and
  chunk, shared by every prompt, then one log-sum-exp per (prompt, neuron));
- the loop time (:func:`codecircuits.neurons.ffn_neurons_loop`: one readout per (prompt, neuron)), measured on a
  subset of neurons and extrapolated linearly to all of them (said so in the output);
- the ratio, and the time of the unavoidable work alone: ``torch.logsumexp`` over the vocabulary for every
  (prompt, neuron), on tensors of the same shape and chunking;
- the largest difference between the two paths' numbers on the neurons both computed.

``main(quick=True)`` runs on a tiny random Llama in seconds (a smoke test); the full run uses ``smollm2-135m``.
"""

from __future__ import annotations

import time

import torch


def _prompts(model, n: int) -> list[str]:
    from codecircuits.tasks import arithmetic

    ds = arithmetic.dataset(model, templates=("assert",))
    return ds.select(limit=min(n, len(ds)), seed=0).texts


def main(quick: bool = False) -> dict:
    from codecircuits import load_model, neurons
    from codecircuits.neurons import DEFAULT_MEMORY_MB, chunk_size
    from codecircuits.testing import tiny_model

    torch.set_num_threads(1)
    if quick:
        model = tiny_model("llama")
        prompts, layers, loop_prompts, loop_neurons = ["assert 3 + 4 == ", "assert 1 + 2 == "] * 4, [0, 1], 2, 16
    else:
        model = load_model("smollm2-135m", device="cpu")
        prompts = _prompts(model, 64)
        layers, loop_prompts, loop_neurons = [20], 2, 24
    n_b, d_mlp, d_vocab = len(prompts), model.cfg.d_mlp, model.cfg.d_vocab

    neurons.ffn_neurons(model, prompts[:2], layers=layers[:1], progress=False)  # warm-up
    clock = time.process_time  # CPU time of this (single-threaded) process: robust to other load on the machine
    w0, t0 = time.perf_counter(), clock()
    fast = neurons.ffn_neurons(model, prompts, layers=layers, batch_size=n_b, progress=False)
    t_fast, w_fast = clock() - t0, time.perf_counter() - w0

    # the unavoidable work alone: one log-sum-exp over the vocabulary per (prompt, neuron), same chunking
    chunk = chunk_size(n_b, d_vocab, 1, DEFAULT_MEMORY_MB)
    z = torch.randn(n_b, chunk, d_vocab)
    w0, t0 = time.perf_counter(), clock()
    for _ in layers:
        for s in range(0, d_mlp, chunk):
            c = min(chunk, d_mlp - s)
            torch.logsumexp(z[:, :c], dim=-1)
    t_lse, w_lse = clock() - t0, time.perf_counter() - w0

    # the authors' loop on a subset (first prompts, first neurons of each layer), extrapolated
    subset = {layer: range(loop_neurons) for layer in layers}
    w0, t0 = time.perf_counter(), clock()
    ref = neurons.ffn_neurons_loop(model, prompts[:loop_prompts], neurons=subset)
    t_loop_subset, w_loop_subset = clock() - t0, time.perf_counter() - w0
    t_loop = t_loop_subset * (n_b * d_mlp * len(layers)) / len(ref)
    max_diff = max(
        abs(float(fast["logprob_increase"][b, layers.index(layer), k]) - v) for (b, layer, k), v in ref.items()
    )

    out = {
        "model": "tiny-llama" if quick else "smollm2-135m",
        "prompts": n_b,
        "layers": len(layers),
        "neurons_per_layer": d_mlp,
        "vectorised_s": t_fast,
        "loop_s_extrapolated": t_loop,
        "loop_measured_pairs": len(ref),
        "loop_to_vectorised_ratio": t_loop / t_fast,
        "unavoidable_logsumexp_s": t_lse,
        "vectorised_to_unavoidable_ratio": t_fast / t_lse,
        "max_abs_diff": max_diff,
        "threads": torch.get_num_threads(),
        "clock": "process CPU time",
        "wall_s": {"vectorised": w_fast, "loop_subset": w_loop_subset, "logsumexp": w_lse},
    }
    print(
        f"FFN neuron log-prob increase on {out['model']}: {n_b} prompts x {len(layers)} layers x {d_mlp} neurons "
        f"({n_b * len(layers) * d_mlp:,} scores), {out['threads']} thread(s), process CPU seconds\n"
        f"  vectorised                 {t_fast:9.2f} s\n"
        f"  per-neuron loop            {t_loop:9.2f} s  (measured on {len(ref)} (prompt, neuron) pairs in "
        f"{t_loop_subset:.2f} s, extrapolated linearly)\n"
        f"  loop / vectorised          {t_loop / t_fast:9.1f} x\n"
        f"  unavoidable log-sum-exp    {t_lse:9.2f} s  (vectorised / unavoidable = {t_fast / t_lse:.2f} x; goal <= 2)\n"
        f"  max |vectorised - loop|    {max_diff:.2e}\n"
        f"  wall seconds (machine load included): vectorised {w_fast:.2f}, loop subset {w_loop_subset:.2f}, "
        f"log-sum-exp {w_lse:.2f}"
    )
    return out


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv)
