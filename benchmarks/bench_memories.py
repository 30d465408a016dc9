"""Benchmark: trigger-example scan throughput as a fraction of plain forward throughput, measured in one run.

On the same chunks of the standard library's test split, in the same batches, it times:
- a plain forward, ``model(tokens)`` (logits included): the reference, tokens / s;
- the same forward stopped after the last layer (``stop_at_layer``, no unembedding), which is the forward the
  scan runs;
- :func:`codecircuits.memories.scan` over those chunks (hooks on every layer's ``mlp.hook_post`` reducing each
  batch to a per-chunk max / argmax, then the running top-K merge).

Each is repeated ``repeats`` times, interleaved, and the fastest run counts (the machine may be shared). It prints
scan throughput / plain-forward throughput (goal >= 0.70) and scan / stopped-forward (the scan's own overhead).
``main(quick=True)`` runs on a tiny random Llama in seconds (a smoke test); the full run uses ``smollm2-135m``.
"""

from __future__ import annotations

import time

import torch


def main(quick: bool = False) -> dict:
    from codecircuits import load_model
    from codecircuits import memories as mem
    from codecircuits.core.batching import pad_id
    from codecircuits.testing import tiny_model

    torch.set_num_threads(1)
    if quick:
        model, tokens, window, batch, repeats = tiny_model("llama"), 600, 32, 8, 2
    else:
        model, tokens, window, batch, repeats = load_model("smollm2-135m", device="cpu"), 2048, 128, 8, 2
    chunked = mem.chunk_corpus(model, "stdlib:test", window=window, max_tokens=tokens)
    n_tok = chunked.n_tokens
    pad = pad_id(model)
    batches = [chunked.batch(range(a, min(a + batch, len(chunked))), pad)[0] for a in range(0, len(chunked), batch)]

    def forward(stop=None):
        with torch.no_grad():
            for toks in batches:
                model(toks, stop_at_layer=stop) if stop else model(toks)

    def scan():
        mem.scan(model, chunked, k=20, batch_size=batch, progress=False)

    jobs = {"forward": forward, "forward_stopped": lambda: forward(model.cfg.n_layers), "scan": scan}
    forward()  # warm-up
    best = {name: float("inf") for name in jobs}
    for _ in range(repeats):
        for name, fn in jobs.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    tps = {name: n_tok / t for name, t in best.items()}
    out = {
        "model": str(model.cfg.model_name),
        "tokens": n_tok,
        "chunks": len(chunked),
        "window": window,
        "batch": batch,
        "forward_tok_per_s": tps["forward"],
        "forward_stopped_tok_per_s": tps["forward_stopped"],
        "scan_tok_per_s": tps["scan"],
        "scan_over_forward": tps["scan"] / tps["forward"],
        "scan_over_forward_stopped": tps["scan"] / tps["forward_stopped"],
    }
    print(
        f"memories scan on {out['model']}: {n_tok} tokens in {len(chunked)} chunks of {window}, batch {batch}, "
        f"best of {repeats}, 1 thread"
    )
    print(f"  plain forward (with logits):  {tps['forward']:.1f} tok/s")
    print(f"  forward stopped at last layer: {tps['forward_stopped']:.1f} tok/s")
    print(f"  scan (top-{20} per key):         {tps['scan']:.1f} tok/s")
    print(
        f"  scan / plain forward = {out['scan_over_forward']:.2f} (goal >= 0.70); "
        f"scan / stopped forward = {out['scan_over_forward_stopped']:.2f}"
    )
    return out


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv)
