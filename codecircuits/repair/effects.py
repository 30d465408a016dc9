"""What a repair does beyond its own line: its side effects on other prompts (generalisation to prompts of the
same fix, specificity on unrelated ones, the held-out loss), and repairs made one after another without undoing
(do the earlier fixes hold, do unrelated predictions stay).

Generalisation probes are held-out prompts whose next token is the repaired target (:func:`same_target_probes`);
specificity probes are unrelated lines (:func:`probes_of`); both are measured against the base model's
:func:`evaluate_probes` of the same probes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .cases import Probe, RepairCase, ResidCache, evaluate_probes, heldout_loss, line_fixed
from .edits import WeightSnapshot, upper_layers
from .mint import mint_repair
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


__all__ = ["METHODS", "side_effects", "successive_repairs"]
