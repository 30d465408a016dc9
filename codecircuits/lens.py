"""Reading vectors of the residual stream through the unembedding, with the final norm's scale frozen.

In compatibility mode the final norm's weight is folded into ``W_U``, so for a residual vector ``x`` the model's
logits are ``norm(x) @ W_U + b_U`` with ``norm(x) = x / scale`` (RMSNorm) or ``(x - mean(x)) / scale``
(LayerNorm), where ``scale = ln_final.hook_scale``. Freezing ``scale`` at its value on the clean run makes the
readout linear in ``x``: the logits of a sum of components are the sum of their logits (plus ``b_U`` once).
That is the lens of Yu & Ananiadou, Miller et al. and Geva et al.'s agreement (METHODS §7).
"""

from __future__ import annotations

import torch
from jaxtyping import Float


def is_layernorm(model) -> bool:
    """True for LayerNorm models (the readout centres vectors), False for RMSNorm."""
    return str(getattr(model.cfg, "normalization_type", "LN")).upper().startswith("LN")


def final_scale(cache, pos: int | None = -1) -> torch.Tensor:
    """The final norm's scale from a cache: ``[batch, 1]`` at ``pos`` or ``[batch, pos, 1]`` for ``pos=None``."""
    scale = cache["ln_final.hook_scale"]
    return scale if pos is None else scale[:, pos]


def apply_final_norm(model, x: Float[torch.Tensor, "... d_model"], scale: torch.Tensor) -> torch.Tensor:
    """Normalise ``x`` as the final norm would, with its scale frozen to ``scale`` (broadcast against ``x``)."""
    if is_layernorm(model):
        x = x - x.mean(-1, keepdim=True)
    return x / scale


def to_logits(
    model, x: Float[torch.Tensor, "... d_model"], scale: torch.Tensor, *, include_bias: bool = True
) -> Float[torch.Tensor, "... d_vocab"]:
    """Logits of residual-stream vector(s) ``x`` with the final scale frozen (``include_bias`` adds ``b_U``)."""
    out = apply_final_norm(model, x, scale) @ model.W_U
    if include_bias and getattr(model, "b_U", None) is not None:
        out = out + model.b_U
    return out
