"""Edge scores over a dataset sharded by prompt pair over workers (``distributed.run(circuits.edge_scores, ...,
workers=N)``).

An edge's score is a mean over examples, so each shard runs the one-process :func:`edge_scores` on its pairs
and :meth:`EdgeScores.merge` weights the shards' means by their example counts: equal to one process's up to
float32 rounding of the sums (which one process adds in another order).
"""

from __future__ import annotations

from ..circuits import attribution
from ..circuits.attribution import EdgeScores
from ..core.batching import paired_tokens
from .jobs import check_shardable, describe_prompts, map_shards, shard_metric
from .shards import Shard


def edge_shard(model, shard: Shard, clean, corrupted, metric, kwargs: dict):
    """One shard of :func:`codecircuits.circuits.edge_scores` (runs on a worker)."""
    s = slice(shard.start, shard.stop)
    return attribution.edge_scores(model, clean[s], corrupted[s], shard_metric(metric, shard.start), progress=False, **kwargs)


def edge_scores(
    model, clean, corrupted, metric, *, workers, progress: bool = False, shard: int | None = None, **kwargs
):
    """:func:`codecircuits.circuits.edge_scores` sharded by prompt pair over ``workers``."""
    clean_t, corr_t = paired_tokens(model, clean, corrupted)
    n = int(clean_t.shape[0])
    check_shardable(model, metric, n, int(clean_t.shape[1]))
    return map_shards(workers, model, edge_shard, n, clean_t, corr_t, metric, kwargs, merge=EdgeScores.merge,
                      describe=describe_prompts(None, "prompt pairs"), progress=progress, desc="edge scores",
                      shard=shard)


__all__ = ["edge_scores", "edge_shard"]
