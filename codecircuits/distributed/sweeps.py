"""Ablation and patching sweeps sharded by prompt over workers (``distributed.run(ablation.head_sweep, ...,
workers=N)``, ``distributed.run(patching.sweep, ..., workers=N)``).

Each shard runs the one-process sweep on its prompts (its prompt pairs) and returns its :class:`SweepResult`;
per-example values are concatenated along the batch axis in prompt order, so ``values``, ``effect`` and
``recovery`` are those of one process.

- Mean ablation uses the mean over every reference prompt: each shard is handed the whole reference.
- Resample ablation is refused (it is not in ``ablation.SHARDABLE_KINDS``): which reference prompt each prompt
  takes its activations from is drawn for the whole run at once (a derangement of all the prompts), which a shard of the prompts cannot reproduce.
- Patching: a cell that patches only positions where a shard's clean and corrupted prompts agree is the
  receiver's baseline, exactly, in that shard (one process runs it when another shard's prompts differ there,
  and gets the baseline up to rounding); position labels are those of the first prompt of the whole set.
"""

from __future__ import annotations

import dataclasses

from .. import ablation, patching
from ..ablation import SHARDABLE_KINDS, check_kind
from ..core.batching import to_tokens
from ..errors import InputError
from ..patching import SweepResult, position_labels, sweep_setup
from .jobs import check_shardable, describe_prompts, map_shards, shard_metric
from .shards import Shard

SWEEPS = ("head_sweep", "neuron_sweep", "layer_sweep")


def merge_sweeps(parts: list):
    """Shards' :class:`SweepResult` (or ``{name: SweepResult}``) merged along the batch, in order."""
    if isinstance(parts[0], dict):
        return {k: SweepResult.merge([p[k] for p in parts]) for k in parts[0]}
    return SweepResult.merge(parts)


# ----------------------------------------------------------------------------------------------------------------
# ablation sweeps


def ablation_shard(model, shard: Shard, which: str, tokens, metric, reference, kwargs: dict):
    """One shard of an ablation sweep (runs on a worker): the one-process sweep on the shard's prompts."""
    fn = getattr(ablation, which)
    toks = tokens[shard.start : shard.stop]
    return fn(model, toks, shard_metric(metric, shard.start), reference=reference, progress=False, **kwargs)


def ablation_sweep(
    which: str,
    model,
    tokens,
    metric,
    *,
    workers,
    kind: str = "zero",
    reference=None,
    progress: bool = True,
    shard: int | None = None,
    **kwargs,
):
    """``ablation.<which>(model, tokens, metric, ...)`` sharded by prompt over ``workers`` (see the module)."""
    if which not in SWEEPS:
        raise InputError(f"Unknown ablation sweep {which!r}; choose one of {', '.join(SWEEPS)}.")
    check_kind(kind)
    if kind not in SHARDABLE_KINDS:
        raise InputError(
            f"{kind.capitalize()} ablation cannot be sharded over workers: the reference prompt each prompt takes "
            "its activations from is drawn for the whole run at once (every prompt a different one), which a shard "
            f"of the prompts cannot reproduce. Run it without workers, or use kind={' or '.join(map(repr, SHARDABLE_KINDS))} "
            "with workers."
        )
    toks = to_tokens(model, tokens)
    n = int(toks.shape[0])
    check_shardable(model, metric, n, int(toks.shape[1]))
    ref = None
    if kind == "mean":  # the mean over every reference prompt (the run's own prompts by default), in every shard
        ref = toks if reference is None else to_tokens(model, reference)
    kw = dict(kwargs, kind=kind)
    return map_shards(workers, model, ablation_shard, n, which, toks, metric, ref, kw, merge=merge_sweeps,
                      describe=describe_prompts(None), progress=progress, desc=which.replace("_", " "), shard=shard)


# ----------------------------------------------------------------------------------------------------------------
# patching sweep


def patching_shard(model, shard: Shard, clean, corrupted, metric, kwargs: dict):
    """One shard of a patching sweep (runs on a worker): the one-process sweep on the shard's prompt pairs."""
    s = slice(shard.start, shard.stop)
    return patching.sweep(model, clean[s], corrupted[s], shard_metric(metric, shard.start), progress=False, **kwargs)


def patching_sweep(
    model,
    clean,
    corrupted,
    metric,
    *,
    workers,
    site: str = "resid_pre",
    by=None,
    into: str = "corrupted",
    layers=None,
    positions=None,
    progress: bool = True,
    shard: int | None = None,
    **kwargs,
) -> SweepResult:
    """:func:`codecircuits.patching.sweep` sharded by prompt pair over ``workers`` (see the module)."""
    st = sweep_setup(model, clean, corrupted, site, by, into, layers, positions)  # checked before any shard runs
    clean_t, corr_t = st.clean_t, st.corr_t
    n = int(clean_t.shape[0])
    check_shardable(model, metric, n, int(clean_t.shape[1]))
    kw = dict(kwargs, site=site, by=by, into=into, layers=layers, positions=positions)
    res = map_shards(workers, model, patching_shard, n, clean_t, corr_t, metric, kw, merge=merge_sweeps,
                     describe=describe_prompts(None, "prompt pairs"), progress=progress, desc=f"patching {st.site}",
                     shard=shard)
    labels = dict(res.labels)
    plabels = position_labels(model, st.recv_t)  # the first prompt of the whole set, as one process labels them
    for ax in st.by[1:]:
        if ax in ("pos", "dest_pos"):
            labels[ax] = [plabels[p] for p in st.pos_list]
    return dataclasses.replace(res, labels=labels)


__all__ = ["SWEEPS", "ablation_shard", "ablation_sweep", "merge_sweeps", "patching_shard", "patching_sweep"]
