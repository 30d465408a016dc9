"""Which models the edge methods support, and how each destination's input is reached on a model's bridge.

:func:`check_supported` refuses, naming the block, a model whose blocks normalise their outputs before the residual
add (post-norm, Gemma's sandwich norms) or whose destination inputs cannot be reached; :func:`input_mode` finds,
once per model, whether the bridge's split query/key/value and MLP inputs fire (``"split"``) or each head's
projections are recomputed from the block input (``"recompute"``, CodeGen); :func:`split_inputs` sets the bridge
flags that make those inputs tensors of their own. :mod:`~codecircuits.circuits.graph` checks a model here before
it lays out its graph, and :mod:`~codecircuits.circuits.hooks` builds its taps on the same modes.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import einops
import torch

from ..core.sites import LN_FINAL_IN, hook_name, resid_pre
from ..errors import InputError, UnsupportedArchitectureError

#: the submodules of a block that normalise its attention or MLP output before the residual add
_POST_NORMS = ("ln1_post", "ln2_post", "post_attention_layernorm_out", "post_feedforward_layernorm")


@contextmanager
def split_inputs(model):
    """Turn on the bridge's split query/key/value inputs and MLP input hooks, restoring the caller's flags."""
    cfg = model.cfg
    saved = (cfg.use_split_qkv_input, cfg.use_hook_mlp_in, bool(getattr(cfg, "use_attn_in", False)))
    try:
        if saved[2]:
            model.set_use_attn_in(False)
        if not saved[0]:
            model.set_use_split_qkv_input(True)
        if not saved[1]:
            model.set_use_hook_mlp_in(True)
        yield
    finally:
        model.set_use_split_qkv_input(saved[0])
        model.set_use_hook_mlp_in(saved[1])
        if saved[2]:
            model.set_use_attn_in(True)


_MODES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SPLIT = [f"blocks.0.hook_{x}_input" for x in "qkv"] + ["blocks.0.hook_mlp_in", LN_FINAL_IN, resid_pre(0)]


def mlp_read_hook(model, layer: int) -> str:
    """The residual hook the MLP of ``layer`` reads: the block input in parallel blocks, else ``resid_mid``."""
    return resid_pre(layer) if getattr(model.cfg, "parallel_attn_mlp", False) else hook_name("resid_mid", layer)


def mlp_norm(block):
    """The norm in front of a block's MLP (``ln2``; ``ln1`` in parallel blocks, whose attention and MLP share it)."""
    return block.ln2 if hasattr(block, "ln2") else block.ln1


def input_mode(model) -> str:
    """How destination inputs are reached on this bridge, checked once per model by a two-token forward:

    - ``"split"``: the bridge's own split inputs (``hook_q_input`` ``[batch, pos, head, d_model]``, ``hook_k_input``
      and ``hook_v_input`` per key/value head, ``hook_mlp_in``) fire; each is replaced by a tensor of its own.
    - ``"recompute"``: they do not fire (CodeGen's bridge), but each head's projections can be recomputed exactly
      from the block input, ``ln1(x_h) @ W_Q[h] + b_Q[h]`` at ``attn.hook_q`` (and k, v), and the MLP's input as
      its norm of ``x`` at ``mlp.hook_in``, checked against the model's own values; each head then reads an input
      ``x_h`` of its own.

    Anything else is refused, naming the block."""
    if model in _MODES:
        return _MODES[model]
    block = model.blocks[0]
    kind = type(getattr(block, "original_component", block)).__name__
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def fn(act, hook=None):
            seen[name] = act.detach()
            return act

        return fn

    extra = [
        resid_pre(0),
        mlp_read_hook(model, 0),
        "blocks.0.attn.hook_q",
        "blocks.0.attn.hook_k",
        "blocks.0.attn.hook_v",
        "blocks.0.mlp.hook_in",
    ]
    names = [n for n in dict.fromkeys(_SPLIT + extra) if n in model.hook_dict]
    tokens = torch.arange(4, device=model.cfg.device)[None] % int(model.cfg.d_vocab)
    with torch.no_grad(), split_inputs(model), model.hooks(fwd_hooks=[(n, keep(n)) for n in names]):
        model(tokens)
    if all(n in seen for n in _SPLIT):
        mode = "split"
    else:
        mode = None
        if all(n in seen for n in extra):
            attn = block.attn
            with torch.no_grad():
                y = block.ln1(seen[resid_pre(0)])
                ok = all(
                    torch.allclose(
                        einops.einsum(y, getattr(attn, f"W_{x.upper()}"), "b p d, h d e -> b p h e")
                        + (
                            getattr(attn, f"b_{x.upper()}", None)
                            if getattr(attn, f"b_{x.upper()}", None) is not None
                            else 0
                        ),
                        seen[f"blocks.0.attn.hook_{x}"],
                        atol=1e-4,
                        rtol=1e-3,
                    )
                    for x in "qkv"
                )
                ok = ok and torch.allclose(
                    mlp_norm(block)(seen[mlp_read_hook(model, 0)]), seen["blocks.0.mlp.hook_in"], atol=1e-4, rtol=1e-3
                )
            mode = "recompute" if ok else None
        if mode is None:
            missing = [n for n in _SPLIT if n not in seen]
            raise UnsupportedArchitectureError(
                f"blocks.0 ({kind}): TransformerLens's bridge gives this architecture no {', '.join(missing)} hook "
                "and its head projections cannot be recomputed from the block input, so the input of each head "
                "cannot be patched or differentiated on its own. Use node-level sweeps (codecircuits.ablation, "
                "codecircuits.patching) here."
            )
    _MODES[model] = mode
    return mode


def check_supported(model) -> None:
    """Refuse, naming the block, a model whose blocks are not sums of heads and MLPs added to the residual, or
    whose bridge gives no split query/key/value inputs."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "hook_dict"):
        raise InputError("Edge attribution needs a TransformerBridge from codecircuits.load_model.")
    for i, block in enumerate(blocks):
        names = {n for n, _ in block.named_children()}
        post = sorted(names & set(_POST_NORMS))
        if post:
            raise UnsupportedArchitectureError(
                f"blocks.{i} ({type(getattr(block, 'original_component', block)).__name__}) normalises its "
                f"attention or MLP output before the residual add ({', '.join(post)}), so a head's output is not "
                "what the residual stream receives and edges are not additive. Edge attribution supports pre-norm "
                "and parallel blocks; use node-level sweeps (codecircuits.ablation, codecircuits.patching) here."
            )
    input_mode(model)  # raises, naming the block, when neither the split inputs nor their recomputation work


__all__ = ["check_supported", "input_mode", "mlp_norm", "mlp_read_hook", "split_inputs"]
