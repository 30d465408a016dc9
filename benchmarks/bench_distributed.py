"""Benchmark: the memories trigger-example scan sharded over Ray workers (:mod:`codecircuits.distributed`).

On ``smollm2-135m`` and the first chunks of the standard library's test split (8,192 tokens in 64 chunks of 128, batch 8),
from one run it prints:

- the time to start a local Ray cluster, and the time for its workers to load their replicas of the model;
- the scan in this process on one thread (the reference: tokens / s), then on 1 worker and on 2 workers of one
  thread each, with the replicas already loaded (shards of 16 and 8 chunks: about four per worker), each the
  fastest of two runs: the throughput ratio of 2 workers to 1 (goal >= 1.7x on this
  2-core machine) and the per-shard overhead, ``(1 worker's time - this process's time) / shards``;
- the round trip of an empty shard (scheduling and result transfer alone);
- whether every sharded result equals this process's bit for bit.

``main(quick=True)`` runs on a tiny random Llama in seconds (a smoke test that it still runs).
"""

from __future__ import annotations

import time

import torch


def _noop(model, shard):
    return shard.index


def main(quick: bool = False) -> dict:
    from codecircuits import load_model
    from codecircuits import memories as mem
    from codecircuits.distributed import Workers, plan, run, shard_size
    from codecircuits.testing import tiny_model

    torch.set_num_threads(1)
    if quick:
        model, tokens, window, every = tiny_model("llama"), 2000, 32, 16
    else:
        model, tokens, window, every = load_model("smollm2-135m", device="cpu"), 8192, 128, 64
    batch = 8
    chunked = mem.chunk_corpus(model, "stdlib:test", window=window, max_tokens=tokens)
    n_tok, n_chunks = chunked.n_tokens, len(chunked)

    def run_scan(workers=None):
        t0 = time.perf_counter()
        s = run(
            mem.scan, model, chunked, k=20, batch_size=batch, checkpoint_every=every, progress=False, workers=workers
        )
        return s, time.perf_counter() - t0

    repeats = 2  # the fastest of two runs counts (the machine may be shared)
    runs = [run_scan() for _ in range(repeats)]
    ref, t_one = runs[0][0], min(t for _, t in runs)
    shards = {n: -(-n_chunks // shard_size(n_chunks, n, align=batch, cap=every)) for n in (1, 2)}
    out = {"tokens": n_tok, "chunks": n_chunks, "shards_1w": shards[1], "shards_2w": shards[2], "one_process_s": t_one}
    equal = True
    for n in (1, 2):
        t0 = time.perf_counter()
        w = Workers(n, threads=1)
        w.start()
        t_start = time.perf_counter() - t0
        t0 = time.perf_counter()
        w.replicas(model)
        t_load = time.perf_counter() - t0
        t = float("inf")
        for _ in range(repeats):
            s, ti = run_scan(w)
            t = min(t, ti)
            equal &= all(torch.equal(getattr(ref, f), getattr(s, f)) for f in ("values", "chunk", "pos", "act_sum"))
        if n == 1:
            t0 = time.perf_counter()
            w.map(model, _noop, plan(40, 1), progress=False)
            out["empty_shard_ms"] = (time.perf_counter() - t0) / 40 * 1e3
        w.close()
        out[f"cluster_start_{n}w_s"], out[f"replica_load_{n}w_s"], out[f"scan_{n}w_s"] = t_start, t_load, t
    out["ratio_2w_1w"] = out["scan_1w_s"] / out["scan_2w_s"]
    out["ratio_2w_one_process"] = t_one / out["scan_2w_s"]
    out["overhead_per_shard_s"] = (out["scan_1w_s"] - t_one) / shards[1]
    out["equal"] = equal
    name = "tiny llama" if quick else "smollm2-135m"
    print(
        f"scan of {n_tok} tokens ({n_chunks} chunks of {window}; {shards[1]} shards on 1 worker, {shards[2]} on 2) "
        f"on {name}, one thread each"
    )
    print(f"  this process      {t_one:7.1f} s  {n_tok / t_one:7.0f} tok/s")
    for n in (1, 2):
        print(
            f"  {n} worker{'s' if n > 1 else ' '}         {out[f'scan_{n}w_s']:7.1f} s  {n_tok / out[f'scan_{n}w_s']:7.0f} tok/s"
            f"   (cluster start {out[f'cluster_start_{n}w_s']:.1f} s, replicas loaded in {out[f'replica_load_{n}w_s']:.1f} s)"
        )
    print(f"  2 workers / 1 worker: {out['ratio_2w_1w']:.2f}x (goal >= 1.7x); 2 workers / this process: "
          f"{out['ratio_2w_one_process']:.2f}x")
    print(f"  per-shard overhead {out['overhead_per_shard_s'] * 1e3:.0f} ms (empty shard round trip "
          f"{out['empty_shard_ms']:.1f} ms); results equal to this process's: {equal}")
    return out


if __name__ == "__main__":
    main()
