"""Deterministic shards of a job and what happens when one fails.

A shard is a contiguous range of item indices (documents' chunks, prompts, prompt pairs) of a job. Shards are
planned from the item count alone, so the same job is cut the same way on every run and on any number of
workers; their results are merged in shard order, so the merged result does not depend on which worker ran
which shard, or when.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Shard:
    """Items ``start .. stop - 1`` of a job; ``index`` is the shard's place in the merge order."""

    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def items(self) -> range:
        return range(self.start, self.stop)


@dataclass(frozen=True)
class ShardFailure:
    """A shard whose job raised: which items it held (``what``, e.g. its documents) and the error."""

    shard: Shard
    what: str
    error: str

    def __str__(self) -> str:
        return f"shard {self.shard.index} (items {self.shard.start}-{self.shard.stop - 1}: {self.what}): {self.error}"


class ShardsFailed(InputError):
    """Some shards of a sharded job failed on their input; every other shard completed.

    ``failures`` lists each failed shard with its items and error; ``partial`` is the job's result merged from
    the shards that completed (``None`` when no shard did).
    """

    def __init__(self, failures: Sequence[ShardFailure], n_shards: int, partial=None):
        self.failures = tuple(failures)
        self.partial = partial
        lines = "\n  ".join(str(f) for f in self.failures)
        super().__init__(
            f"{len(self.failures)} of {n_shards} shards failed (the other shards completed; their merged result is "
            f"this error's .partial):\n  {lines}\nFix or drop the items named above and run the job again."
        )


def plan(n_items: int, size: int, *, start: int = 0) -> list[Shard]:
    """Shards of ``size`` items covering ``start .. n_items - 1`` in order (the last one may be shorter)."""
    if size < 1:
        raise InputError(f"A shard must hold at least one item; got a shard size of {size}.")
    return [Shard(i, a, min(a + size, n_items)) for i, a in enumerate(range(start, n_items, size))]


def shard_size(n_items: int, n_workers: int, *, align: int = 1, per_worker: int = 4, cap: int | None = None) -> int:
    """A shard size giving each worker about ``per_worker`` shards (so a slow or restarted worker does not hold
    up the job), a multiple of ``align`` (e.g. the batch size, so each shard runs the batches one process would),
    at most ``cap`` items (rounded up to ``align``)."""
    align = max(1, int(align))
    size = -(-max(1, n_items) // max(1, n_workers * per_worker))
    if cap is not None:
        size = min(size, max(1, int(cap)))
    return -(-size // align) * align


__all__ = ["Shard", "ShardFailure", "ShardsFailed", "plan", "shard_size"]
