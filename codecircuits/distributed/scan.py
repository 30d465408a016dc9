"""The memories trigger-example scan sharded over workers (``memories.scan(..., workers=N)``).

Shards are runs of whole batches in chunk order, so each worker runs exactly the batches one process would,
and each shard's state (top-K per key, activation sums, token count) merges into the running state with the
same stable merge the one-process scan applies per batch: the result is equal, bit for bit, to one process's.
States are merged in shard order as the longest run of completed shards from the start grows, so the
checkpoint always holds a prefix of the chunk plan and resumes with or without workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..memories.chunks import ChunkedCorpus
from ..memories.triggers import _TopK, scan_chunks
from .shards import Shard, ShardsFailed, plan, shard_size
from .workers import using


def scan_shard(model, shard: Shard, chunked: ChunkedCorpus, common: dict) -> _TopK:
    """One shard's state: its chunks' batches merged from an empty state, with the activation sums of each
    batch kept apart (runs on a worker)."""
    st = _TopK.empty(len(common["layers"]), int(model.cfg.d_mlp), common["k"], stats=False)
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
    advance: Callable[[_TopK, int], None],
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
        pending: dict[int, _TopK] = {}
        nxt = [0]

        def on_result(shard: Shard, part: _TopK) -> None:
            pending[shard.index] = part
            while nxt[0] in pending:
                advance(pending.pop(nxt[0]), shards[nxt[0]].stop)
                nxt[0] += 1

        results, failures = w.map(
            model,
            scan_shard,
            shards,
            chunked,
            common,
            describe=lambda s: documents(chunked, s),
            on_result=on_result,
            progress=progress,
            desc="scan",
        )
    if failures:
        # every shard after the first failed one completed but was not merged: hand them on, in chunk order
        raise ShardsFailed(failures, len(shards), partial=[pending[i] for i in sorted(pending)])


__all__ = ["documents", "scan_shard", "sharded_scan"]
