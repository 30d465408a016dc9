"""The SGD baseline of MINT: fine-tune the MLP output weights of the same layers on a case's wrong tokens."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..core.runner import resid_at, run_from
from ..errors import InputError
from .cases import RepairCase, ResidCache
from .edits import WeightSnapshot, mlp_out_module, upper_layers


@dataclass(frozen=True)
class CaseOutcome:
    """The SGD baseline on one case: success, steps, time, and how many weights it changed."""

    case: RepairCase
    success: bool
    steps: int
    seconds: float
    changed_rows: int  # value vectors (rows of W_out) that changed
    predicted_after: tuple[int, ...]
    settings: dict = field(default_factory=dict)


def sgd_repair(
    model,
    case: RepairCase,
    *,
    layers: str | Sequence[int] = "half",
    lr: float = 1e-2,
    steps: int = 10,
    snapshot: WeightSnapshot | None = None,
) -> tuple[CaseOutcome, WeightSnapshot]:
    """Baseline: SGD on the MLP output weights of ``layers`` with the cross-entropy of the case's wrong tokens
    (teacher-forced), ``steps`` steps at ``lr`` (MINT's baseline: lr 1e-2, ~10 steps). Only the layers from
    ``min(layers)`` on run.

    The model is left fine-tuned; the returned snapshot's ``restore()`` puts the weights back exactly.
    """
    if steps < 0 or lr < 0:
        raise InputError("steps and lr must be non-negative.")
    layer_list = upper_layers(model, layers)
    snap = snapshot or WeightSnapshot(model, layer_list)
    params = [mlp_out_module(model, layer).weight for layer in layer_list]
    all_params = list(model.parameters())
    all_flags = [p.requires_grad for p in all_params]
    t0 = time.perf_counter()
    start = layer_list[0]
    resid = resid_at(model, case.tokens, start)  # the layers below are frozen: run only the trained ones
    pos = torch.tensor([case.positions[i] for i in case.errors])
    tgt = torch.tensor([case.reference[i] for i in case.errors], device=model.cfg.device)
    try:
        for p in all_params:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                logits = run_from(model, resid, start)[0, pos].float()
                torch.nn.functional.cross_entropy(logits, tgt).backward()
                opt.step()
    finally:
        for p, f in zip(all_params, all_flags):
            p.requires_grad_(f)
        for p in params:
            p.grad = None
    with torch.no_grad():
        after = run_from(model, resid, start).argmax(-1)[0].cpu()
    pred = tuple(int(after[p]) for p in case.positions)
    out = CaseOutcome(case=case, success=pred == tuple(case.reference), steps=steps, seconds=time.perf_counter() - t0,
                      changed_rows=snap.changed_rows(), predicted_after=pred,
                      settings=dict(layers=layers if isinstance(layers, str) else layer_list, lr=lr, steps=steps))
    return out, snap


def sgd_sweep(
    model,
    cases: Sequence[RepairCase],
    *,
    layers: str | Sequence[int] = "half",
    lrs: Sequence[float] = (1e-2,),
    steps: Sequence[int] = (10,),
    cache: ResidCache | None = None,
    progress: bool = True,
) -> tuple[list[dict], dict]:
    """The SGD baseline's setting chosen on ``cases``: each (lr, steps) of the grid scored (one trajectory per lr,
    scored at each step count; SGD without momentum has no state, so 5 steps then 5 more are 10 steps). Returns one
    row per setting (share of lines repaired, mean log p of the lines' reference tokens) and the choice: most lines
    repaired, then the highest reference log p (the setting that pushes hardest toward the repair, so the baseline
    is not handicapped), then the gentlest (smallest lr x steps). The weights are restored after each case."""
    from tqdm.auto import tqdm

    cache = cache or ResidCache(model, 0)
    layer_list = upper_layers(model, layers)
    steps = sorted(set(int(s) for s in steps))
    scores = {(lr, s): [] for lr in lrs for s in steps}
    logps = {(lr, s): [] for lr in lrs for s in steps}
    bar = tqdm(total=len(cases) * len(lrs), desc="SGD sweep", disable=not progress, leave=False)
    for case in cases:
        for lr in lrs:
            snap = WeightSnapshot(model, layer_list)
            done = 0
            for s in steps:
                out, _ = sgd_repair(model, case, layers=layers, lr=lr, steps=s - done, snapshot=snap)
                done = s
                scores[(lr, s)].append(out.success)
                lp = cache.logits(case.tokens)[0].float().log_softmax(-1).cpu()
                logps[(lr, s)].append(float(lp[case.positions, list(case.reference)].mean()))
            snap.restore()
            bar.update(1)
    bar.close()
    rows = [
        {
            "lr": lr,
            "steps": s,
            "cases": len(v),
            "success_rate": float(sum(v) / max(len(v), 1)),
            "reference_logp": float(sum(logps[(lr, s)]) / max(len(v), 1)),
        }
        for (lr, s), v in scores.items()
    ]
    best = min(rows, key=lambda r: (-r["success_rate"], -round(r["reference_logp"], 6), r["lr"] * r["steps"]))
    return rows, dict(best)


__all__ = ["CaseOutcome", "sgd_repair", "sgd_sweep"]
