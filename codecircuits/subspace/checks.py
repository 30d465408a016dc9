"""The checks for the subspace-patching illusion (Makelov, Lange, Nanda 2023, METHODS §5).

At an MLP's ``hook_post`` a direction splits as ``v = v_row + v_null`` with ``v_null`` in the kernel of the output
weights ``W_out[l]`` (:func:`readout_matrix`, :func:`rowspace_split`); clean activations projected on a direction
should separate by feature value (:func:`projection_separation`); :func:`illusion_checks` runs all the checks of
the package docstring and gives a verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from .. import figures, intervals
from ..core import sites
from ..errors import InputError
from .das import Direction, activations, clean_activations, fit_direction, mean_difference_direction, random_direction
from .interchange import PatchResult, patch, patched_logits
from .pairs import PatchPairs, base_residual, check_pairs, start_layer
from .stats import bootstrap_rows, cohens_d_rows, share_rows


def readout_matrix(model, hook_name: str) -> torch.Tensor | None:
    """The weights through which the activation at ``hook_name`` reaches the rest of the model, if linear.

    For ``blocks.{l}.mlp.hook_post`` it is ``W_out[l]`` (``[d_mlp, d_model]``): the MLP's output is
    ``hook_post @ W_out[l] + b_out[l]``, so directions in the kernel of ``x -> x @ W_out[l]`` are causally inert.
    For other hooks (e.g. the residual stream, read by many components) there is no single readout and it is
    ``None``.
    """
    layer = sites.layer_of_hook(hook_name)
    if layer is None or hook_name != sites.hook_name("post", layer):
        return None
    return model.W_out[layer].detach().float().cpu()


def rowspace_split(
    direction: Float[torch.Tensor, " d"], readout: Float[torch.Tensor, "d k"], *, rtol: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``direction`` (``[d]``) into its part in the column space of ``readout`` (``[d, k]``) and the rest.

    Returns ``(v_row, v_null)`` with ``v_row + v_null = direction``; ``v_null @ readout`` is zero (up to rounding).
    The rank of ``readout`` is taken from its singular values (those above ``rtol`` times the largest).
    """
    readout = readout.detach().float().cpu()
    v = direction.detach().float().cpu()
    if readout.dim() != 2 or readout.shape[0] != v.shape[0]:
        raise InputError(
            f"The readout must be [d, k] with d = {v.shape[0]} (the direction's size); got {tuple(readout.shape)}."
        )
    U, S, _ = torch.linalg.svd(readout, full_matrices=False)
    rank = int((S > rtol * S.max()).sum()) if S.numel() else 0
    Q = U[:, :rank]
    v_row = Q @ (Q.T @ v)
    return v_row, v - v_row


@dataclass(frozen=True)
class Separation:
    """How clean activations projected on a direction separate by feature value.

    Attributes:
        name: which direction (``"v"``, ``"v_row"``, ``"v_null"``, ...).
        cohens_d: ``|mean_1 - mean_0| / pooled std`` of the projections (scale-free).
        mean_gap: ``mean_1 - mean_0`` of the projections onto the (unnormalised) vector, in activation units.
        means, stds: per feature value.
        accuracy: best single-threshold accuracy of telling the values apart from the projection.
        projections, values: ``[prompt]`` the projections and each prompt's value (for histograms).
    """

    name: str
    cohens_d: float
    mean_gap: float
    means: tuple[float, ...]
    stds: tuple[float, ...]
    accuracy: float
    projections: torch.Tensor
    values: torch.Tensor
    axes: tuple[str, ...] = ("prompt",)

    @cached_property
    def cohens_d_interval(self) -> intervals.Interval:
        """Cohen's d with its 95% bootstrap interval over prompts (resamples with one value only are dropped)."""
        return bootstrap_rows(cohens_d_rows, self.projections, self.values.double())

    def summary(self) -> dict:
        ci = self.cohens_d_interval
        return dict(direction=self.name, cohens_d=self.cohens_d, cohens_d_low=ci.low, cohens_d_high=ci.high,
                    mean_gap=self.mean_gap, threshold_accuracy=self.accuracy)

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({"projection": self.projections.numpy(), "value": self.values.numpy()})

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` rows of :meth:`to_dataframe` (prompts; the index) with the largest signed projection, largest
        first."""
        return self.to_dataframe().sort_values("projection", ascending=False, kind="stable").head(k)

    def histogram(self, bins: int = 12) -> tuple[list[float], dict[str, list[float]]]:
        """The projections' histogram per feature value over ``bins`` equal bins spanning them all: the bins'
        centres and ``{"value v": counts}``."""
        p = self.projections.numpy()
        edges = np.linspace(p.min(), p.max() + 1e-9, bins + 1)
        centres = ((edges[:-1] + edges[1:]) / 2).tolist()
        series = {}
        for v in sorted(set(self.values.tolist())):
            counts, _ = np.histogram(p[self.values.numpy() == v], bins=edges)
            series[f"value {v}"] = counts.astype(float).tolist()
        return centres, series

    def plot(self) -> figures.Figure:
        """The quantiles of the projections, one line per feature value: the wider the gap between the lines, the
        better the direction separates the values."""
        df = self.to_dataframe()
        q = np.linspace(0.0, 1.0, min(len(df), 21))
        series = {f"value {v}": np.quantile(g["projection"].to_numpy(), q).tolist()
                  for v, g in df.groupby("value", sort=True)}
        return figures.lines([round(float(x), 3) for x in q], series,
                             title=f"{self.name}: projections by feature value (Cohen's d {self.cohens_d:.2f})",
                             x_title="quantile", y_title="projection")


def cohens_d(projections: torch.Tensor, values: torch.Tensor) -> float:
    """``|mean_1 - mean_0| / pooled std`` of ``projections`` split by the two ``values`` (``nan`` unless both
    values occur at least twice)."""
    classes = values.unique()
    if len(classes) != 2:
        return float("nan")
    a, b = projections[values == classes[0]], projections[values == classes[1]]
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    pooled = math.sqrt((float(a.std()) ** 2 + float(b.std()) ** 2) / 2)
    gap = abs(float(b.mean() - a.mean()))
    return gap / pooled if pooled > 0 else (math.inf if gap > 0 else 0.0)


def projection_separation(
    name: str,
    acts: Float[torch.Tensor, "prompt d"],
    values: Int[torch.Tensor, " prompt"],
    vector: Float[torch.Tensor, " d"],
) -> Separation:
    """How the projections ``acts @ vector`` separate the prompts of two feature values (``values``): Cohen's d,
    the gap of the means and the best single-threshold accuracy (a :class:`Separation` called ``name``)."""
    proj = acts @ vector.float()
    classes = values.unique().tolist()
    if len(classes) != 2:
        raise InputError(f"Separation needs prompts of exactly two feature values, found {classes}.")
    a, b = proj[values == classes[0]], proj[values == classes[1]]
    sa, sb = (float(x.std()) if len(x) > 1 else 0.0 for x in (a, b))
    pooled = math.sqrt((sa**2 + sb**2) / 2)
    gap = float(b.mean() - a.mean())
    d = abs(gap) / pooled if pooled > 0 else (math.inf if gap != 0 else 0.0)
    # best threshold accuracy over the sorted projections, either orientation
    order = torch.argsort(proj)
    is_b = (values[order] == classes[1]).float()
    n = len(proj)
    below_b = torch.cat([torch.zeros(1), torch.cumsum(is_b, 0)])  # b's at or below each cut
    below_a = torch.arange(n + 1).float() - below_b
    acc1 = (below_a + (is_b.sum() - below_b)) / n  # a below, b above
    acc = float(torch.maximum(acc1, 1 - acc1).max())
    return Separation(name, d, gap, (float(a.mean()), float(b.mean())), (sa, sb), acc, proj, values)


# ----------------------------------------------------------------------------------------------------------------
# the baselines a direction's norms and effects are compared with


@dataclass(frozen=True)
class NormBaseline:
    """``|v_row|`` and ``|v_null|`` of ``n`` random unit vectors (uniform on the sphere): their mean and the
    central 95% range (2.5% and 97.5% quantiles). A learned direction whose ``|v_row|`` lies inside the range has
    no more of itself in the readout's rowspace than chance (``|v_row|^2`` of a random vector is about
    rank / d)."""

    row_mean: float
    row_low: float
    row_high: float
    null_mean: float
    null_low: float
    null_high: float
    n: int
    rank: int
    dim: int

    def to_json(self) -> dict:
        return dict(row=dict(mean=self.row_mean, low=self.row_low, high=self.row_high),
                    null=dict(mean=self.null_mean, low=self.null_low, high=self.null_high), n=self.n, rank=self.rank,
                    dim=self.dim)

    def row_interval(self) -> intervals.Interval:
        """The random ``|v_row|`` as an :class:`~codecircuits.intervals.Interval` (mean, 95% range; a range over
        random vectors, not a bootstrap interval)."""
        return intervals.Interval(self.row_mean, self.row_low, self.row_high, self.n)

    def null_interval(self) -> intervals.Interval:
        return intervals.Interval(self.null_mean, self.null_low, self.null_high, self.n)


def rowspace_basis(readout: Float[torch.Tensor, "d k"], *, rtol: float = 1e-5) -> torch.Tensor:
    """``[d, rank]`` orthonormal basis of the column space of ``readout`` (the part of the activation space that
    reaches the output); :func:`rowspace_split` projects on it."""
    readout = readout.detach().float().cpu()
    U, S, _ = torch.linalg.svd(readout, full_matrices=False)
    rank = int((S > rtol * S.max()).sum()) if S.numel() else 0
    return U[:, :rank]


def random_norm_baseline(readout: Float[torch.Tensor, "d k"], *, n: int = 2000, seed: int = 0) -> NormBaseline:
    """:class:`NormBaseline` of ``n`` seeded random unit vectors against ``readout``'s rowspace."""
    if n < 2:
        raise InputError(f"The norm baseline needs at least 2 random vectors, got n={n}.")
    Q = rowspace_basis(readout)
    d = Q.shape[0]
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    row = (x @ Q.double()).norm(dim=1)
    null = (1 - row**2).clamp_min(0).sqrt()
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    rl, rh = torch.quantile(row, q).tolist()
    nl, nh = torch.quantile(null, q).tolist()
    return NormBaseline(float(row.mean()), rl, rh, float(null.mean()), nl, nh, n, int(Q.shape[1]), d)


def random_rowspace_direction(readout: Float[torch.Tensor, "d k"], *, seed: int = 0) -> torch.Tensor:
    """A seeded random unit vector inside ``readout``'s rowspace (the control for the rowspace-only patch)."""
    Q = rowspace_basis(readout)
    z = torch.randn(Q.shape[1], generator=torch.Generator().manual_seed(seed))
    v = Q @ z
    return v / v.norm()


def rowspace_fraction(das: PatchResult, rowspace: PatchResult) -> intervals.Interval:
    """The share of the 1-D patch's effect the rowspace-only patch keeps, ``(LD_clean - LD_row) / (LD_clean -
    LD_das)`` over the mean logit differences (= FLDD_row / FLDD_das), with its 95% bootstrap interval over pairs
    (the three per-pair logit differences resampled together)."""
    if not torch.equal(das.ld_clean, rowspace.ld_clean):
        raise InputError("The two patches must be of the same pairs (their clean logit differences differ).")

    return bootstrap_rows(share_rows, das.ld_clean, das.ld_patched, rowspace.ld_patched)


# ----------------------------------------------------------------------------------------------------------------
# the verdict rule


@dataclass(frozen=True)
class Rule:
    """The thresholds of :func:`decide` (ours: the paper gives checks, not numbers).

    Attributes:
        min_effect: FLDD points a patch must move the answer by to count (its interval's lower end above it, and
            above the random direction's upper end).
        min_cohens_d: separation of clean activations that counts as carrying the feature.
        min_fraction: share of the 1-D effect the rowspace-only patch must keep for the rowspace part to carry it.
        min_generalisation: held-out FLDD over training FLDD below which the direction does not generalise.
        quiet_full: FLDD below which the full-component patch "does little" (the paper's MLP8: -8%).
    """

    min_effect: float = 10.0
    min_cohens_d: float = 1.0
    min_fraction: float = 0.5
    min_generalisation: float = 0.5
    quiet_full: float = 50.0


RULE = Rule()

#: the verdicts :func:`decide` gives
VERDICTS = ("faithful", "illusion", "inconclusive", "no effect")


def decide(
    *,
    effect: intervals.Interval,
    train_effect: float,
    control: intervals.Interval,
    separation: intervals.Interval,
    full: intervals.Interval,
    fraction: intervals.Interval | None = None,
    row_separation: intervals.Interval | None = None,
    rule: Rule = RULE,
) -> tuple[str, tuple[str, ...], dict]:
    """The verdict on one 1-D direction from the intervals of its checks, by a fixed rule.

    ``effect``: held-out FLDD of the 1-D patch; ``train_effect``: its FLDD on the training pairs; ``control``: a
    random direction's held-out FLDD; ``separation``: Cohen's d of clean held-out activations along the direction;
    ``full``: the full-component patch's FLDD; ``fraction`` / ``row_separation``: the rowspace-only patch's share
    of the effect (:func:`rowspace_fraction`) and Cohen's d along ``v_row`` (only where the activation has a linear
    readout, an MLP's ``hook_post``).

    1. **no effect** unless the effect's interval lies above ``min_effect`` and above the control's interval.
    2. With a readout, the rowspace part is **dormant** when the rowspace-only patch keeps less than
       ``min_fraction`` of the effect (the fraction's whole interval below it) or the clean activations do not
       separate along ``v_row`` (d's whole interval below ``min_cohens_d``): verdict **illusion** -- the patch's
       effect does not come from variation the model has along the causally connected part.
    3. **faithful** when the direction generalises (held-out FLDD >= ``min_generalisation`` x training FLDD),
       clean activations separate along it (d's interval above ``min_cohens_d``), and, with a readout, the
       rowspace part is *active*: the fraction's interval lies at or above ``min_fraction`` and d along ``v_row``
       above ``min_cohens_d``.
    4. Otherwise **inconclusive** (an interval straddles a threshold, or the direction does not generalise).

    Returns ``(verdict, reasons, flags)``: a sentence per check that did not come out "faithful", and flags
    ``exceeds_component`` (the full patch is quiet -- its interval below ``quiet_full`` -- and the 1-D effect's
    interval lies above the full patch's: the paper's first red flag), ``dormant``, ``active``, ``generalises``.
    """
    r = rule
    reasons: list[str] = []
    exceeds = full.below(r.quiet_full) and effect.above(full.high)
    generalises = effect.estimate >= r.min_generalisation * train_effect
    flags = dict(exceeds_component=bool(exceeds), dormant=False, active=False, generalises=bool(generalises))
    if exceeds:
        reasons.append(
            f"the 1-D patch does more than patching the whole component (FLDD {effect.format(1)}% vs {full.format(1)}%)"
        )
    if not effect.above(max(r.min_effect, control.high)):
        reasons.insert(
            0,
            f"the patch does not move the answer beyond {r.min_effect:g} FLDD points and a random direction "
            f"(held-out FLDD {effect.format(1)}%, random {control.format(1)}%)",
        )
        return "no effect", tuple(reasons), flags
    if not generalises:
        reasons.append(
            f"it does not generalise: FLDD {effect.estimate:.1f}% on held-out prompts against {train_effect:.1f}% "
            "in training"
        )
    if not separation.above(r.min_cohens_d):
        reasons.append(f"clean activations do not clearly separate along it by feature value (d {separation.format()})")
    if fraction is not None:
        row_d = row_separation
        dormant = fraction.below(r.min_fraction) or (row_d is not None and row_d.below(r.min_cohens_d))
        active = (not fraction.low < r.min_fraction) and (row_d is not None and row_d.above(r.min_cohens_d))
        flags.update(dormant=bool(dormant), active=bool(active))
        if fraction.below(r.min_fraction):
            reasons.append(
                f"the rowspace-only patch keeps {fraction.format()} of the effect, all of the interval below "
                f"{r.min_fraction:g}"
            )
        elif fraction.low < r.min_fraction:
            reasons.append(
                f"the rowspace-only patch keeps {fraction.format()} of the effect: the interval straddles {r.min_fraction:g}"
            )
        if row_d is not None and not row_d.above(r.min_cohens_d):
            reasons.append(f"clean activations separate little along the rowspace part (d {row_d.format()})")
        if dormant:
            return "illusion", tuple(reasons), flags
        ok = active and generalises and separation.above(r.min_cohens_d)
    else:
        ok = generalises and separation.above(r.min_cohens_d)
    return ("faithful" if ok else "inconclusive"), tuple(reasons), flags


# ----------------------------------------------------------------------------------------------------------------
# the checks of one direction (per DAS seed) and of one hook


@dataclass(frozen=True)
class SeedCheck:
    """The checks of one direction (one DAS seed) at a hook.

    Attributes:
        seed: the DAS seed (``None`` for a given direction).
        direction: the direction.
        row_norm, null_norm: ``|v_row|``, ``|v_null|`` (``nan`` without a readout).
        patches: ``das/train``, ``das/test`` and (with a readout) ``rowspace/test``.
        separation: Cohen's d of clean held-out activations along ``v`` (and ``v_row``, ``v_null``).
        fraction: the rowspace-only patch's share of the effect (:func:`rowspace_fraction`), or ``None``.
        verdict, reasons, flags: :func:`decide`'s answer.
    """

    seed: int | None
    direction: Direction
    row_norm: float
    null_norm: float
    patches: dict[str, PatchResult]
    separation: dict[str, Separation]
    fraction: intervals.Interval | None
    verdict: str
    reasons: tuple[str, ...]
    flags: dict

    def to_dict(self) -> dict:
        return dict(seed=self.seed, verdict=self.verdict, reasons=list(self.reasons), flags=self.flags,
                    row_norm=self.row_norm, null_norm=self.null_norm,
                    fraction=self.fraction.to_json() if self.fraction else None,
                    patches={k: {**v.summary(), "intervals": v.intervals()} for k, v in self.patches.items()},
                    separation={k: v.summary() for k, v in self.separation.items()},
                    das_losses=list(self.direction.losses))

    def row(self) -> dict:
        """The seed as one table row of text: its verdict, its DAS patch's FLDD (held-out, with the interval, and
        training), the rowspace share, Cohen's d along v and v_row, the norms and the interchange accuracies."""
        das, v_row = self.patches["das/test"], self.separation.get("v_row")
        return {
            "seed": self.seed,
            "verdict": self.verdict,
            "FLDD DAS (held-out)": das.fldd_interval.format(1),
            "FLDD DAS (train)": round(self.patches["das/train"].fldd, 1),
            "rowspace share": self.fraction.format() if self.fraction else "—",
            "d along v": self.separation["v"].cohens_d_interval.format(1),
            "d along v_row": v_row.cohens_d_interval.format(1) if v_row else "—",
            "|v_row|": round(self.row_norm, 3),
            "|v_null|": round(self.null_norm, 3),
            "IIA (2 tokens)": das.accuracy_interval.format(),
            "IIA (vocabulary)": das.accuracy_vocab_interval.format(),
        }


@dataclass(frozen=True)
class IllusionReport:
    """The illusion checks of METHODS §5 for the learned directions (one per DAS seed) at one hook.

    Attributes:
        hook_name: where the directions live.
        direction: the first seed's direction (the headline one).
        patches: the first seed's patches and the shared ones, keyed ``"<object>/<split>"``: ``full``, ``das``,
            ``rowspace``, ``nullspace``, ``mean_difference``, ``random`` (a random unit direction: the control of
            the same norm), ``random_rowspace`` (a random unit direction in the rowspace: the rowspace patch's
            control); splits ``train`` (``das`` only unless ``all_on_train``) and ``test``.
        row_norm, null_norm: the first seed's ``|v_row|`` and ``|v_null|`` (``nan`` without a linear readout).
        separation: clean-activation separation (held-out prompts) along the first seed's ``v``, ``v_row``,
            ``v_null``, the difference of means and the two random directions.
        verdict: the verdict every seed got (:func:`decide`), or ``"seeds disagree"``.
        reasons: the first seed's reasons.
        settings: thresholds and training settings.
        seeds: one :class:`SeedCheck` per seed.
        norm_baseline: ``|v_row|`` / ``|v_null|`` of random unit vectors (:func:`random_norm_baseline`) or ``None``.
    """

    hook_name: str
    direction: Direction
    patches: dict[str, PatchResult]
    row_norm: float
    null_norm: float
    separation: dict[str, Separation]
    verdict: str
    reasons: tuple[str, ...]
    settings: dict
    seeds: tuple[SeedCheck, ...] = ()
    norm_baseline: NormBaseline | None = None

    @property
    def verdicts(self) -> tuple[str, ...]:
        """The verdict of each seed."""
        return tuple(c.verdict for c in self.seeds)

    @property
    def fraction(self) -> intervals.Interval | None:
        """The first seed's rowspace fraction."""
        return self.seeds[0].fraction if self.seeds else None

    @property
    def flags(self) -> dict:
        return self.seeds[0].flags if self.seeds else {}

    def fldd(self, key: str) -> float:
        return self.patches[key].fldd

    def over_seeds(self, key: str = "das/test") -> dict:
        """The spread over seeds of a per-seed number: ``key`` is a patch (its FLDD), ``"fraction"``,
        ``"row_norm"``, ``"null_norm"`` or ``"d:<direction>"`` (Cohen's d); mean, min, max and the values."""
        vals = []
        for c in self.seeds:
            if key == "fraction":
                vals.append(c.fraction.estimate if c.fraction else float("nan"))
            elif key in ("row_norm", "null_norm"):
                vals.append(getattr(c, key))
            elif key.startswith("d:"):
                sep = c.separation.get(key[2:])
                vals.append(sep.cohens_d if sep else float("nan"))
            else:
                vals.append(c.patches[key].fldd)
        t = torch.tensor(vals, dtype=torch.float64)
        return dict(mean=float(t.mean()), min=float(t.min()), max=float(t.max()), values=vals)

    def to_dataframe(self) -> pd.DataFrame:
        rows = []
        for key, r in self.patches.items():
            obj, split = key.split("/")
            rows.append(
                dict(hook=self.hook_name, patched=obj, split=split,
                     **{k: v for k, v in r.summary().items() if k not in ("name", "hook")})
            )
        return pd.DataFrame(rows)

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` rows of :meth:`to_dataframe` (patched object and split) with the largest signed FLDD, largest
        first."""
        return self.to_dataframe().sort_values("fldd", ascending=False, kind="stable").head(k).reset_index(drop=True)

    def plot(self, k: int = 20) -> figures.Figure:
        """The patches (:meth:`top`, at most ``k``) as bars of their FLDD."""
        return figures.top_bars(self.top(k), "fldd", label=["patched", "split"],
                                title=f"illusion checks at {self.hook_name}: FLDD (%)")

    def headline(self) -> dict[str, float]:
        """The headline numbers (first seed): FLDD of the full component (``fldd_full``) and of the DAS direction
        on training and held-out pairs (``fldd_das_train``, ``fldd_das_test``), its interchange accuracy over the
        answers and over the vocabulary (``iia_das_test``, ``iia_vocab_das_test``), and with a readout the rowspace
        part's FLDD and share of the effect and the norms of both parts."""
        das = self.patches["das/test"]
        m = {
            "fldd_full": self.fldd("full/test"),
            "fldd_das_train": self.fldd("das/train"),
            "fldd_das_test": self.fldd("das/test"),
            "iia_das_test": das.interchange_accuracy,
            "iia_vocab_das_test": das.interchange_accuracy_vocab,
        }
        if "rowspace/test" in self.patches:
            m["fldd_rowspace_test"] = self.fldd("rowspace/test")
            m["rowspace_fraction"] = self.fraction.estimate
            m["v_row_norm"] = self.row_norm
            m["v_null_norm"] = self.null_norm
        return m

    def summary(self) -> dict:
        """The report as one table row of text: where, the verdict, the held-out FLDD of the direction, of the full
        component and of a random direction, the rowspace share, Cohen's d along ``v_row`` and the reasons."""
        v_row = self.separation.get("v_row")
        return {
            "hook": self.hook_name,
            "verdict": self.verdict,
            "FLDD (held-out)": self.patches["das/test"].fldd_interval.format(1),
            "FLDD full": self.patches["full/test"].fldd_interval.format(1),
            "FLDD random": self.patches["random/test"].fldd_interval.format(1),
            "rowspace share": self.fraction.format() if self.fraction else "—",
            "d along v_row": v_row.cohens_d_interval.format(1) if v_row else "—",
            "reasons": "; ".join(self.reasons) or "—",
        }

    def fldd_by_group(self, groups) -> dict[str, dict]:
        """FLDD of every held-out patch on each group of the held-out pairs (``groups``: one name per pair, e.g.
        :attr:`PatchPairs.groups`), from the per-pair logit differences: ``{group: {"pairs": n, object: FLDD}}``."""
        groups = np.asarray(groups)
        out = {}
        for g in dict.fromkeys(groups.tolist()):
            mask = torch.as_tensor(groups == g)
            row: dict = {"pairs": int(mask.sum())}
            for key, res in self.patches.items():
                obj, split = key.split("/")
                if split == "test":
                    row[obj] = 100.0 * (1.0 - float(res.ld_patched[mask].mean()) / float(res.ld_clean[mask].mean()))
            out[g] = row
        return out

    def to_dict(self) -> dict:
        return dict(
            hook=self.hook_name,
            verdict=self.verdict,
            verdicts=list(self.verdicts),
            reasons=list(self.reasons),
            row_norm=self.row_norm,
            null_norm=self.null_norm,
            fraction=self.fraction.to_json() if self.fraction else None,
            norm_baseline=self.norm_baseline.to_json() if self.norm_baseline else None,
            patches={k: {**v.summary(), "intervals": v.intervals()} for k, v in self.patches.items()},
            separation={k: v.summary() for k, v in self.separation.items()},
            seeds=[c.to_dict() for c in self.seeds],
            over_seeds={k: self.over_seeds(k) for k in ("das/test", "fraction", "row_norm", "null_norm")}
            if self.seeds and self.fraction is not None
            else ({"das/test": self.over_seeds("das/test")} if self.seeds else {}),
            das_losses=list(self.direction.losses),
            settings=self.settings,
        )


def illusion_checks(
    model,
    train: PatchPairs,
    test: PatchPairs,
    hook_name: str,
    *,
    direction: Direction | None = None,
    readout: torch.Tensor | None = None,
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 1e-2,
    seed: int = 0,
    seeds: tuple[int, ...] | None = None,
    rule: Rule = RULE,
    min_effect: float | None = None,
    min_cohens_d: float | None = None,
    all_on_train: bool = False,
    n_random_vectors: int = 2000,
    reuse: IllusionReport | None = None,
    progress: bool = True,
) -> IllusionReport:
    """Learn (or take) 1-D directions at ``hook_name`` on ``train`` and run the illusion checks on ``test``.

    One DAS direction per seed in ``seeds`` (default ``(seed,)``); ``direction`` checks a given direction instead.
    ``readout`` is the matrix whose column space is the causally connected part of the activation space; by
    default the MLP output weights for ``mlp.hook_post`` and none elsewhere (the split is then skipped). Each
    direction's verdict is :func:`decide` with ``rule`` (``min_effect`` / ``min_cohens_d`` override its fields).
    On the training pairs only the DAS patches are run unless ``all_on_train``. ``reuse``: an earlier report of
    the same hook on the same pairs whose full-component patch, controls and norm baseline are taken over (e.g. to
    check a control direction beside the DAS ones).

    The steps: the clean runs of both splits (:class:`_HookChecks`), the shared patches and controls
    (:meth:`_HookChecks.controls`), the checks of each direction (:meth:`_HookChecks.check`) and the report of
    them all (:func:`_report`).
    """
    check_pairs(model, train, hook_name)
    check_pairs(model, test, hook_name)
    if min_effect is not None:
        rule = replace(rule, min_effect=float(min_effect))
    if min_cohens_d is not None:
        rule = replace(rule, min_cohens_d=float(min_cohens_d))
    if direction is not None and direction.hook_name != hook_name:
        raise InputError(f"The direction lives at {direction.hook_name}, not {hook_name}.")
    seeds = tuple(seeds) if seeds is not None else (seed,)
    if direction is None and not seeds:
        raise InputError("Give at least one DAS seed (seeds=(0,)) or a direction.")
    hc = _HookChecks(model, train, test, hook_name, readout_matrix(model, hook_name) if readout is None else readout)
    bar = tqdm(total=6 + 4 * max(1, len(seeds)), desc=f"checks {hook_name}", disable=not progress, leave=False)
    first_seed = seeds[0] if seeds else seed
    shared, control_sep, baseline = hc.controls(reuse, first_seed, all_on_train, n_random_vectors)
    bar.update(4)
    checks: list[SeedCheck] = []
    first_extra: dict[str, PatchResult] = {}
    for i, s in enumerate(seeds if direction is None else (None,)):
        d = direction
        if d is None:
            d = fit_direction(
                model, train, hook_name, epochs=epochs, batch_size=batch_size, lr=lr, seed=s, progress=progress
            )
        bar.update(1)
        check, extra = hc.check(s, d, shared, rule, extra=i == 0, all_on_train=all_on_train)
        checks.append(check)
        first_extra = first_extra or extra
        bar.update(3)
    bar.close()
    settings = dict(epochs=epochs, batch_size=batch_size, lr=lr, seeds=list(seeds) if direction is None else None,
                    rule=rule.__dict__, n_train=len(train), n_test=len(test))
    return _report(hook_name, checks, shared, first_extra, control_sep, settings, baseline)


class _HookChecks:
    """The steps of :func:`illusion_checks` at one hook: the clean runs of both splits (each split's source
    activations, clean logits and base residuals, computed once and shared by every patch), a patch of either
    split, and the separation of the held-out prompts' clean activations along vectors."""

    def __init__(self, model, train: PatchPairs, test: PatchPairs, hook_name: str, readout: torch.Tensor | None):
        self.model, self.hook_name, self.readout, self.n_test = model, hook_name, readout, len(test)
        layer = start_layer(model, hook_name)
        self.data = {}
        for split, pairs in (("train", train), ("test", test)):
            base_resid = base_residual(model, pairs.base_tokens, layer)
            self.data[split] = dict(source=activations(model, hook_name, pairs.source_tokens, pairs.source_positions),
                                    clean=patched_logits(model, pairs, hook_name, None, 1.0, 64, base_resid=base_resid),
                                    base_resid=base_resid, pairs=pairs)
        self.train = train
        self.test_acts, self.test_values = clean_activations(model, test, hook_name)

    def patch(self, split: str, obj: str, vec) -> PatchResult:
        d = self.data[split]
        return patch(self.model, d["pairs"], self.hook_name, vec, name=obj, clean=d["clean"], source=d["source"],
                     base_resid=d["base_resid"])

    def separation(self, vectors: dict[str, torch.Tensor]) -> dict[str, Separation]:
        return {
            k: projection_separation(k, self.test_acts, self.test_values, v.detach().float().cpu())
            for k, v in vectors.items()
        }

    def controls(self, reuse: IllusionReport | None, seed: int, all_on_train: bool, n_random_vectors: int):
        """The patches every direction is compared with -- the full component, the difference of class means, a
        random direction (``seed + 1``) and, with a readout, a random rowspace direction (``seed + 2``) -- the
        controls' separation and the norm baseline; taken over from ``reuse`` when given."""
        if reuse is not None:  # the full patch and the controls of an earlier report of the same hook and pairs
            if reuse.hook_name != self.hook_name or reuse.patches["full/test"].n_pairs != self.n_test:
                raise InputError(f"reuse must be a report of {self.hook_name} on the same held-out pairs.")
            names = ("full", "mean_difference", "random", "random_rowspace")
            shared = {k: r for k, r in reuse.patches.items() if k.split("/")[0] in names}
            return shared, {k: r for k, r in reuse.separation.items() if k in names}, reuse.norm_baseline
        shared = {"full/test": self.patch("test", "full", None)}
        if all_on_train:
            shared["full/train"] = self.patch("train", "full", None)
        md = mean_difference_direction(self.model, self.train, self.hook_name).vector
        rand = random_direction(self.model, self.hook_name, seed=seed + 1).vector
        shared["mean_difference/test"] = self.patch("test", "mean_difference", md)
        shared["random/test"] = self.patch("test", "random", rand)
        controls = {"mean_difference": md, "random": rand}
        baseline = None
        if self.readout is not None:
            rand_row = random_rowspace_direction(self.readout, seed=seed + 2)
            shared["random_rowspace/test"] = self.patch("test", "random_rowspace", rand_row)
            controls["random_rowspace"] = rand_row
            baseline = random_norm_baseline(self.readout, n=n_random_vectors, seed=0)
        return shared, self.separation(controls), baseline

    def check(self, seed, d: Direction, shared: dict, rule: Rule, *, extra: bool, all_on_train: bool):
        """One direction's :class:`SeedCheck` (its patches, its rowspace split and fraction, its separation and
        :func:`decide`'s verdict), and, when ``extra`` (the first direction), the patches only the report keeps:
        the nullspace part's (and, ``all_on_train``, the rowspace part's on the training pairs)."""
        v = d.vector
        patches = {"das/train": self.patch("train", "das", v), "das/test": self.patch("test", "das", v)}
        vectors = {"v": v}
        row_norm = null_norm = float("nan")
        fraction = row_sep = None
        first_extra: dict[str, PatchResult] = {}
        if self.readout is not None:
            v_row, v_null = rowspace_split(v, self.readout)
            row_norm, null_norm = float(v_row.norm()), float(v_null.norm())
            vectors["v_row"], vectors["v_null"] = v_row, v_null
            if row_norm > 1e-6:
                patches["rowspace/test"] = self.patch("test", "rowspace", v_row / row_norm)
                fraction = rowspace_fraction(patches["das/test"], patches["rowspace/test"])
            else:
                fraction = intervals.Interval(0.0, 0.0, 0.0, self.n_test)
            if extra and null_norm > 1e-6:
                first_extra["nullspace/test"] = self.patch("test", "nullspace", v_null / null_norm)
            if extra and all_on_train and row_norm > 1e-6:
                first_extra["rowspace/train"] = self.patch("train", "rowspace", v_row / row_norm)
        separation = self.separation(vectors)
        if self.readout is not None:
            row_sep = separation["v_row"].cohens_d_interval if row_norm > 1e-6 else intervals.Interval(0.0, 0.0, 0.0, 0)
        verdict, reasons, flags = decide(effect=patches["das/test"].fldd_interval,
                                         train_effect=patches["das/train"].fldd,
                                         control=shared["random/test"].fldd_interval,
                                         separation=separation["v"].cohens_d_interval,
                                         full=shared["full/test"].fldd_interval, fraction=fraction,
                                         row_separation=row_sep, rule=rule)
        check = SeedCheck(seed, d, row_norm, null_norm, patches, separation, fraction, verdict, reasons, flags)
        return check, first_extra


def _report(hook_name, checks, shared, first_extra, control_sep, settings, baseline) -> IllusionReport:
    """The :class:`IllusionReport` of the directions' ``checks``: the first's patches and separation beside the
    shared ones, and the verdict every direction got (else ``"seeds disagree"``)."""
    first = checks[0]
    patches = {"full/test": shared["full/test"]}
    patches.update(first.patches)
    patches.update(first_extra)
    patches.update({k: r for k, r in shared.items() if k != "full/test"})
    separation = dict(first.separation)
    separation.update(control_sep)
    verdict = first.verdict if len({c.verdict for c in checks}) == 1 else "seeds disagree"
    return IllusionReport(hook_name, first.direction, patches, first.row_norm, first.null_norm, separation, verdict,
                          first.reasons, settings, tuple(checks), baseline)


__all__ = [
    "RULE",
    "VERDICTS",
    "IllusionReport",
    "NormBaseline",
    "Rule",
    "SeedCheck",
    "Separation",
    "cohens_d",
    "decide",
    "illusion_checks",
    "projection_separation",
    "random_norm_baseline",
    "random_rowspace_direction",
    "readout_matrix",
    "rowspace_basis",
    "rowspace_fraction",
    "rowspace_split",
]
