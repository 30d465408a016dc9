"""The hooks every edge method shares: reading each source's output into one dense tensor, and the bridge flags
that make each head's query/key/value input and each MLP's input a tensor of its own.

A source's output is what it adds to the residual stream: the input embeddings (``blocks.0.hook_resid_pre``), a
head's ``z @ W_O`` (from ``attn.hook_z``, per head; the output bias is the same in every run and cancels in every
difference) and an MLP's ``hook_mlp_out``. They are written into ``acts[batch, pos, source, d_model]`` in fp32.
"""

from __future__ import annotations

from contextlib import contextmanager

import einops
import torch

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
    """``[batch, pos, head, d_model]``: each head's write to the residual stream."""
    return einops.einsum(z.float(), w_o, "b p h e, h e d -> b p h d")


def source_hooks(graph: Graph, acts: torch.Tensor, w_o: list[torch.Tensor], *, sign: float = 1.0, rows=None):
    """Forward hooks that add ``sign *`` each source's output to ``acts[rows]`` (all rows when ``rows`` is None)."""
    sl = slice(None) if rows is None else rows

    def put(index):
        def fn(act, hook=None):
            acts[sl, :, index] += sign * act.detach().float()
            return act

        return fn

    def put_heads(layer):
        start = graph.head_source(layer)

        def fn(z, hook=None):
            acts[sl, :, start : start + graph.n_heads] += sign * head_outputs(z.detach(), w_o[layer])
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
