"""Head sweeps, comparative neuron analysis and FFN neuron attribution sharded by prompt over workers
(``cna.head_sweep(..., workers=N)``, ``cna.compare(..., workers=N)``, ``neurons.ffn_neurons(..., workers=N)``).

Shards are runs of whole batches (``batch_size`` prompts), so for prompts of one token length each shard runs
exactly the batches one process would and the per-prompt values are equal, bit for bit (prompts of several
lengths are batched by length within each shard, so their values may differ from one process's by rounding).

Every one of them is per prompt: each shard runs the one-process function on its prompts (and their labels or
targets), and the per-prompt tensors are concatenated in prompt order; the means over prompts (accuracies,
mean log-probabilities) are then taken over the merged per-prompt values, as one process takes them.
``cna.mask_keep`` is not sharded: its random control draws neurons for every prompt from one generator and it
returns only means.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import InputError
from .jobs import as_prompt_list, describe_prompts, map_shards, slice_prompts
from .shards import Shard


def _targets(model, target, n: int):
    from ..neurons.runs import resolve_target

    t = resolve_target(model, target, n)
    return None if t is None else t.cpu()


def _part(x, shard: Shard):
    return None if x is None else x[shard.start : shard.stop]


def _run(workers, model, fn, prompts, target, kwargs, merge, progress, desc, shard):
    return map_shards(
        workers,
        model,
        fn,
        len(prompts),
        prompts,
        target,
        kwargs,
        merge=merge,
        describe=describe_prompts(prompts),
        progress=progress,
        desc=desc,
        shard=shard,
        align=int(kwargs.get("batch_size") or 1),  # each shard runs one process's batches (equal-length prompts)
    )


# ----------------------------------------------------------------------------------------------------------------
# cna.head_sweep


def head_sweep_shard(model, shard: Shard, prompts, labels, kwargs: dict):
    """One shard of :func:`codecircuits.cna.head_sweep` (runs on a worker)."""
    from .. import cna

    return cna.head_sweep(model, slice_prompts(prompts, shard), _part(labels, shard), progress=False, **kwargs)


def merge_head_sweeps(parts: list):
    """:class:`~codecircuits.cna.HeadSweep` of shards, merged in prompt order (means over the merged prompts)."""
    correct = torch.cat([p.correct for p in parts], dim=-1)
    plp = torch.cat([p.prompt_logprob for p in parts], dim=-1)
    base_correct = torch.cat([p.base_correct for p in parts])
    # a HeadSweep keeps the base log-probability only as its mean: the shards' means, weighted by their prompts
    n = sum(int(p.base_correct.shape[0]) for p in parts)
    base_logprob = sum(p.base_logprob * int(p.base_correct.shape[0]) for p in parts) / n
    return dataclasses.replace(
        parts[0],
        accuracy=correct.float().mean(-1),
        logprob=plp.mean(-1),
        base_accuracy=float(base_correct.float().mean()),
        base_logprob=float(base_logprob),
        correct=correct,
        prompt_logprob=plp,
        base_correct=base_correct,
        labels=torch.cat([p.labels for p in parts]),
    )


def head_sweep(model, prompts, labels=None, *, workers, progress: bool = True, shard: int | None = None, **kwargs):
    """:func:`codecircuits.cna.head_sweep` sharded by prompt over ``workers``."""
    prompts = as_prompt_list(prompts)
    n = len(prompts)
    return _run(
        workers,
        model,
        head_sweep_shard,
        prompts,
        _targets(model, labels, n),
        kwargs,
        merge_head_sweeps,
        progress,
        "head sweep",
        shard,
    )


# ----------------------------------------------------------------------------------------------------------------
# cna.compare


def compare_shard(model, shard: Shard, prompts, target, kwargs: dict):
    """One shard of :func:`codecircuits.cna.compare` (runs on a worker)."""
    from .. import cna

    return cna.compare(model, slice_prompts(prompts, shard), target=_part(target, shard), progress=False, **kwargs)


_CNA_PER_PROMPT = (
    "cna",
    "imp_original",
    "imp_ablated",
    "coef_original",
    "coef_ablated",
    "target",
    "prob_original",
    "prob_ablated",
)


def merge_compares(parts: list):
    """:class:`~codecircuits.cna.CNAResult` of shards, merged in prompt order."""
    out = {k: torch.cat([getattr(p, k) for p in parts]) for k in _CNA_PER_PROMPT}
    out["target_tokens"] = tuple(t for p in parts for t in p.target_tokens)
    return dataclasses.replace(parts[0], **out)


def compare(model, prompts, head, *, workers, target=None, progress: bool = True, shard: int | None = None, **kwargs):
    """:func:`codecircuits.cna.compare` sharded by prompt over ``workers``."""
    prompts = as_prompt_list(prompts)
    n = len(prompts)
    kw = dict(kwargs, head=(int(head[0]), int(head[1])))
    return _run(
        workers, model, compare_shard, prompts, _targets(model, target, n), kw, merge_compares, progress, "CNA", shard
    )


# ----------------------------------------------------------------------------------------------------------------
# neurons.ffn_neurons


def ffn_shard(model, shard: Shard, prompts, target, kwargs: dict):
    """One shard of :func:`codecircuits.neurons.ffn_neurons` (runs on a worker)."""
    from ..neurons.ffn import ffn_neurons

    return ffn_neurons(model, slice_prompts(prompts, shard), target=_part(target, shard), progress=False, **kwargs)


def merge_attributions(parts: list):
    """:class:`~codecircuits.neurons.Attribution` of shards (first axis ``prompt``), merged in prompt order."""
    first = parts[0]
    if first.axes[0] != "prompt":
        raise InputError(f"Cannot merge attributions with axes {first.axes} by prompt.")
    return dataclasses.replace(
        first,
        scores={k: torch.cat([p.scores[k] for p in parts]) for k in first.scores},
        target=torch.cat([p.target for p in parts]),
        base_logprob=torch.cat([p.base_logprob for p in parts]),
        coefficients=None if first.coefficients is None else torch.cat([p.coefficients for p in parts]),
        target_tokens=tuple(t for p in parts for t in p.target_tokens),
    )


def ffn_neurons(model, prompts, *, workers, target=None, progress: bool = True, shard: int | None = None, **kwargs):
    """:func:`codecircuits.neurons.ffn_neurons` sharded by prompt over ``workers``."""
    prompts = as_prompt_list(prompts)
    n = len(prompts)
    return _run(
        workers,
        model,
        ffn_shard,
        prompts,
        _targets(model, target, n),
        kwargs,
        merge_attributions,
        progress,
        "FFN neuron scores",
        shard,
    )


__all__ = [
    "compare",
    "compare_shard",
    "ffn_neurons",
    "ffn_shard",
    "head_sweep",
    "head_sweep_shard",
    "merge_attributions",
    "merge_compares",
    "merge_head_sweeps",
]
