"""What the sharded sweeps, attributions and edge scores share: cutting a prompt set into shards, the metric a
shard is scored with, running the shards and raising :class:`~codecircuits.distributed.shards.ShardsFailed`.

A shard holds prompts (or prompt pairs) ``start .. stop - 1`` of a job and runs the ordinary one-process library
function on them; the parent merges the shards' results in prompt order.

Metrics follow TransformerLens's contract (one value per prompt, the prompts in order). A shard's prompts are
only some of them, so a metric that reads per-prompt labels must know which prompts it is given: a
:func:`~codecircuits.core.metrics.rowwise` metric does (a shard hands it the prompts' indices in the whole set),
a plain one does not and must not index per-prompt labels (see :func:`check_shardable`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ..core.metrics import RowwiseMetric
from ..errors import InputError
from .shards import Shard, ShardsFailed, plan, shard_size
from .workers import using

PER_WORKER = 3  # shards per worker by default: a slow or restarted worker does not hold the job up


@dataclass(frozen=True)
class Shifted:
    """A row-wise metric's function for a shard starting at prompt ``start``: row ``r`` of the shard is prompt
    ``start + examples[r]`` of the whole set."""

    fn: Callable
    start: int

    def __call__(self, logits: torch.Tensor, examples: torch.Tensor) -> torch.Tensor:
        return self.fn(logits, examples + self.start)


def shard_metric(metric, start: int):
    """``metric`` as a shard starting at prompt ``start`` must call it (a mapping of metrics: each of them)."""
    if isinstance(metric, Mapping):
        return {k: shard_metric(m, start) for k, m in metric.items()}
    if isinstance(metric, RowwiseMetric) and start:
        fn = metric.fn
        if isinstance(fn, Shifted):
            return RowwiseMetric(Shifted(fn.fn, fn.start + start))
        return RowwiseMetric(Shifted(fn, start))
    return metric


def check_shardable(model, metric, n: int, n_pos: int) -> None:
    """An error, before any shard runs, for a plain metric that cannot score a shard's prompts alone: it is called
    on logits of one prompt and must return one value (a metric built for ``n`` prompts' labels, e.g.
    ``logits[torch.arange(len(answers)), -1, answers]``, does not)."""
    if n <= 1:
        return
    plain = {k: m for k, m in (metric.items() if isinstance(metric, Mapping) else [("metric", metric)])}
    plain = {k: m for k, m in plain.items() if not isinstance(m, RowwiseMetric)}
    if not plain:
        return
    vocab = int(getattr(model.cfg, "d_vocab_out", 0) or model.cfg.d_vocab)
    probe = torch.zeros(1, int(n_pos), vocab, device=model.cfg.device)
    for name, m in plain.items():
        try:
            with torch.no_grad():
                out = m(probe)
            ok = isinstance(out, torch.Tensor) and tuple(out.shape) == (1,)
            why = "" if ok else f"it returned {tuple(out.shape) if isinstance(out, torch.Tensor) else type(out)}"
        except Exception as e:  # any failure on one prompt means it cannot be sharded
            ok, why = False, f"{type(e).__name__}: {e}"
        if not ok:
            which = "The metric" if name == "metric" else f"Metric {name!r}"
            raise InputError(
                f"{which} cannot score a shard of the {n} prompts on its own (called on one prompt's logits, {why}), "
                "so the job cannot be sharded over workers: it probably indexes per-prompt labels of all the "
                "prompts. Declare it row-wise, codecircuits.core.metrics.rowwise(lambda logits, examples: ... "
                "labels[examples] ...), whose examples are the prompts' indices in the whole set, or run without "
                "workers."
            )


def slice_prompts(prompts, shard: Shard):
    """A shard's prompts: rows of a token tensor, items of a list of prompts."""
    if isinstance(prompts, torch.Tensor):
        return prompts[shard.start : shard.stop]
    return list(prompts[shard.start : shard.stop])


def as_prompt_list(prompts):
    """Prompts as something :func:`slice_prompts` cuts: a 2-D token tensor or a list."""
    if isinstance(prompts, torch.Tensor):
        return prompts if prompts.dim() == 2 else prompts.unsqueeze(0)
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if not prompts:
        raise InputError("No prompts given: pass at least one prompt.")
    return prompts


def describe_prompts(prompts=None, what: str = "prompts") -> Callable[[Shard], str]:
    """``describe`` of :meth:`Workers.map`: the shard's prompt indices and its first prompt's text."""

    def describe(shard: Shard) -> str:
        head = f"{what} {shard.start}-{shard.stop - 1}"
        if prompts is not None and not isinstance(prompts, torch.Tensor) and shard.size:
            first = prompts[shard.start]
            if isinstance(first, str):
                text = first if len(first) <= 40 else first[:37] + "..."
                head += f", first {text!r}"
        return head

    return describe


def shards_of(n: int, n_workers: int, shard: int | None = None, align: int = 1) -> list[Shard]:
    """The shards of ``n`` prompts: ``shard`` prompts each, or a few shards per worker, a multiple of ``align``
    prompts each (a job's batch size, so that each shard runs the batches one process would)."""
    size = int(shard) if shard is not None else shard_size(n, n_workers, align=align, per_worker=PER_WORKER)
    return plan(n, size)


def map_shards(
    workers,
    model,
    fn: Callable,
    n: int,
    *args,
    merge: Callable[[list], object],
    describe: Callable[[Shard], str] | None = None,
    progress: bool = True,
    desc: str = "shards",
    shard: int | None = None,
    align: int = 1,
    **kwargs,
):
    """Run ``fn(model, shard, *args, **kwargs)`` for every shard of ``n`` prompts on ``workers`` (anything
    :func:`~codecircuits.distributed.workers.using` takes; one made here is closed after the job) and return
    ``merge(results in prompt order)``. When some shards fail, raises :class:`ShardsFailed` after the others
    complete; its ``partial`` is ``merge`` of the completed shards' results (in prompt order, the failed
    shards' prompts left out), or ``None``."""
    with using(workers) as w:
        shards = shards_of(n, w.size, shard, align)
        results, failures = w.map(model, fn, shards, *args, describe=describe, progress=progress, desc=desc, **kwargs)
    if failures:
        done = [r for r in results if r is not None]
        raise ShardsFailed(failures, len(shards), partial=merge(done) if done else None)
    return merge(results)


__all__ = [
    "PER_WORKER",
    "Shifted",
    "as_prompt_list",
    "check_shardable",
    "describe_prompts",
    "map_shards",
    "shard_metric",
    "shards_of",
    "slice_prompts",
]
