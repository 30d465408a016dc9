"""Vectorised percentile-bootstrap intervals for the statistics of the subspace checks.

:func:`codecircuits.intervals.bootstrap` calls the statistic once per resample, which is fine for one number but
costs seconds for the hundred intervals of a study. The statistics here (a ratio of means -- FLDD, the rowspace
share -- and Cohen's d) are computed on all resamples at once. The resamples are drawn exactly as
:func:`codecircuits.intervals.bootstrap` draws them (the same seeded generator, the same ``[n_resamples, n]``
indices) and the interval is read off them by :func:`codecircuits.intervals.from_resamples`, so the intervals are
the numbers ``intervals.paired`` gives (the test-suite checks that), about ten times faster.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import intervals
from ..errors import InputError


def bootstrap_rows(
    statistic: Callable[..., torch.Tensor],
    *values,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> intervals.Interval:
    """``statistic(*values)`` with its percentile-bootstrap interval; ``statistic`` maps tensors whose last axis
    runs over examples (``[n]`` for the estimate, ``[n_resamples, n]`` for the resamples) to one number per row.
    Non-finite resamples are dropped, as in :func:`codecircuits.intervals.bootstrap`."""
    vals = [torch.as_tensor(v).detach().cpu().double() for v in values]
    if not vals or vals[0].ndim != 1 or any(v.shape != vals[0].shape for v in vals):
        raise InputError("bootstrap_rows needs 1-D tensors of the same length (one value per example).")
    n = vals[0].shape[0]
    if n == 0:
        raise InputError("bootstrap_rows needs at least one example.")
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, n, (int(n_resamples), n), generator=gen)
    return intervals.from_resamples(float(statistic(*vals)), statistic(*(v[idx] for v in vals)), n, level)


def fldd_rows(ld_clean: torch.Tensor, ld_patched: torch.Tensor) -> torch.Tensor:
    """``100 * (1 - mean LD_patched / mean LD_clean)`` along the last axis."""
    return 100.0 * (1.0 - ld_patched.mean(-1) / ld_clean.mean(-1))


def share_rows(ld_clean: torch.Tensor, ld_one: torch.Tensor, ld_other: torch.Tensor) -> torch.Tensor:
    """``(mean LD_clean - mean LD_other) / (mean LD_clean - mean LD_one)`` along the last axis: the share of the
    first patch's effect the second one has."""
    c = ld_clean.mean(-1)
    return (c - ld_other.mean(-1)) / (c - ld_one.mean(-1))


def cohens_d_rows(projections: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Cohen's d (``|mean_1 - mean_0| / sqrt((s_0^2 + s_1^2) / 2)``, unbiased variances) of ``projections``
    split by the two classes of ``values``, along the last axis; ``nan`` where a class has fewer than 2."""
    classes = torch.unique(values)
    if classes.numel() != 2:
        return torch.full(projections.shape[:-1], math.nan, dtype=torch.float64)
    one = (values == classes[1]).double()
    zero = 1.0 - one
    n1, n0 = one.sum(-1), zero.sum(-1)
    m1 = (projections * one).sum(-1) / n1
    m0 = (projections * zero).sum(-1) / n0
    v1 = (((projections - m1[..., None]) ** 2) * one).sum(-1) / (n1 - 1)
    v0 = (((projections - m0[..., None]) ** 2) * zero).sum(-1) / (n0 - 1)
    pooled = ((v0 + v1) / 2).sqrt()
    gap = (m1 - m0).abs()
    d = torch.where(pooled > 0, gap / pooled, torch.where(gap > 0, math.inf, 0.0))
    return torch.where((n1 < 2) | (n0 < 2), torch.tensor(math.nan, dtype=torch.float64), d)


__all__ = ["bootstrap_rows", "cohens_d_rows", "fldd_rows", "share_rows"]
