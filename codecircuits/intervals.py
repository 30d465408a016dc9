"""Bootstrap confidence intervals over examples, and the claim -> verdict rows the studies report.

Every headline number of a study is a statistic of per-example values (an accuracy is the mean of 0/1 values, a
logit-difference drop the mean of per-prompt drops, an F1 a function of per-prompt predictions and labels). The
interval resamples the *examples* with replacement, keeping paired values together, and reads the 2.5% and 97.5%
quantiles of the statistic over the resamples (the percentile bootstrap)::

    acc = intervals.mean(correct)                       # Interval(estimate, low, high, n)
    drop = intervals.paired(lambda a, b: (a - b).mean(), base, ablated)
    f1 = intervals.bootstrap(lambda p, y: f1_score(p, y), predicted, labels)

    claims = [intervals.Claim("accuracy falls at 4 parens", "reproduced", acc, command="codecircuits parens")]
    intervals.claims_markdown(claims)                   # the findings docs' verdict table

Resampling is seeded, so a study's intervals are the same on every run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError

#: the verdicts a claim can get
VERDICTS = ("reproduced", "partly", "not reproduced")


@dataclass(frozen=True)
class Interval:
    """A statistic with its 95% (``level``) percentile-bootstrap interval over ``n`` examples."""

    estimate: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def excludes(self, value: float) -> bool:
        """Whether ``value`` lies outside the interval (e.g. ``excludes(0)``: the effect is not zero)."""
        return not (self.low <= value <= self.high)

    def above(self, value: float) -> bool:
        """Whether the whole interval lies above ``value``."""
        return self.low > value

    def below(self, value: float) -> bool:
        """Whether the whole interval lies below ``value``."""
        return self.high < value

    def to_json(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n, "level": self.level}

    @classmethod
    def from_json(cls, d: dict) -> Interval:
        return cls(d["estimate"], d["low"], d["high"], d["n"], d.get("level", 0.95))

    def format(self, digits: int = 2, percent: bool = False) -> str:
        """``"0.64 [0.49, 0.78]"`` (``percent``: ``"64% [49%, 78%]"``)."""
        if percent:
            f = lambda x: f"{100 * x:.{max(digits - 2, 0)}f}%"  # noqa: E731
        else:
            f = lambda x: f"{x:.{digits}f}"  # noqa: E731
        return f"{f(self.estimate)} [{f(self.low)}, {f(self.high)}]"

    def __str__(self) -> str:
        return self.format()


def _as_tensors(values: Sequence) -> list[torch.Tensor]:
    out = []
    for v in values:
        if isinstance(v, np.ndarray) and not v.flags.writeable:
            v = v.copy()  # torch warns on read-only arrays (e.g. from pandas)
        t = v.detach().cpu() if isinstance(v, torch.Tensor) else torch.as_tensor(v)
        out.append(t.double() if t.is_floating_point() or t.dtype == torch.bool else t)
    if not out:
        raise InputError("bootstrap needs at least one tensor of per-example values")
    n = out[0].shape[0] if out[0].ndim else 0
    for t in out:
        if t.ndim == 0 or t.shape[0] != n:
            raise InputError(
                "bootstrap's values must share their first dimension (one row per example): got shapes "
                + ", ".join(str(tuple(t.shape)) for t in out)
            )
    if n == 0:
        raise InputError("bootstrap needs at least one example; got an empty tensor")
    return out


def bootstrap(
    statistic: Callable[..., torch.Tensor | float],
    *values,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """``statistic(*values)`` with its percentile-bootstrap interval: each resample draws the examples (rows of
    every tensor in ``values``, the same rows for all of them) with replacement. ``statistic`` takes the tensors
    (float64) and returns a number; resamples where it is not finite (e.g. an F1 with no positive) are dropped, and
    the interval is ``nan`` when all are."""
    vals = _as_tensors(values)
    if not 0 < level < 1:
        raise InputError(f"level must lie between 0 and 1, got {level}")
    n = vals[0].shape[0]
    est = float(statistic(*vals))
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, n, (int(n_resamples), n), generator=gen)
    stats = torch.tensor([float(statistic(*(v[i] for v in vals))) for i in idx], dtype=torch.float64)
    return from_resamples(est, stats, n, level)


def from_resamples(est: float, stats: torch.Tensor, n: int, level: float = 0.95) -> Interval:
    """The percentile interval of ``est`` from ``stats``, the statistic on each bootstrap resample of ``n``
    examples: its ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles. Resamples where the statistic is not
    finite are dropped; the bounds are ``nan`` when all are. For a resampling that :func:`bootstrap` cannot do (of
    documents, say, rather than rows)."""
    stats = stats[torch.isfinite(stats)]
    if stats.numel() == 0:
        return Interval(est, float("nan"), float("nan"), n, level)
    a = (1 - level) / 2
    lo, hi = torch.quantile(stats, torch.tensor([a, 1 - a], dtype=torch.float64)).tolist()
    return Interval(est, lo, hi, n, level)


def mean(values, *, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """The mean of per-example ``values`` (0/1 or bool for an accuracy) with its bootstrap interval; vectorised.
    Rows may carry extra dimensions, which are averaged too."""
    (v,) = _as_tensors([values])
    v = v.reshape(v.shape[0], -1).double().mean(-1)
    n = v.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, n, (int(n_resamples), n), generator=gen)
    return from_resamples(float(v.mean()), v[idx].mean(-1), n, level)


def paired(
    statistic: Callable[..., torch.Tensor | float],
    *values,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """:func:`bootstrap` for paired measurements (the same examples under two conditions), e.g.
    ``paired(lambda base, ablated: (base - ablated).mean(), base, ablated)``."""
    return bootstrap(statistic, *values, n_resamples=n_resamples, seed=seed, level=level)


def difference(a, b, *, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """``mean(a) - mean(b)`` for two *independent* samples (each resampled on its own), e.g. an effect against
    its random control drawn on other examples."""
    (ta,) = _as_tensors([a])
    (tb,) = _as_tensors([b])
    ta, tb = ta.reshape(ta.shape[0], -1).mean(-1), tb.reshape(tb.shape[0], -1).mean(-1)
    gen = torch.Generator().manual_seed(int(seed))
    ia = torch.randint(0, ta.shape[0], (int(n_resamples), ta.shape[0]), generator=gen)
    ib = torch.randint(0, tb.shape[0], (int(n_resamples), tb.shape[0]), generator=gen)
    stats = ta[ia].mean(-1) - tb[ib].mean(-1)
    return from_resamples(float(ta.mean() - tb.mean()), stats, int(ta.shape[0] + tb.shape[0]), level)


def statistic(
    stat: Callable[..., torch.Tensor],
    *values,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    dtype: torch.dtype | None = torch.float64,
) -> Interval | list[Interval]:
    """:func:`bootstrap` vectorised: ``stat`` is called once on every resample at once. It takes the values with a
    leading resample axis (``[resamples, n, ...]``: rows resampled together across ``values``) and returns
    ``[resamples]``, or ``[resamples, k]`` for ``k`` statistics of the same resamples (then a list of ``k``
    intervals). The estimate is ``stat`` on the values as they are (a resample axis of 1).

    The values are cast to ``dtype`` (``None``: kept, e.g. float32 to bootstrap in float32), and so is what
    ``stat`` returns; resamples where it is not finite are dropped (the bounds are ``nan`` when all are). The
    quantile levels are ``(1 - level) / 2`` and one minus it, rounded to 12 digits (0.025 and 0.975 exactly)."""
    vals = [torch.as_tensor(v).detach().cpu() for v in values]
    if dtype is not None:
        vals = [v.to(dtype) for v in vals]
    if not vals or any(v.ndim == 0 or v.shape[0] != vals[0].shape[0] for v in vals) or vals[0].shape[0] == 0:
        raise InputError("statistic needs values that share a non-empty first dimension (one row per example)")
    if not 0 < level < 1:
        raise InputError(f"level must lie between 0 and 1, got {level}")
    n = vals[0].shape[0]
    est = stat(*[v[None] for v in vals])[0]
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, n, (int(n_resamples), n), generator=gen)
    stats = stat(*[v[idx] for v in vals])
    if dtype is not None:
        stats = stats.to(dtype)
    if stats.dim() == 1:
        return _percentiles(float(est), stats, n, level)
    return [_percentiles(float(est[j]), stats[:, j], n, level) for j in range(stats.shape[1])]


def _percentiles(est: float, stats: torch.Tensor, n: int, level: float) -> Interval:
    stats = stats[torch.isfinite(stats)]
    if stats.numel() == 0:
        return Interval(est, float("nan"), float("nan"), n, level)
    a = round((1 - level) / 2, 12)
    lo, hi = torch.quantile(stats, torch.tensor([a, 1 - a], dtype=stats.dtype)).tolist()
    return Interval(est, lo, hi, n, level)


# ----------------------------------------------------------------------------------------------------------------
# statistics to bootstrap: each takes per-example values with any leading (resample) axes, as :func:`statistic`
# passes them, and returns one number per leading index


def mean_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean(a - b)`` over the examples (last axis): a paired effect, e.g. an ablation's drop against random
    heads' drop on the same prompts."""
    return (a - b).mean(-1)


def recovery(patched: torch.Tensor, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """The share of the way from ``base`` to ``source`` that ``patched`` goes, ``mean(patched - base) /
    mean(source - base)`` over the examples (last axis): 0 = the corrupted run, 1 = the clean run."""
    return (patched - base).mean(-1) / (source - base).mean(-1)


def f1(predicted: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """F1 over the examples (last axis) of 0/1 ``predicted`` against 0/1 ``labels``; 0 where nothing is right."""
    tp = (predicted * labels).sum(-1)
    prec = tp / predicted.sum(-1)
    rec = tp / labels.sum(-1)
    return torch.where(tp > 0, 2 * prec * rec / (prec + rec), torch.zeros_like(tp))


def partial_correlation(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The correlation of ``x`` and ``y`` (``[..., n]``) once the covariates ``z`` (``[..., n, k]``, an intercept
    added) are regressed out of both: the resample-batched form of :func:`codecircuits.heads.partial_correlation`
    (which reads every head at once and gives NaN where a residual is constant; here the denominator is clamped)."""
    ones = torch.ones(*z.shape[:-1], 1, dtype=z.dtype)
    zz = torch.cat([ones, z - z.mean(-2, keepdim=True)], -1)
    proj = zz @ torch.linalg.pinv(zz)
    rx = x - (proj @ x[..., None])[..., 0]
    ry = y - (proj @ y[..., None])[..., 0]
    return (rx * ry).sum(-1) / (rx.norm(dim=-1) * ry.norm(dim=-1)).clamp_min(1e-12)


def emergence_layer(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """The first layer from which the mean of ``values`` (``[..., examples, layers]``, averaged over the examples)
    stays >= ``fraction`` x its final, positive value; NaN where there is none (float64, for :func:`statistic`)."""
    m = values.mean(-2)
    fin = m[..., -1:]
    ok = (m >= fraction * fin) & (fin > 0)
    tail = torch.flip(torch.cummin(torch.flip(ok.int(), [-1]), -1).values, [-1]).bool()  # ok from here on
    return torch.where(tail.any(-1), tail.int().argmax(-1).double(), torch.full(m.shape[:-1], float("nan")))


# ----------------------------------------------------------------------------------------------------------------
# claims and verdicts


@dataclass(frozen=True)
class Claim:
    """One row of a study's verdict table: what the paper claims, whether this run reproduces it, the number (with
    its interval) the verdict rests on, its control, and the command that measures it."""

    claim: str
    verdict: str
    evidence: Interval | None = None
    control: Interval | None = None
    detail: str = ""
    command: str = ""
    #: the rule the verdict applies to the evidence and control, in words ("the interval lies above the control's")
    rule: str = ""
    #: the paper's own value for this claim, as the paper gives it ("0.48", "13x smaller"), and where it is
    paper: str = ""
    source: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise InputError(f"A claim's verdict must be one of {', '.join(VERDICTS)}; got {self.verdict!r}.")

    def to_json(self) -> dict:
        out = {
            "claim": self.claim,
            "verdict": self.verdict,
            "evidence": self.evidence.to_json() if self.evidence else None,
            "control": self.control.to_json() if self.control else None,
            "detail": self.detail,
            "command": self.command,
        }
        out.update({k: getattr(self, k) for k in ("rule", "paper", "source") if getattr(self, k)})
        return out

    @classmethod
    def from_json(cls, d: dict) -> Claim:
        """A claim read back from a study's ``results.json``."""
        return cls(d["claim"], d["verdict"], Interval.from_json(d["evidence"]) if d.get("evidence") else None,
                   Interval.from_json(d["control"]) if d.get("control") else None, d.get("detail", ""),
                   d.get("command", ""), d.get("rule", ""), d.get("paper", ""), d.get("source", ""))

    def row(self, digits: int = 2) -> dict:
        """The claim as a table row of strings (the report's and the findings' table)."""
        return {
            "claim": self.claim,
            "verdict": self.verdict,
            "measured (95% CI)": self.evidence.format(digits) if self.evidence else "",
            "control (95% CI)": self.control.format(digits) if self.control else "",
            **({"paper": f"{self.paper} ({self.source})" if self.source else self.paper} if self.paper else {}),
            **({"rule": self.rule} if self.rule else {}),
            "detail": self.detail,
        }


def verdict(reproduced: bool, partly: bool = False) -> str:
    """``"reproduced"`` / ``"partly"`` / ``"not reproduced"`` from two tests of the evidence."""
    return "reproduced" if reproduced else ("partly" if partly else "not reproduced")


def claims_markdown(claims: Sequence[Claim], *, digits: int = 2) -> str:
    """The claims as a markdown table (claim | verdict | measured | control | detail)."""
    extra = [k for k in ("paper", "rule") if any(getattr(c, k) for c in claims)]  # columns only some studies fill
    cols = ["claim", "verdict", "measured (95% CI)", "control (95% CI)", *extra, "detail"]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)
    rows = []
    for c in claims:
        r = c.row(digits)
        cells = [f"**{r[k]}**" if k == "verdict" else r.get(k, "") for k in cols]
        rows.append("| " + " | ".join(s.replace("|", "\\|") for s in cells) + " |")
    return "\n".join([head, *rows])
