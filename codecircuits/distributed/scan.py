"""The memories trigger-example scan sharded over workers (``distributed.run(memories.scan, ..., workers=N)``).

Shards are runs of whole batches in chunk order, so each worker runs exactly the batches one process would,
and each shard's state (top-K per key, activation sums, token count) merges into the running state with the
same stable merge the one-process scan applies per batch: the result is equal, bit for bit, to one process's.
States are merged in shard order as the longest run of completed shards from the start grows, so the
checkpoint always holds a prefix of the chunk plan and resumes with or without workers.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import torch

from ..memories import triggers
from ..memories.chunks import ChunkedCorpus
from ..memories.triggers import ScanRun, TopK, TriggerScan, scan_chunks
from .shards import Shard, ShardsFailed, plan, shard_size
from .workers import using


def scan_shard(model, shard: Shard, chunked: ChunkedCorpus, common: dict) -> TopK:
    """One shard's state: its chunks' batches merged from an empty state, with the activation sums of each
    batch kept apart (runs on a worker)."""
    st = TopK.empty(len(common["layers"]), int(model.cfg.d_mlp), common["k"], stats=False)
    sums: list[torch.Tensor] = []
    sqs: list[torch.Tensor] = []
    for part in scan_chunks(model, chunked, shard.items, **common):
        if part.act_sum is not None:
            sums.append(part.act_sum)
            sqs.append(part.act_sq)
        st = st.merge(dataclasses.replace(part, act_sum=None, act_sq=None))
    if common["stats"]:  # per-batch sums, added in batch order by the parent (as one process adds them)
        st = dataclasses.replace(st, act_sum=torch.stack(sums), act_sq=torch.stack(sqs))
    return st


def documents(chunked: ChunkedCorpus, shard: Shard, limit: int = 5) -> str:
    """The names of the documents a shard's chunks come from."""
    names = list(dict.fromkeys(chunked.names[int(chunked.chunk_doc[c])] for c in shard.items))
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return "documents " + ", ".join(names[:limit]) + more


def sharded_scan(
    model,
    chunked: ChunkedCorpus,
    done: int,
    common: dict,
    workers,
    advance: Callable[[TopK, int], None],
    checkpoint_every: int,
    progress: bool,
) -> None:
    """Scan chunks ``done ..`` on ``workers``; ``advance(state, upto)`` receives the shards' states in chunk order.

    Raises :class:`~codecircuits.distributed.shards.ShardsFailed` after the other shards complete when some fail;
    ``advance`` stops at the first failed shard, and the error's ``partial`` holds the states of the completed
    shards after it, in chunk order.
    """
    n = len(chunked)
    if done >= n:
        return
    with using(workers) as w:
        size = shard_size(n - done, w.size, align=common["batch_size"], cap=max(checkpoint_every, common["batch_size"]))
        shards = plan(n, size, start=done)
        pending: dict[int, TopK] = {}
        nxt = [0]

        def on_result(shard: Shard, part: TopK) -> None:
            pending[shard.index] = part
            while nxt[0] in pending:
                advance(pending.pop(nxt[0]), shards[nxt[0]].stop)
                nxt[0] += 1

        results, failures = w.map(model, scan_shard, shards, chunked, common, describe=lambda s: documents(chunked, s),
                                  on_result=on_result, progress=progress, desc="scan")
    if failures:
        # every shard after the first failed one completed but was not merged: hand them on, in chunk order
        raise ShardsFailed(failures, len(shards), partial=[pending[i] for i in sorted(pending)])


def scan(model, corpus, *, workers, progress: bool = True, **kwargs) -> TriggerScan:
    """:func:`codecircuits.memories.scan` with its chunks sharded over ``workers`` (see the module); ``kwargs``
    are the scan's own arguments, with its defaults.

    When shards fail, raises :class:`ShardsFailed` after the others complete: the checkpoint keeps the chunks
    before the first failed shard (resumable), and the error's ``partial`` is the scan of every chunk but the
    failed shards', which its ``settings["skipped_chunks"]`` name."""
    args = inspect.signature(triggers.scan).bind(model, corpus, **kwargs)
    args.apply_defaults()
    settings = {k: v for k, v in args.arguments.items() if k not in ("model", "corpus", "progress")}
    run = ScanRun(model, corpus, **settings)
    try:
        sharded_scan(model, run.chunked, run.done, run.common, workers, run.advance, run.checkpoint_every, progress)
    except ShardsFailed as e:
        e.partial = run.skipping(e.partial, [(f.shard.start, f.shard.stop) for f in e.failures])
        raise
    return run.state()


__all__ = ["documents", "scan", "scan_shard", "sharded_scan"]
