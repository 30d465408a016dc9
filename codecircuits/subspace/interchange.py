"""The subspace interchange on pairs: patch each base prompt's last-position activation from its source inside a
subspace, and measure what that does to the answer (logit differences, FLDD, interchange accuracy).

The patch is :class:`~codecircuits.core.interventions.SubspaceSwap` at each base prompt's last position, installed
by :func:`codecircuits.core.interventions.hook`: ``w' = w + strength * ((u - w) @ B) @ B.T`` for an orthonormal
basis ``B`` (``[d, k]``), which is TransformerLens's ``SubspaceInterchange``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float

from ..core.interventions import SubspaceSwap, hook
from ..errors import InputError
from .das import Direction, activations, unit_vector
from .pairs import PatchPairs, answer_logits, batch_slices, check_pairs


@dataclass(frozen=True)
class PatchResult:
    """What one patch did to a set of pairs.

    Attributes:
        name: what was patched (e.g. ``"das"``, ``"full"``).
        hook_name: where.
        fldd: ``100 * (1 - mean LD_patched / mean LD_clean)``.
        interchange_accuracy: fraction of pairs whose patched argmax (over the answer tokens) is the source answer.
        ld_clean, ld_patched: ``[pair]`` logit differences ``logit(base answer) - logit(source answer)``.
        dimension: the patched subspace's dimension (the activation size for a full patch, 0 for none).
        strength: the interchange strength.
    """

    name: str
    hook_name: str
    fldd: float
    interchange_accuracy: float
    ld_clean: torch.Tensor
    ld_patched: torch.Tensor
    dimension: int
    strength: float
    axes: tuple[str, ...] = ("pair",)

    @property
    def n_pairs(self) -> int:
        return len(self.ld_clean)

    def summary(self) -> dict:
        return dict(
            name=self.name,
            hook=self.hook_name,
            dimension=self.dimension,
            fldd=self.fldd,
            interchange_accuracy=self.interchange_accuracy,
            ld_clean=float(self.ld_clean.mean()),
            ld_patched=float(self.ld_patched.mean()),
            n_pairs=self.n_pairs,
        )

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({"ld_clean": self.ld_clean.numpy(), "ld_patched": self.ld_patched.numpy()})

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` pairs the patch moved most (largest drop in logit difference)."""
        df = self.to_dataframe()
        df["drop"] = df["ld_clean"] - df["ld_patched"]
        return df.sort_values("drop", ascending=False).head(k)


def _ld(logits: torch.Tensor, pairs: PatchPairs) -> torch.Tensor:
    rows = torch.arange(len(logits))
    return logits[rows, pairs.base_values] - logits[rows, pairs.source_values]


@torch.no_grad()
def patched_logits(
    model,
    pairs: PatchPairs,
    hook_name: str,
    basis: Float[torch.Tensor, "d k"] | None,
    strength: float = 1.0,
    batch_size: int = 64,
    source: Float[torch.Tensor, "pair d"] | None = None,
) -> Float[torch.Tensor, "pair value"]:
    """Answer logits ``[pair, value]`` at each base prompt's last token, with the base's activation at ``hook_name``
    there swapped inside ``basis`` for the source's (``source``: the source activations ``[pair, d]``, collected
    when ``None``); ``basis=None`` is the clean run (no patch)."""
    out = []
    if basis is None:  # clean run
        for sl in batch_slices(len(pairs), batch_size):
            out.append(answer_logits(model, pairs.base_tokens[sl], pairs.base_positions[sl], pairs.answer_ids).cpu())
        return torch.cat(out)
    if source is None:
        source = activations(model, hook_name, pairs.source_tokens, pairs.source_positions, batch_size=batch_size)
    for sl in batch_slices(len(pairs), batch_size):
        swap = SubspaceSwap(basis, source[sl], strength, positions=pairs.base_positions[sl])
        logits = answer_logits(
            model, pairs.base_tokens[sl], pairs.base_positions[sl], pairs.answer_ids, [hook(hook_name, swap)]
        )
        out.append(logits.cpu())
    return torch.cat(out)


def patch(
    model,
    pairs: PatchPairs,
    hook_name: str,
    direction: Direction | torch.Tensor | None = None,
    *,
    strength: float = 1.0,
    name: str | None = None,
    batch_size: int = 64,
    clean: Float[torch.Tensor, "pair value"] | None = None,
    source: Float[torch.Tensor, "pair d"] | None = None,
) -> PatchResult:
    """Patch each base prompt's last-position activation at ``hook_name`` from its source, inside a subspace.

    ``direction`` is a :class:`Direction`, a ``[d]`` vector (normalised here), a ``[d, k]`` orthonormal basis, or
    ``None`` for the full component (the identity basis). A ``[d, 0]`` basis or ``strength=0`` changes nothing.
    ``clean`` (the clean answer logits, ``patched_logits(..., basis=None)``) and ``source`` (the source
    activations at ``hook_name``, :func:`~codecircuits.subspace.das.activations`) reuse what several patches of
    the same pairs share.
    """
    check_pairs(model, pairs, hook_name)
    if source is None:
        source = activations(model, hook_name, pairs.source_tokens, pairs.source_positions, batch_size=batch_size)
    d = source.shape[1]
    if direction is None:
        basis, label = torch.eye(d), "full"
    elif isinstance(direction, Direction):
        basis, label = direction.basis, direction.kind
    else:
        t = torch.as_tensor(direction).detach().float().cpu()
        basis = unit_vector(t)[:, None] if t.dim() == 1 else t
        label = "subspace"
        if basis.shape[1] > 0 and not torch.allclose(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-4):
            raise InputError("A [d, k] basis must have orthonormal columns (basis.T @ basis = I).")
    if basis.shape[0] != d:
        raise InputError(f"The direction has size {basis.shape[0]} but activations at {hook_name} have size {d}.")
    if clean is None:
        clean = patched_logits(model, pairs, hook_name, None, 1.0, batch_size)
    patched = patched_logits(model, pairs, hook_name, basis, strength, batch_size, source=source)
    ld_clean, ld_patched = _ld(clean, pairs), _ld(patched, pairs)
    fldd = 100.0 * (1.0 - float(ld_patched.mean()) / float(ld_clean.mean()))
    iia = float((patched.argmax(-1) == pairs.source_values).float().mean())
    return PatchResult(name or label, hook_name, fldd, iia, ld_clean, ld_patched, int(basis.shape[1]), strength)


__all__ = ["PatchResult", "patch", "patched_logits"]
