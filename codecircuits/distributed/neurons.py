"""Head sweeps, comparative neuron analysis and FFN neuron attribution sharded by prompt over workers
(``distributed.run(cna.head_sweep, ..., workers=N)``, the same for ``cna.compare`` and ``neurons.ffn_neurons``).

Shards are runs of whole batches (``batch_size`` prompts), so for prompts of one token length each shard runs
exactly the batches one process would and the per-prompt values are equal, bit for bit (prompts of several
lengths are batched by length within each shard, so their values may differ from one process's by rounding).

Every one of them is per prompt: each shard runs the one-process function on its prompts (and their labels or
targets), and the results merge themselves in prompt order (``HeadSweep.merge``, ``CNAResult.merge``,
``Attribution.merge``); the means over prompts (accuracies,
mean log-probabilities) are then taken over the merged per-prompt values, as one process takes them.
``cna.mask_keep`` is not sharded: its random control draws neurons for every prompt from one generator and it
returns only means.
"""

from __future__ import annotations

import inspect

from .. import cna
from ..neurons import ffn
from ..neurons.results import Attribution
from ..neurons.runs import resolve_target
from .jobs import as_prompt_list, describe_prompts, map_shards, slice_prompts
from .shards import Shard


def _targets(model, target, n: int):
    t = resolve_target(model, target, n)
    return None if t is None else t.cpu()


def _part(x, shard: Shard):
    return None if x is None else x[shard.start : shard.stop]


def _batch_size(method, kwargs: dict) -> int:
    """The batch size the method runs with: the caller's, else the method's default."""
    given = kwargs.get("batch_size")
    return int(given if given is not None else inspect.signature(method).parameters["batch_size"].default)


def _run(workers, model, fn, prompts, target, kwargs, merge, progress, desc, shard, method):
    """``fn`` on shards of the prompts (and of their targets), merged by ``merge``."""
    prompts = as_prompt_list(prompts)
    target = _targets(model, target, len(prompts))
    return map_shards(workers, model, fn, len(prompts), prompts, target, kwargs, merge=merge,
                      describe=describe_prompts(prompts), progress=progress, desc=desc, shard=shard,
                      align=_batch_size(method, kwargs))  # each shard runs one process's batches (equal lengths)


# ----------------------------------------------------------------------------------------------------------------
# cna.head_sweep


def head_sweep_shard(model, shard: Shard, prompts, target, kwargs: dict):
    """One shard of :func:`codecircuits.cna.head_sweep` (runs on a worker)."""
    return cna.head_sweep(model, slice_prompts(prompts, shard), _part(target, shard), progress=False, **kwargs)


def head_sweep(model, prompts, target=None, *, workers, progress: bool = True, shard: int | None = None, **kwargs):
    """:func:`codecircuits.cna.head_sweep` sharded by prompt over ``workers``."""
    merge = cna.HeadSweep.merge
    return _run(workers, model, head_sweep_shard, prompts, target, kwargs, merge, progress, "head sweep", shard,
                cna.head_sweep)


# ----------------------------------------------------------------------------------------------------------------
# cna.compare


def compare_shard(model, shard: Shard, prompts, target, kwargs: dict):
    """One shard of :func:`codecircuits.cna.compare` (runs on a worker)."""
    return cna.compare(model, slice_prompts(prompts, shard), target=_part(target, shard), progress=False, **kwargs)


def compare(model, prompts, head, *, workers, target=None, progress: bool = True, shard: int | None = None, **kwargs):
    """:func:`codecircuits.cna.compare` sharded by prompt over ``workers``."""
    kw = dict(kwargs, head=(int(head[0]), int(head[1])))
    return _run(workers, model, compare_shard, prompts, target, kw, cna.CNAResult.merge, progress, "CNA", shard,
                cna.compare)


# ----------------------------------------------------------------------------------------------------------------
# neurons.ffn_neurons


def ffn_shard(model, shard: Shard, prompts, target, kwargs: dict):
    """One shard of :func:`codecircuits.neurons.ffn_neurons` (runs on a worker)."""
    return ffn.ffn_neurons(model, slice_prompts(prompts, shard), target=_part(target, shard), progress=False, **kwargs)


def ffn_neurons(model, prompts, *, workers, target=None, progress: bool = True, shard: int | None = None, **kwargs):
    """:func:`codecircuits.neurons.ffn_neurons` sharded by prompt over ``workers``."""
    return _run(workers, model, ffn_shard, prompts, target, kwargs, Attribution.merge, progress, "FFN neuron scores",
                shard, ffn.ffn_neurons)


__all__ = [
    "compare",
    "compare_shard",
    "ffn_neurons",
    "ffn_shard",
    "head_sweep",
    "head_sweep_shard",
]
