"""Benchmark: attribution graphs (``codecircuits.graphs.attribute``) of a 20-token prompt on ``smollm2-135m``.

It prints, from one run:

- the time to build the graph with the neuron basis (feature nodes capped at 1,024 of about 900,000 active
  neurons, so the best-first choice runs) and with a full transcoder set (random ReLU transcoders of 512 features
  per layer firing on about 2% of tokens, every active feature a node, as circuit-tracer's default does), with the backward batch each used;
- peak resident memory above the loaded model during each, beside the memory budget given;
- circuit-tracer's time for the same random-transcoder graph where it was measured on this machine (its own
  environment: circuit-tracer 0.5.0 does not install beside TransformerLens 4; ``scripts/circuit_tracer_check.py``
  runs it): passed in with ``--circuit-tracer-seconds`` or the ``CC_CIRCUIT_TRACER_SECONDS`` environment variable,
  otherwise not printed.

``main(quick=True)`` runs on a tiny random Llama in seconds.
"""

from __future__ import annotations

import os
import threading
import time

import torch

PROMPT = "def area(r):\n    return 3.14 * r * r\nprint(str(area(2"  # 20 tokens for smollm2-135m's tokenizer


class PeakRSS:
    """Peak resident memory (bytes) of this process while the block runs, sampled every 10 ms, above its start."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def above_start(self) -> int:
        return self.peak - self.start


def _one(model, basis, budget, cap):
    from codecircuits.graphs import attribute

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        graph = attribute(model, PROMPT, basis, max_feature_nodes=cap, memory_budget=budget, progress=False)
        seconds = time.perf_counter() - t0
    return graph, seconds, mem.above_start


def main(quick: bool = False, circuit_tracer_seconds: float | None = None) -> dict:
    from codecircuits import load_model
    from codecircuits.core.batching import parse_budget
    from codecircuits.testing import tiny_model
    from codecircuits.transcoders import random_transcoders

    model = tiny_model("llama") if quick else load_model("smollm2-135m", device="cpu")
    budget = "256MB" if quick else "2GB"
    n_tokens = model.to_tokens(PROMPT).shape[1]
    transcoders = random_transcoders(model, 64 if quick else 512, activation="relu", seed=0, density=0.02)
    out = {"model": "tiny-llama" if quick else "smollm2-135m", "tokens": int(n_tokens), "budget_bytes": parse_budget(budget)}
    for name, basis, cap in (("neurons", "neurons", 256 if quick else 1024), ("transcoders", transcoders, None)):
        graph, seconds, peak = _one(model, basis, budget, cap)
        out[name] = {"seconds": seconds, "feature_nodes": graph.n_features, "active": graph.meta["n_active"],
                     "batch_size": graph.meta["batch_size"], "peak_bytes": peak}
        print(f"{name:12s} {seconds:7.1f} s  {graph.n_features:6d} feature nodes of {graph.meta['n_active']:7d} active  "
              f"batch {graph.meta['batch_size']:3d}  peak {peak / 2**20:7.0f} MiB above the model (budget {parse_budget(budget) / 2**20:.0f} MiB)")
    ct = circuit_tracer_seconds or (float(os.environ["CC_CIRCUIT_TRACER_SECONDS"]) if os.environ.get("CC_CIRCUIT_TRACER_SECONDS") else None)
    if ct and not quick:
        out["circuit_tracer_seconds"] = ct
        print(f"circuit-tracer (same transcoders and prompt, measured in its own environment): {ct:.1f} s; "
              f"ours / theirs = {out['transcoders']['seconds'] / ct:.2f}")
    print(f"threads: {torch.get_num_threads()}, prompt tokens: {n_tokens}")
    return out


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv)
