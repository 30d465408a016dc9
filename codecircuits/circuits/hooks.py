"""The hooks every edge method shares: reading each source's output into one dense tensor, and the bridge flags
that make each head's query/key/value input and each MLP's input a tensor of its own.

A source's output is what it adds to the residual stream: the input embeddings (``blocks.0.hook_resid_pre``), a
head's ``z @ W_O`` (from ``attn.hook_z``, per head; the output bias is the same in every run and cancels in every
difference) and an MLP's ``hook_mlp_out``. They are written into ``acts[source, batch, pos, d_model]`` in fp32 (sources-major: the sources upstream of a
destination are a contiguous prefix, so each destination's contraction is one matrix product).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager, nullcontext

import einops
import torch

from ..core.sites import LN_FINAL_IN, hook_name, resid_pre
from ..errors import UnsupportedArchitectureError
from .graph import Graph


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


def output_weights(model) -> list[torch.Tensor]:
    """Each layer's ``W_O`` ``[head, d_head, d_model]`` in fp32 (read once per call of a method)."""
    return [b.attn.W_O.detach().float() for b in model.blocks]


def head_outputs(z: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """``[head, batch, pos, d_model]``: each head's write to the residual stream."""
    return einops.einsum(z.float(), w_o, "b p h e, h e d -> h b p d")


def source_hooks(
    graph: Graph, acts: torch.Tensor, w_o: list[torch.Tensor], *, sign: float = 1.0, n_c: int | None = None
):
    """Forward hooks that add ``sign *`` each source's output to ``acts``, which is sources-major so that the
    sources upstream of any destination are one contiguous prefix: ``acts[source, batch, pos, d_model]``, or with
    ``n_c`` given (batch rows that are ``(circuit, example)`` pairs, circuit-major) ``acts[circuit, source, example,
    pos, d_model]``."""

    def put(index):
        def fn(act, hook=None):
            a = act.detach().float()
            if n_c is None:
                acts[index] += sign * a
            else:
                acts[:, index] += sign * a.view(n_c, -1, *a.shape[1:])
            return act

        return fn

    def put_heads(layer):
        start, stop = graph.head_source(layer), graph.head_source(layer) + graph.n_heads

        def fn(z, hook=None):
            h = head_outputs(z.detach(), w_o[layer])
            if n_c is None:
                acts[start:stop] += sign * h
            else:
                acts[:, start:stop] += sign * einops.rearrange(h, "h (c e) p d -> c h e p d", c=n_c)
            return z

        return fn

    hooks = [(graph.input_hook(), put(0))]
    for layer in range(graph.n_layers):
        hooks.append((graph.head_hook(layer), put_heads(layer)))
        hooks.append((graph.mlp_out_hook(layer), put(graph.mlp_source(layer))))
    return hooks


def destination_slices(graph: Graph, layer: int) -> dict[str, tuple[slice, int]]:
    """For each input hook of ``layer`` (``q``, ``k``, ``v``, ``mlp``): its destination columns and how many
    sources feed it."""
    q0, k0, v0, m0 = (
        graph.q_destination(layer),
        graph.k_destination(layer),
        graph.v_destination(layer),
        graph.mlp_destination(layer),
    )
    kv = graph.n_kv_heads  # the tensor the model computes with has one slot per key/value head
    return {
        "q": (slice(q0, q0 + graph.n_heads), graph.prev(q0)),
        "k": (slice(k0, k0 + kv), graph.prev(k0)),
        "v": (slice(v0, v0 + kv), graph.prev(v0)),
        "mlp": (slice(m0, m0 + 1), graph.prev(m0)),
    }


# ----------------------------------------------------------------------------------------------------------------
# destination inputs: where each head's query/key/value input and each MLP's input can be read and replaced

_MODES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SPLIT = [f"blocks.0.hook_{x}_input" for x in "qkv"] + ["blocks.0.hook_mlp_in", LN_FINAL_IN, resid_pre(0)]


def _mlp_reads(model, layer: int) -> str:
    return resid_pre(layer) if getattr(model.cfg, "parallel_attn_mlp", False) else hook_name("resid_mid", layer)


def _mlp_norm(block):
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
        _mlp_reads(model, 0),
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
                    _mlp_norm(block)(seen[_mlp_reads(model, 0)]), seen["blocks.0.mlp.hook_in"], atol=1e-4, rtol=1e-3
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


def destination_inputs(model):
    """The context every run with destination taps runs in: the bridge's split inputs switched on where they are
    used (``"split"`` mode), nothing otherwise."""
    return split_inputs(model) if input_mode(model) == "split" else nullcontext()


def input_taps(model, graph: Graph, layer: int, transform) -> list:
    """Forward hooks through which ``transform(kind, x)`` decides what each destination of ``layer`` reads:
    ``kind`` is ``"q"``, ``"k"``, ``"v"`` (``x`` ``[batch, pos, slot, d_model]``, one slot per query head or
    key/value head) or ``"mlp"`` (``x`` ``[batch, pos, d_model]``); ``x`` is the input the model would read, and
    ``transform`` returns the tensor to read instead (a copy to differentiate, or ``x`` plus a patch)."""
    mode = input_mode(model)
    if mode == "split":
        names = graph.input_hooks(layer)
        return [(names[k], lambda act, hook=None, k=k: transform(k, act)) for k in ("q", "k", "v", "mlp")]
    block = model.blocks[layer]
    box: dict[str, torch.Tensor] = {}

    def keep(name):
        def fn(act, hook=None):
            box[name] = act
            return act

        return fn

    def project(x):
        def fn(act, hook=None):
            w, b = getattr(block.attn, f"W_{x.upper()}"), getattr(block.attn, f"b_{x.upper()}", None)
            inp = box["attn"][:, :, None].expand(-1, -1, w.shape[0], -1)
            out = einops.einsum(block.ln1(transform(x, inp)), w, "b p h d, h d e -> b p h e")
            return out if b is None else out + b

        return fn

    def mlp_in(act, hook=None):
        return _mlp_norm(block)(transform("mlp", box["mlp"]))

    hooks = [(resid_pre(layer), keep("attn")), (_mlp_reads(model, layer), keep("mlp"))]
    hooks += [(f"blocks.{layer}.attn.hook_{x}", project(x)) for x in "qkv"]
    return hooks + [(f"blocks.{layer}.mlp.hook_in", mlp_in)]
