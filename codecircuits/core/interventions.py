"""What an intervention writes into an activation, and the one place interventions become hooks.

Every intervention is a small object with one call signature::

    new = intervention(act, examples=rows_examples, offset=first_position)

``act`` is the activation at a hook ``[rows, pos, ...]`` (for a pattern ``[rows, head, dest, src]``), whose
positions are the prompt's positions ``offset, offset + 1, ...`` (a run from a later position sees only those);
``examples`` says which prompt each row is (``None``: the rows are the prompts, in order). It returns the
values the activation takes wherever the intervention applies; :func:`hook` turns it into a forward hook that
writes them where a boolean ``mask`` is true and leaves the rest of the activation as it was (as pyvene's
interventions and auto-circuit's single patch mode do, the mask says *where*, the intervention *what*).

=======================  =========================================================================================
:class:`Replace`         the activation of another run (``source[examples]``): activation patching.
:class:`Zero`            zero.
:class:`Mean`            the mean over reference prompts, per position or over positions too.
:class:`Resample`        another reference prompt's activation at the same position (a seeded derangement).
:class:`Scale`           the activation times a factor per unit (e.g. per head: amplification, 0 = zero).
:class:`Add`             the activation plus a vector (steering, a simulated weight edit).
:class:`SubspaceSwap`    the activation with its component in a subspace taken from the source.
:class:`EdgeMask`        ``act + weight * (source - act)``: a soft mask between a run and its source, for circuits.
=======================  =========================================================================================

:class:`ValueVectorEdit` simulates edits of MLP value vectors (MINT's planning step): ``hook_mlp_out`` plus a
neuron's activation, read in the same forward, times the change of its value vector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int

from ..errors import InputError


class Intervention:
    """Base class: ``values(act, examples, offset)`` gives what the activation becomes where it applies."""

    def values(self, act: torch.Tensor, examples: torch.Tensor | None, offset: int) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, act: torch.Tensor, *, examples: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
        return self.values(act, examples, offset)


def _rows(act: torch.Tensor, examples: torch.Tensor | None) -> torch.Tensor:
    return torch.arange(act.shape[0], device=act.device) if examples is None else examples


def _check_length(what: str, have: int, need: int) -> None:
    if have != need:
        raise InputError(
            f"{what} needs reference prompts of the run's token length: the reference has {have} tokens, the run "
            f"{need}. Pass reference prompts of the same length"
            + (", or mean_over='prompts_and_positions'." if what.startswith("Mean") else ".")
        )


@dataclass(frozen=True)
class Zero(Intervention):
    def values(self, act, examples, offset):
        return torch.zeros_like(act)


@dataclass(frozen=True)
class Mean(Intervention):
    """``acts``: the mean activation ``[pos, ...]`` (``per_position``) or ``[...]`` (over positions too)."""

    acts: torch.Tensor
    per_position: bool = True

    def values(self, act, examples, offset):
        if not self.per_position:
            return self.acts.to(act.dtype).expand_as(act)
        n = act.shape[1]
        _check_length("Mean ablation per position", self.acts.shape[0], offset + n)
        return self.acts[offset : offset + n].to(act.dtype).expand_as(act)


def resample_index(batch: int, n_ref: int, seed: int = 0, device=None) -> torch.Tensor:
    """Which reference prompt each of ``batch`` prompts takes its activations from (deterministic in ``seed``).

    With ``batch == n_ref > 1`` the prompts are taken to be the reference itself and each gets a different one
    (a random derangement); otherwise indices are drawn uniformly.
    """
    g = torch.Generator().manual_seed(int(seed))
    if batch == n_ref and n_ref > 1:
        while True:
            perm = torch.randperm(n_ref, generator=g)
            if not bool((perm == torch.arange(n_ref)).any()):
                break
        idx = perm
    else:
        idx = torch.randint(n_ref, (batch,), generator=g)
    return idx.to(device) if device is not None else idx


@dataclass(frozen=True)
class Resample(Intervention):
    """``acts``: reference activations ``[n_ref, pos, ...]``. Prompt ``e`` of a run over ``n_examples`` prompts
    takes reference prompt ``resample_index(n_examples, n_ref, seed)[e]`` (``n_examples`` defaults to the rows)."""

    acts: torch.Tensor
    seed: int = 0
    n_examples: int | None = None

    def values(self, act, examples, offset):
        n = act.shape[1]
        _check_length("Resample ablation", self.acts.shape[1], offset + n)
        n_ex = self.n_examples if self.n_examples is not None else act.shape[0]
        idx = resample_index(n_ex, self.acts.shape[0], self.seed, act.device)
        if examples is None:
            return self.acts[idx, offset : offset + n]
        return self.acts[idx][examples, offset : offset + n]


@dataclass(frozen=True)
class Replace(Intervention):
    """``source``: the activations of the donor run ``[n_examples, pos, ...]`` (a pattern: ``[n, head, dest,
    src]``); row ``r`` takes ``source[examples[r]]`` at the same positions."""

    source: torch.Tensor
    pattern: bool = False

    def values(self, act, examples, offset):
        src = self.source if examples is None else self.source[examples]
        return src[:, :, offset:] if self.pattern else src[:, offset:]


@dataclass(frozen=True)
class Scale(Intervention):
    """The activation times ``factors``, broadcast from the unit axis (2): ``[units]`` for ``[rows, pos, units, d]``
    or ``[rows, pos, units]`` activations; a float scales everything."""

    factors: torch.Tensor | float

    def values(self, act, examples, offset):
        if not isinstance(self.factors, torch.Tensor):
            return act * self.factors
        f = self.factors.to(act.device, act.dtype)
        return act * (f[:, None] if act.dim() == 4 else f)


@dataclass(frozen=True)
class Add(Intervention):
    """The activation plus ``delta`` (broadcastable to ``[rows, pos, ...]``, or ``[n_examples, pos, ...]`` indexed
    by example when ``per_example``)."""

    delta: torch.Tensor
    per_example: bool = False

    def values(self, act, examples, offset):
        d = self.delta[_rows(act, examples)] if self.per_example else self.delta
        return act + d.to(act.dtype)


@dataclass(frozen=True)
class SubspaceSwap(Intervention):
    """Swap the component in the span of ``basis`` (``[d, k]`` orthonormal columns) for the source's:
    ``act + (source - act) @ basis @ basis.T``. ``source`` is ``[n_examples, pos, d]`` or ``[n_examples, d]``
    (then the same at every position the mask selects); ``scale`` multiplies the swapped component.

    ``positions`` (``[n_examples]``, prompt positions): the swap is computed at each example's one position only,
    from a ``[n_examples, d]`` source, and every other position keeps its value (no mask needed). The numbers are
    then those of TransformerLens's ``SubspaceInterchange`` on the selected vectors, bit for bit."""

    basis: Float[torch.Tensor, "d k"]
    source: torch.Tensor
    scale: float = 1.0
    positions: torch.Tensor | None = None

    def swap(self, act: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """``act + scale * ((src - act) @ basis) @ basis.T`` (``src`` broadcast against ``act``)."""
        b = self.basis.to(act.device, act.dtype)
        return act + self.scale * ((src - act) @ b) @ b.T

    def values(self, act, examples, offset):
        rows = _rows(act, examples)
        src = self.source.to(act.device, act.dtype)[rows]
        if self.positions is not None:
            at = torch.arange(act.shape[0], device=act.device)
            pos = self.positions.to(act.device)[rows] - offset
            out = act.clone()
            out[at, pos] = self.swap(act[at, pos], src)
            return out
        if src.dim() == act.dim():
            src = src[:, offset : offset + act.shape[1]]
        else:
            src = src[:, None]
        return self.swap(act, src)


@dataclass(frozen=True)
class EdgeMask(Intervention):
    """``act + weight * (source - act)``: ``weight`` is the share taken from the source (0 = the run's own
    activation, 1 = the source's), broadcast against ``[rows, pos, ...]`` (one weight per edge or per row for
    circuit masks); ``source`` as in :class:`Replace`."""

    source: torch.Tensor
    weight: torch.Tensor

    def values(self, act, examples, offset):
        src = (self.source if examples is None else self.source[examples])[:, offset:]
        return act + self.weight.to(act.dtype) * (src.to(act.dtype) - act)


@dataclass(frozen=True, eq=False)
class ValueVectorEdit(Intervention):
    """A simulated edit of value vectors (rows of a layer's MLP output weight ``W_out``), at that layer's
    ``hook_mlp_out``: batch row ``r`` becomes ``act[r] + post[r, :, neurons[r], None] * deltas[r]``, what adding
    ``deltas[r]`` ``[d_model]`` to row ``neurons[r]`` of ``W_out`` does to the MLP output, where ``post`` is the
    same forward's ``mlp.hook_post`` of the layer. That activation is read by :meth:`reader`, a hook that only
    reads: install ``edit.reader(hook_name("post", layer))`` with ``hook(hook_name("mlp_out", layer), edit, mask)``.
    ``neurons`` and ``deltas`` are indexed by ``examples`` (the batch rows when ``None``)."""

    neurons: Int[torch.Tensor, " n"]
    deltas: Float[torch.Tensor, "n d_model"]
    seen: dict = field(default_factory=dict, repr=False)

    def reader(self, name: str) -> Hook:
        """The hook that reads ``mlp.hook_post`` (``name``) for this edit, in the forward it intervenes on."""

        def read(act, hook=None):
            self.seen["post"] = act
            return act

        return (name, read)

    def values(self, act, examples, offset):
        post = self.seen.get("post")
        if post is None or post.shape[:2] != act.shape[:2]:
            raise InputError(
                "ValueVectorEdit needs the same forward's mlp.hook_post of its layer: install edit.reader(name) on "
                "that hook together with the edit's hook on hook_mlp_out."
            )
        rows = _rows(act, examples)
        batch = torch.arange(act.shape[0], device=act.device)
        coeff = post[batch, :, self.neurons.to(act.device)[rows]]  # [rows, pos]
        return act + coeff[..., None] * self.deltas.to(act.device, act.dtype)[rows][:, None]


Hook = tuple[str, Callable]


def hook(
    name: str,
    intervention: Intervention,
    mask: Bool[torch.Tensor, "*shape"] | Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    examples: torch.Tensor | None = None,
    offset: int = 0,
) -> Hook:
    """The forward hook ``(name, fn)`` that applies ``intervention`` where ``mask`` is true (everywhere when
    ``None``). ``mask`` is a boolean tensor that broadcasts against the activation, or a function of the
    activation that returns one (for masks whose shape is known only when the hook runs). The hook returns a
    new tensor (autograd-safe)."""

    def fn(act, hook=None):
        new = intervention(act, examples=examples, offset=offset)
        if mask is None:
            return new
        return torch.where(mask(act) if callable(mask) else mask, new, act)

    return (name, fn)


def position_mask(n_pos: int, positions, device=None) -> torch.Tensor:
    """``[n_pos]`` true at ``positions`` (all when ``None``; positions past the end are ignored)."""
    m = torch.zeros(n_pos, dtype=torch.bool, device=device)
    if positions is None:
        m[:] = True
    else:
        keep = [int(p) for p in positions if int(p) < n_pos]
        m[keep] = True
    return m


def unit_mask(n_pos: int, positions, units, n_units: int, *, with_d: bool, device=None) -> torch.Tensor:
    """``[1, n_pos, n_units(, 1)]`` true at the given positions and units (heads, neurons, kv slots)."""
    u = torch.zeros(n_units, dtype=torch.bool, device=device)
    u[torch.as_tensor(sorted(set(int(x) for x in units)), dtype=torch.long, device=device)] = True
    m = position_mask(n_pos, positions, device)[:, None] & u[None, :]
    return (m[..., None] if with_d else m)[None]


__all__ = [
    "Add",
    "EdgeMask",
    "Hook",
    "Intervention",
    "Mean",
    "Replace",
    "Resample",
    "Scale",
    "SubspaceSwap",
    "ValueVectorEdit",
    "Zero",
    "hook",
    "position_mask",
    "resample_index",
    "unit_mask",
]
