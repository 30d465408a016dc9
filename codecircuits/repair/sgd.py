"""The SGD baseline of MINT: fine-tune the MLP output weights of the same layers on a case's wrong tokens."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..core.runner import resid_at, run_from
from ..errors import InputError
from .cases import RepairCase
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
    out = CaseOutcome(
        case=case,
        success=pred == tuple(case.reference),
        steps=steps,
        seconds=time.perf_counter() - t0,
        changed_rows=snap.changed_rows(),
        predicted_after=pred,
        settings=dict(layers=layers if isinstance(layers, str) else layer_list, lr=lr, steps=steps),
    )
    return out, snap


__all__ = ["CaseOutcome", "sgd_repair"]
