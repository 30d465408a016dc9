"""What a repair does beyond its own line: its side effects on other prompts (generalisation to prompts of the
same fix, specificity on unrelated ones, the held-out loss), and repairs made one after another without undoing
(do the earlier fixes hold, do unrelated predictions stay), each case repaired by MINT and by the SGD baseline,
and bootstrap intervals over cases of all of it.

Generalisation probes are held-out prompts whose next token is the repaired target (:func:`same_target_probes`);
specificity probes are unrelated lines (:func:`probes_of`); both are measured against the base model's
:func:`evaluate_probes` of the same probes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch

from .cases import Probe, RepairCase, ResidCache, evaluate_probes, heldout_loss, line_fixed
from .edits import WeightSnapshot, logits_digest, upper_layers
from .mint import RepairResult, mint_repair
from .sgd import sgd_repair

#: the repair methods :func:`successive_repairs` runs
METHODS = ("mint", "sgd")


def side_effects(
    model,
    gen: Sequence[Probe],
    spec: Sequence[Probe],
    heldout: torch.Tensor,
    base_gen: dict | None,
    base_spec: dict,
    base_loss: float,
    cache: ResidCache,
) -> dict[str, float]:
    """The model as it is now (after a repair) against the base model's evaluations (``base_gen``, ``base_spec``,
    ``base_loss``): on the generalisation probes ``gen``, the mean change of log p(target), accuracy before and
    after, and the share of the wrong ones made right (``gen_fixed``; NaN where none was wrong or there are no
    probes); on the specificity probes ``spec``, the share whose greedy prediction is unchanged, accuracy before and
    after, the mean (absolute) change of log p(target); and the change of the loss on ``heldout``."""
    out: dict[str, float] = {}
    if gen:
        ev = evaluate_probes(model, gen, cache=cache)
        out["gen_n"] = len(gen)
        out["gen_delta_logp"] = float((ev["logp"] - base_gen["logp"]).mean())
        out["gen_acc_before"] = float(base_gen["correct"].float().mean())
        out["gen_acc_after"] = float(ev["correct"].float().mean())
        wrong_before = ~base_gen["correct"]
        out["gen_n_wrong"] = int(wrong_before.sum())
        out["gen_fixed"] = float(ev["correct"][wrong_before].float().mean()) if wrong_before.any() else math.nan
    else:
        nan = math.nan
        out.update(gen_n=0, gen_delta_logp=nan, gen_acc_before=nan, gen_acc_after=nan, gen_n_wrong=0, gen_fixed=nan)
    ev = evaluate_probes(model, spec, cache=cache)
    out["spec_n"] = len(spec)
    out["spec_unchanged"] = float((ev["argmax"] == base_spec["argmax"]).float().mean())
    out["spec_acc_before"] = float(base_spec["correct"].float().mean())
    out["spec_acc_after"] = float(ev["correct"].float().mean())
    out["spec_abs_delta_logp"] = float((ev["logp"] - base_spec["logp"]).abs().mean())
    out["spec_delta_logp"] = float((ev["logp"] - base_spec["logp"]).mean())
    out["heldout_loss_delta"] = heldout_loss(model, heldout, cache=cache) - base_loss
    return out


def repair_both(
    model,
    case: RepairCase,
    *,
    gen: Sequence[Probe],
    spec: Sequence[Probe],
    heldout: torch.Tensor,
    base_gen: dict | None,
    base_spec: dict,
    base_loss: float,
    cache: ResidCache,
    base_digest: str,
    layers: str | Sequence[int] = "half",
    n_candidates: int = 10,
    max_edits: int = 10,
    scale: float = 1.0,
    lr: float = 1e-2,
    steps: int = 10,
) -> tuple[dict, dict, RepairResult]:
    """Repair ``case`` from the base model by MINT, then from the base again by SGD; after each, its
    :func:`side_effects`, then undo it and check that the case's logits are back bit for bit (``base_digest``: the
    base's :func:`logits_digest`). Returns MINT's and SGD's measurements (success, value vectors changed, edit
    steps, seconds, restored, the neurons MINT edited, the side effects) and MINT's result."""

    def measure_and_undo(undo) -> tuple[dict, bool]:
        m = side_effects(model, gen, spec, heldout, base_gen, base_spec, base_loss, cache)
        undo()
        return m, logits_digest(cache.logits(case.tokens)) == base_digest

    res = mint_repair(model, case, layers=layers, n_candidates=n_candidates, max_edits=max_edits, scale=scale)
    m, restored = measure_and_undo(lambda: res.undo(model))
    edited = " ".join(f"L{a}N{b}" for a, b in res.edits.neurons)
    mint = dict(success=res.success, neurons=res.n_neurons, steps=res.n_edits, seconds=res.seconds,
                restored=restored, edited=edited, **m)
    out, snap = sgd_repair(model, case, layers=layers, lr=lr, steps=steps)
    m, restored = measure_and_undo(snap.restore)
    sgd = dict(success=out.success, neurons=out.changed_rows, steps=out.steps, seconds=out.seconds,
               restored=restored, edited="", **m)
    return mint, sgd, res


def successive_repairs(
    model,
    method: str,
    cases: Sequence[RepairCase],
    *,
    spec_probes: Sequence[Probe],
    base_spec: dict,
    heldout: torch.Tensor,
    base_loss: float,
    cache: ResidCache,
    layers: str | Sequence[int] = "half",
    n_candidates: int = 10,
    max_edits: int = 10,
    scale: float = 1.0,
    lr: float = 1e-2,
    steps: int = 10,
    progress: bool = True,
) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """Repair ``cases`` one after another with ``method`` (``"mint"``: :func:`mint_repair` with ``n_candidates``,
    ``max_edits``, ``scale``; ``"sgd"``: :func:`sgd_repair` with ``lr``, ``steps``) without undoing.

    Returns one row per repair made so far (its success and time; how many earlier repaired lines are still fixed;
    the share of unrelated greedy predictions unchanged; the held-out loss change; value vectors changed), and, after
    the last repair, whether each earlier repaired line is still fixed and whether each unrelated prediction is
    unchanged (float64 0/1). The base weights are restored at the end (MINT's edits undone in reverse)."""
    from tqdm.auto import tqdm

    snap = WeightSnapshot(model, upper_layers(model, layers))
    results, rows, repaired = [], [], []
    earlier, ev = [], None
    for i, case in enumerate(tqdm(cases, desc=f"successive {method}", disable=not progress, leave=False)):
        if method == "mint":
            res = mint_repair(
                model, case, layers=layers, n_candidates=n_candidates, max_edits=max_edits, scale=scale
            )
            results.append(res)
            ok, seconds = res.success, res.seconds
        else:
            out, _ = sgd_repair(model, case, layers=layers, lr=lr, steps=steps, snapshot=snap)
            ok, seconds = out.success, out.seconds
        repaired.append(ok)
        earlier = [line_fixed(cache, cases[j]) for j in range(i) if repaired[j]]
        ev = evaluate_probes(model, spec_probes, cache=cache)
        rows.append(
            {
                "method": method,
                "repairs": i + 1,
                "success": bool(ok),
                "seconds": seconds,
                "successes_so_far": int(sum(repaired)),
                "earlier_repaired": len(earlier),
                "earlier_still_fixed": int(sum(earlier)),
                "retained": float(sum(earlier) / len(earlier)) if earlier else math.nan,
                "spec_unchanged": float((ev["argmax"] == base_spec["argmax"]).float().mean()),
                "heldout_loss_delta": heldout_loss(model, heldout, cache=cache) - base_loss,
                "changed_rows": snap.changed_rows(),
            }
        )
    # after the last repair: the earlier repaired lines and the unrelated predictions as its row measured them
    if ev is None:  # no cases: the base itself
        ev = evaluate_probes(model, spec_probes, cache=cache)
    final_spec = (ev["argmax"] == base_spec["argmax"]).double()
    if method == "mint":
        for res in reversed(results):  # undo only: the caller can then check the base is back bit for bit
            res.undo(model)
    else:
        snap.restore()
    return rows, torch.tensor(earlier, dtype=torch.float64), final_spec


def repair_intervals(
    rows: Sequence[dict],
    successive: Sequence[dict],
    still: dict[str, torch.Tensor],
    final_spec: dict[str, torch.Tensor],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """95% bootstrap intervals over cases (:mod:`codecircuits.intervals`) of MINT's and SGD's numbers.

    ``rows``: one per case and method (``case``, ``method``, ``task`` and the measurements of :func:`repair_both`);
    ``successive``: the rows of :func:`successive_repairs` of both methods, and per method what they returned after
    the last repair (``still``: earlier fixes held; ``final_spec``: unrelated predictions unchanged). Per method:
    success, value vectors per success, seconds, the side effects, the successive numbers and success per task;
    MINT - SGD paired on the cases where both have the number; MINT's change of log p(target) on same-fix minus
    unrelated prompts. Intervals with no cases are left out."""
    from ..intervals import bootstrap, mean, paired

    B = n_resamples
    df = pd.DataFrame(list(rows))
    mint = df[df.method == "mint"].sort_values("case").reset_index(drop=True)
    sgd = df[df.method == "sgd"].sort_values("case").reset_index(drop=True)

    def col(d, name):
        return torch.tensor(d[name].astype(float).to_numpy(), dtype=torch.float64)

    def nanmean(x):
        x = x[~torch.isnan(x)]
        return x.mean() if x.numel() else torch.tensor(float("nan"))

    def difference(a, b):  # paired, same cases; None where no case has both
        ok = ~(torch.isnan(a) | torch.isnan(b))
        return paired(lambda x, y: (x - y).mean(), a[ok], b[ok], n_resamples=B, seed=seed) if ok.any() else None

    def mean_of(d, name):
        x = col(d, name)
        x = x[~torch.isnan(x)]
        return mean(x, n_resamples=B, seed=seed) if x.numel() else None

    iv = {}
    for m, d in (("mint", mint), ("sgd", sgd)):
        iv[f"{m}_success"] = mean_of(d, "success")
        iv[f"{m}_neurons_per_success"] = bootstrap(
            lambda s, n: nanmean(torch.where(s > 0, n, torch.nan)), col(d, "success"), col(d, "neurons"),
            n_resamples=B, seed=seed,
        )
        iv[f"{m}_seconds"] = mean_of(d, "seconds")
        for k in ("gen_delta_logp", "gen_fixed", "spec_unchanged", "spec_delta_logp", "heldout_loss_delta"):
            iv[f"{m}_{k}"] = mean_of(d, k)
    for k in ("success", "seconds", "gen_delta_logp", "gen_fixed", "spec_unchanged", "heldout_loss_delta"):
        iv[f"mint_minus_sgd_{k}"] = difference(col(mint, k), col(sgd, k))
    g, s = col(mint, "gen_delta_logp"), col(mint, "spec_delta_logp")
    ok = ~torch.isnan(g)  # same-fix minus unrelated change, on the cases with same-fix prompts
    iv["mint_gen_minus_spec_delta_logp"] = (
        paired(lambda x, y: (x - y).mean(), g[ok], s[ok], n_resamples=B, seed=seed) if ok.any() else None
    )
    sr = pd.DataFrame(list(successive))
    for m in METHODS:
        iv[f"{m}_successive_retained"] = mean(still[m], n_resamples=B, seed=seed) if still[m].numel() else None
        iv[f"{m}_successive_spec_unchanged"] = mean(final_spec[m], n_resamples=B, seed=seed)
        iv[f"{m}_successive_success"] = mean(
            torch.tensor(sr[sr.method == m].success.astype(float).to_numpy()), n_resamples=B, seed=seed
        )
    for t in sorted(set(df.task)):
        for m, d in (("mint", mint), ("sgd", sgd)):
            iv[f"{m}_success_{t}"] = mean_of(d[d.task == t], "success")
    return {k: v for k, v in iv.items() if v is not None}


#: the per-case numbers :func:`summarise` averages over the cases that have them (not NaN)
MEANS = (
    "gen_delta_logp",
    "gen_acc_before",
    "gen_acc_after",
    "gen_fixed",
    "spec_unchanged",
    "spec_acc_before",
    "spec_acc_after",
    "heldout_loss_delta",
)


def summarise(rows: Sequence[dict], by: Sequence[str] = ("method",)) -> pd.DataFrame:
    """One row per group of ``rows`` (per case and method, as :func:`repair_intervals` takes them) by the columns
    ``by``: cases, success rate, value vectors and edit steps per success (mean; median of the vectors), seconds per
    case, and the means of :data:`MEANS`."""

    def mean(x) -> float:
        x = pd.Series(x, dtype=float).dropna()
        return float(x.mean()) if len(x) else math.nan

    out = []
    for key, g in pd.DataFrame(list(rows)).groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        ok = g[g.success]
        out.append(
            {
                **dict(zip(by, key)),
                "cases": len(g),
                "success_rate": float(g.success.mean()),
                "neurons_per_success": float(ok.neurons.mean()) if len(ok) else math.nan,
                "median_neurons_per_success": float(ok.neurons.median()) if len(ok) else math.nan,
                "edit_steps_per_success": float(ok.steps.mean()) if len(ok) else math.nan,
                "seconds_per_case": float(g.seconds.mean()),
                **{k: mean(g[k]) for k in MEANS},
            }
        )
    return pd.DataFrame(out)


__all__ = [
    "MEANS",
    "METHODS",
    "repair_both",
    "repair_intervals",
    "side_effects",
    "successive_repairs",
    "summarise",
]
