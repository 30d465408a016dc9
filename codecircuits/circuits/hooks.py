"""The hooks every edge method shares: reading each source's output into one dense tensor, and the taps through
which each head's query/key/value input and each MLP's input is read and replaced (in the input mode that
:mod:`~codecircuits.circuits.support` finds for the model).

A source's output is what it adds to the residual stream: the input embeddings (``blocks.0.hook_resid_pre``), a
head's ``z @ W_O`` (from ``attn.hook_z``, per head; the output bias is the same in every run and cancels in every
difference) and an MLP's ``hook_mlp_out``. They are written into ``acts[source, batch, pos, d_model]`` in fp32 (sources-major: the sources upstream of a
destination are a contiguous prefix, so each destination's contraction is one matrix product).
"""

from __future__ import annotations

from contextlib import nullcontext

import einops
import torch

from ..core.sites import resid_pre
from .graph import Graph
from .support import input_mode, mlp_norm, mlp_read_hook, split_inputs


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
        return mlp_norm(block)(transform("mlp", box["mlp"]))

    hooks = [(resid_pre(layer), keep("attn")), (mlp_read_hook(model, layer), keep("mlp"))]
    hooks += [(f"blocks.{layer}.attn.hook_{x}", project(x)) for x in "qkv"]
    return hooks + [(f"blocks.{layer}.mlp.hook_in", mlp_in)]
