"""The one entry point of sharded jobs: ``distributed.run(method, *args, workers=..., **kwargs)``.

The methods are one-process functions and know nothing of workers; this module knows, for each method that can
be sharded, how to cut its input into shards (prompts, prompt pairs or chunks), runs the method on each shard on
a worker holding a replica of the model, and merges the shards' results with the result type's own ``merge``:

| method | shards | merged by |
|---|---|---|
| ``ablation.head_sweep``, ``neuron_sweep``, ``layer_sweep`` | prompts | ``SweepResult.merge`` |
| ``patching.sweep`` | prompt pairs | ``SweepResult.merge`` |
| ``cna.head_sweep`` | prompts | ``HeadSweep.merge`` |
| ``cna.compare`` | prompts | ``CNAResult.merge`` |
| ``neurons.ffn_neurons`` | prompts | ``Attribution.merge`` |
| ``circuits.edge_scores`` | prompt pairs | ``EdgeScores.merge`` |
| ``memories.scan`` | chunks, whole batches | ``TopK.merge`` (through ``ScanRun``, checkpointed) |

``workers=None`` calls the method itself, in this process, so a study or a notebook passes its ``workers`` on
without a branch of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from ..errors import InputError


@functools.cache
def _table() -> dict[Callable, Callable]:
    from .. import ablation, cna, patching
    from ..circuits import attribution
    from ..memories import triggers
    from ..neurons import ffn
    from . import edges, neurons, scan, sweeps

    table: dict[Callable, Callable] = {
        patching.sweep: sweeps.patching_sweep,
        cna.head_sweep: neurons.head_sweep,
        cna.compare: neurons.compare,
        ffn.ffn_neurons: neurons.ffn_neurons,
        attribution.edge_scores: edges.edge_scores,
        triggers.scan: scan.scan,
    }
    for which in sweeps.SWEEPS:
        table[getattr(ablation, which)] = functools.partial(sweeps.ablation_sweep, which)
    return table


def shardable() -> list[str]:
    """The methods :func:`run` can shard, by their qualified names."""
    return sorted(f"{fn.__module__}.{fn.__qualname__}" for fn in _table())


def run(method: Callable, /, *args, workers=None, **kwargs):
    """``method(*args, **kwargs)``, sharded over ``workers`` when given.

    ``workers``: a number (a local Ray cluster started on the fly and closed after the job), a Ray address
    (``"auto"`` or ``"host:port"``: the workers of a running cluster) or a :class:`~codecircuits.distributed.Workers`
    to reuse; ``None`` runs the method in this process. The sharded result equals one process's (bit for bit for
    the scan and for prompts of one length, within float32 rounding where batches differ). ``shard=`` sets the
    prompts per shard; a shard that fails raises :class:`~codecircuits.distributed.ShardsFailed` after the
    others complete, with the rest of the result as its ``partial``.
    """
    if workers is None:
        kwargs.pop("shard", None)
        return method(*args, **kwargs)
    sharded = _table().get(method)
    if sharded is None:
        name = getattr(method, "__qualname__", repr(method))
        raise InputError(
            f"{name} cannot be sharded over workers; the methods that can are: {', '.join(shardable())}. "
            "Run it without workers."
        )
    return sharded(*args, workers=workers, **kwargs)


__all__ = ["run", "shardable"]
