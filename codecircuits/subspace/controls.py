"""Known answers for the illusion checks: a direction that carries the feature and a planted illusion.

- **positive control** (:func:`probe_direction`): where the whole component carries the feature (its
  full-component patch moves the answer) a linear probe's direction -- the difference of the class means of
  clean activations, fitted on the training prompts -- is a 1-D subspace known to carry it. The checks should call
  it faithful.
- **negative control** (:func:`planted_illusion`): the paper's construction made by hand at an MLP's
  ``hook_post``. ``v = (n + r) / sqrt 2`` with ``n`` the nullspace part of the class-mean difference (it varies
  with the feature but ``W_out`` ignores it) and ``r`` a rowspace direction along which the training prompts'
  activations do not vary at all (orthogonal to their centred span) but which moves the answer (the gradient of
  the answers' logit difference projected there). Patching ``v`` copies the feature's variation along ``n`` onto
  the dormant ``r`` and so moves the output, through a pathway the model never uses on its inputs. The checks
  should call it an illusion.
"""

from __future__ import annotations

import math

import torch

from ..core.interventions import Add, hook
from ..errors import InputError
from .checks import readout_matrix, rowspace_basis, rowspace_split
from .das import Direction, clean_activations, mean_difference_direction, unit_vector
from .pairs import PatchPairs, answer_logits, base_residual, check_pairs, start_layer


def probe_direction(model, pairs: PatchPairs, hook_name: str) -> Direction:
    """The positive control: the difference of class means of clean activations on ``pairs`` (a linear probe's
    direction), kind ``"probe"``."""
    d = mean_difference_direction(model, pairs, hook_name)
    return Direction(d.vector, hook_name, "probe", settings={"fitted_on": len(pairs)})


def answer_gradient(model, pairs: PatchPairs, hook_name: str) -> torch.Tensor:
    """``[d]`` the mean gradient, over the base prompts, of ``logit(answer 1) - logit(answer 0)`` with respect to
    the activation at ``hook_name`` at each base prompt's last token."""
    check_pairs(model, pairs, hook_name)
    layer = start_layer(model, hook_name)
    resid = base_residual(model, pairs.base_tokens, layer)
    d = clean_activations(model, pairs.subset([0]), hook_name)[0].shape[1]
    n, width = pairs.base_tokens.shape
    delta = torch.zeros(n, width, d, device=model.cfg.device, requires_grad=True)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        logits = answer_logits(model, pairs.base_tokens, pairs.base_positions, pairs.answer_ids,
                               [hook(hook_name, Add(delta))], layer=layer, resid=resid)
        (logits[:, 1] - logits[:, 0]).mean().backward()
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    g = delta.grad[torch.arange(n), pairs.base_positions.to(delta.device)]
    return g.sum(0).detach().float().cpu()


def planted_illusion(model, pairs: PatchPairs, hook_name: str, *, readout: torch.Tensor | None = None) -> Direction:
    """The negative control (module docstring): ``(n + r) / sqrt 2`` at an MLP's ``hook_post``, from ``pairs``
    (the training pairs); kind ``"planted"``. Its settings record ``|g·r|``, the gradient's size along ``r``."""
    readout = readout if readout is not None else readout_matrix(model, hook_name)
    if readout is None:
        raise InputError(f"A planted illusion needs a linear readout (an mlp.hook_post hook), not {hook_name}.")
    acts, values = clean_activations(model, pairs, hook_name)
    if len(values.unique()) != 2:
        raise InputError("The planted illusion needs prompts of exactly two feature values.")
    gap = acts[values == 1].mean(0) - acts[values == 0].mean(0)
    _, n_part = rowspace_split(gap, readout)
    n_dir = unit_vector(n_part)
    Q = rowspace_basis(readout)  # [d, rank]
    centred = (acts - acts.mean(0)).double()
    M = centred @ Q.double()  # [prompt, rank]: the activations' variation inside the rowspace
    _, S, Vh = torch.linalg.svd(M, full_matrices=True)
    tol = 1e-6 * float(S.max()) if S.numel() else 0.0
    used = int((S > tol).sum())
    quiet = Q.double() @ Vh[used:].T  # [d, rank - used]: rowspace directions the prompts never vary along
    if quiet.shape[1] == 0:
        raise InputError("The prompts' activations span the whole rowspace; no dormant direction is left.")
    g = answer_gradient(model, pairs, hook_name).double()
    r = quiet @ (quiet.T @ g)
    if float(r.norm()) == 0.0:
        raise InputError("The answer gradient has no part along the dormant rowspace directions.")
    r_dir = (r / r.norm()).float()
    v = (n_dir + r_dir) / math.sqrt(2.0)
    settings = dict(gradient_along_r=float(g @ (r / r.norm())), dormant_dims=int(quiet.shape[1]))
    return Direction(unit_vector(v), hook_name, "planted", settings=settings)


__all__ = ["answer_gradient", "planted_illusion", "probe_direction"]
