"""Edge scores over a dataset sharded by prompt pair over workers (``circuits.edge_scores(..., workers=N)``).

An edge's score is a mean over examples, so each shard runs the one-process :func:`edge_scores` on its pairs
and the shards' means are merged weighted by their example counts, ``sum_i n_i * scores_i / n`` (in float64,
then back to float32): equal to one process's up to float32 rounding of the sums (which one process adds in
another order).
"""

from __future__ import annotations

import dataclasses

import torch

from ..core.batching import paired_tokens
from .jobs import check_shardable, describe_prompts, map_shards, shard_metric
from .shards import Shard


def edge_shard(model, shard: Shard, clean, corrupted, metric, kwargs: dict):
    """One shard of :func:`codecircuits.circuits.edge_scores` (runs on a worker)."""
    from ..circuits.attribution import edge_scores

    s = slice(shard.start, shard.stop)
    return edge_scores(model, clean[s], corrupted[s], shard_metric(metric, shard.start), progress=False, **kwargs)


def _weighted(parts: list, field: str, n: int) -> torch.Tensor | None:
    first = getattr(parts[0], field)
    if first is None:
        return None
    total = sum(getattr(p, field).double() * p.n_examples for p in parts)
    return (total / n).to(first.dtype)


def merge_edge_scores(parts: list):
    """:class:`~codecircuits.circuits.EdgeScores` of shards merged: means weighted by the shards' examples."""
    n = sum(p.n_examples for p in parts)
    return dataclasses.replace(
        parts[0],
        scores=_weighted(parts, "scores", n),
        neuron_scores=_weighted(parts, "neuron_scores", n),
        n_examples=n,
        meta=dict(parts[0].meta),
    )


def edge_scores(
    model, clean, corrupted, metric, *, workers, progress: bool = False, shard: int | None = None, **kwargs
):
    """:func:`codecircuits.circuits.edge_scores` sharded by prompt pair over ``workers``."""
    clean_t, corr_t = paired_tokens(model, clean, corrupted)
    n = int(clean_t.shape[0])
    check_shardable(model, metric, n, int(clean_t.shape[1]))
    return map_shards(
        workers,
        model,
        edge_shard,
        n,
        clean_t,
        corr_t,
        metric,
        kwargs,
        merge=merge_edge_scores,
        describe=describe_prompts(None, "prompt pairs"),
        progress=progress,
        desc="edge scores",
        shard=shard,
    )


__all__ = ["edge_scores", "edge_shard", "merge_edge_scores"]
