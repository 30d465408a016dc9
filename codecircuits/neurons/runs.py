"""The clean run every neuron-level score starts from, and its inputs: the target token of each prompt
(:func:`resolve_target`: the clean run's top-1 unless given), the scored position (:func:`check_position`: the
last by default), the layers scored (:func:`check_layers`) and the target's token strings.

:func:`clean_run` keeps, at the scored position, what the scores read: the logits, the final norm's scale (frozen
for the readout, :mod:`~codecircuits.neurons.readout`), ``resid_pre[l]`` (the base of heads and attention neurons)
and, per kind of score, the FFN coefficients and bases (``resid_mid[l]``, or ``resid_pre[l] + attn_out[l]`` for
parallel attention+MLP blocks, which have no ``resid_mid``), the heads' ``z``, ``v`` and patterns, or the attention
outputs and the embedding (for query neurons).
"""

from __future__ import annotations

import torch
from jaxtyping import Int

from ..core.inputs import single_token_id
from ..core.sites import LN_FINAL_SCALE, hook_name
from ..errors import InputError


def resolve_target(model, target, n: int) -> Int[torch.Tensor, " n"] | None:
    """The target token of each of ``n`` prompts as ids on the model's device, or ``None`` (use each clean
    run's top-1). ``target``: one id or single-token string for every prompt, or one per prompt (ids, strings or
    a tensor)."""
    if target is None:
        return None
    if isinstance(target, (int, str)):
        target = [target] * n
    if isinstance(target, torch.Tensor):
        t = target.reshape(-1).long()
    else:
        t = torch.tensor(
            [single_token_id(model, x) if isinstance(x, str) else int(x) for x in target], dtype=torch.long
        )
    if t.numel() != n:
        raise InputError(f"{t.numel()} targets for {n} prompts: pass one target token per prompt.")
    if (t < 0).any() or (t >= model.cfg.d_vocab).any():
        raise InputError(f"Target ids must lie in [0, {model.cfg.d_vocab}); got {t.min().item()}..{t.max().item()}.")
    return t.to(model.cfg.device)


def check_position(pos: int, seq_len: int) -> None:
    """An error unless ``pos`` (negative counts from the end) is a position of prompts of ``seq_len`` tokens."""
    if not -seq_len <= pos < seq_len:
        raise InputError(
            f"pos={pos} is outside prompts of {seq_len} tokens: pick a position in [{-seq_len}, {seq_len})."
        )


def has_resid_mid(model) -> bool:
    """Whether the FFN of each block reads ``resid_mid`` (sequential attention then MLP): ``False`` for parallel
    attention+MLP blocks, whose FFN base is ``resid_pre + attn_out``."""
    return hook_name("resid_mid", 0) in model.hook_dict and not getattr(model.cfg, "parallel_attn_mlp", False)


def clean_run(
    model, tokens: Int[torch.Tensor, "batch pos"], pos: int, fwd_hooks=(), want=("ffn",)
) -> dict[str, torch.Tensor]:
    """One run of ``tokens`` (with optional ``fwd_hooks``) keeping, at ``pos``, float32 tensors on the model's
    device: ``logits [B, vocab]``, the final norm's ``scale [B, 1]``, ``resid_pre [B, layer, d_model]``;
    with ``"ffn"`` in ``want`` the FFN coefficients ``post [B, layer, d_mlp]`` and bases
    ``ffn_base [B, layer, d_model]`` (``resid_mid``, or ``resid_pre + attn_out`` for parallel blocks); with
    ``"attn"`` ``z [B, layer, head, d_head]``, ``v [B, layer, src, kv_head, d_head]`` (every position) and
    ``pattern [B, layer, head, src]``; with ``"query"`` ``attn_out [B, layer, d_model]`` and ``embedding``."""
    n_layers = model.cfg.n_layers
    kinds = {"resid_pre"}
    if "ffn" in want:
        kinds |= {"post", "resid_mid" if has_resid_mid(model) else "attn_out"}
    if "attn" in want:
        kinds |= {"z", "v", "pattern"}
    if "query" in want:
        kinds |= {"attn_out"}
    names = {LN_FINAL_SCALE} | {hook_name(k, layer) for k in kinds for layer in range(n_layers)}
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    out = {"logits": logits[:, pos].float(), "scale": cache[LN_FINAL_SCALE][:, pos].float()}

    def stack(kind: str) -> torch.Tensor:  # [B, layer, ...] at pos
        return torch.stack([cache[hook_name(kind, layer)][:, pos] for layer in range(n_layers)], 1).float()

    out["resid_pre"] = stack("resid_pre")
    if "ffn" in want:
        out["post"] = stack("post")
        if has_resid_mid(model):
            out["ffn_base"] = stack("resid_mid")
        else:
            out["ffn_base"] = out["resid_pre"] + stack("attn_out")
    if "attn" in want:
        out["z"] = stack("z")  # [B, L, H, d_head]
        out["v"] = torch.stack([cache[hook_name("v", layer)] for layer in range(n_layers)], 1).float()
        out["pattern"] = torch.stack(
            [cache[hook_name("pattern", layer)][:, :, pos] for layer in range(n_layers)], 1
        ).float()  # [B, L, H, src]
    if "query" in want:
        out["attn_out"] = stack("attn_out")
        out["embedding"] = cache[hook_name("resid_pre", 0)][:, pos].float()
    return out


def check_layers(model, layers) -> list[int]:
    n = model.cfg.n_layers
    if layers is None:
        return list(range(n))
    layers = [layers] if isinstance(layers, int) else list(layers)
    bad = [layer for layer in layers if not -n <= layer < n]
    if bad:
        raise InputError(f"Layers {bad} do not exist: the model has layers 0..{n - 1}.")
    return [layer % n for layer in layers]


def target_token_strings(model, target: Int[torch.Tensor, " n"]) -> tuple[str, ...]:
    """The tokenizer's strings of the token ids ``target`` (empty when the model has no tokenizer)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return ()
    return tuple(tok.convert_ids_to_tokens(target.tolist()))
