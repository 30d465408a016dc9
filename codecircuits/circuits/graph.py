"""The computational graph circuits are found in: nodes, edges, their names and the hooks that carry them.

Nodes are the input (the embeddings), every attention head (a query head), every MLP and the logits. A node
*writes* to the residual stream (a source) and *reads* from it at one or more inputs (destinations): a head reads
at its query, key and value inputs, an MLP at its input, the logits at the final residual. An edge is a source
and a destination that reads it: every earlier source feeds every later destination, because the residual
stream is their sum. The graph is held as two index sets and a boolean matrix ``valid[source, destination]``
(the layout of EAP-IG's graphs, so scores are one dense ``[n_sources, n_destinations]`` tensor):

- sources: ``0`` is ``input``; layer ``l`` has heads ``a{l}.h{h}`` at ``1 + l (H + 1) + h`` and its MLP ``m{l}``
  at ``1 + l (H + 1) + H``;
- destinations: layer ``l`` has ``H`` query inputs, ``K`` key inputs, ``K`` value inputs and one MLP input, in
  that order; the logits are last. ``K`` is the number of key/value heads in the *grouped* view (one shared
  input per key/value group, exact: that is the tensor the model computes with) and ``H`` in the *ungrouped*
  view (one copy per query head, as EAP-IG and MIB count them).

Names are EAP-IG's: ``input->a0.h0<q>``, ``a0.h3->a2.h1<v>``, ``a3.h1->m5``, ``m11->logits``; in the grouped view
a key/value destination is named by its group, ``a2.g0<k>`` (the heads ``a2.h0``.. that share it).

Parallel blocks (GPT-NeoX, CodeGen) read attention and MLP from the same residual, so a layer's heads do not
feed its own MLP. Blocks whose outputs are normalised before the residual add (post-norm, Gemma's sandwich
norms) are refused by :func:`~codecircuits.circuits.support.check_supported`, naming the block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..core.sites import LN_FINAL_IN, hook_name, resid_pre
from ..errors import InputError
from .support import check_supported


@dataclass(frozen=True)
class Graph:
    """The edge graph of a model: sizes, the index layout described in the module, names and validity.

    Build it with :meth:`from_model`; ``grouped`` picks the grouped (exact, default) or the ungrouped view of
    key/value inputs. ``per_position`` graphs have one edge per token position (scores gain a leading ``pos``
    axis of length ``n_pos``).
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    parallel: bool
    grouped: bool = True
    n_pos: int | None = None
    valid: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        prev = torch.tensor([self.prev(d) for d in range(self.n_destinations)])
        object.__setattr__(self, "valid", torch.arange(self.n_sources)[:, None] < prev[None, :])

    # -- construction --------------------------------------------------------------------------------------------

    @classmethod
    def from_model(cls, model, *, grouped: bool = True, per_position: bool = False, n_pos: int | None = None):
        """The graph of ``model`` (a TransformerBridge); ``per_position`` needs ``n_pos``, the prompt length."""
        check_supported(model)
        cfg = model.cfg
        n_kv = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
        if per_position and not n_pos:
            raise InputError("A per-position graph needs n_pos, the token length of the prompts it scores.")
        return cls(n_layers=int(cfg.n_layers), n_heads=int(cfg.n_heads), n_kv_heads=n_kv, d_model=int(cfg.d_model),
                   parallel=bool(getattr(cfg, "parallel_attn_mlp", False)), grouped=grouped,
                   n_pos=int(n_pos) if per_position else None)

    def with_view(self, *, grouped: bool) -> Graph:
        """The same model's graph in the other key/value view."""
        return Graph(self.n_layers, self.n_heads, self.n_kv_heads, self.d_model, self.parallel, grouped, self.n_pos)

    # -- sizes and indices ---------------------------------------------------------------------------------------

    @property
    def kv(self) -> int:
        """Key (and value) destinations per layer: key/value groups when grouped, query heads when not."""
        return self.n_kv_heads if self.grouped else self.n_heads

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def n_sources(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def per_layer(self) -> int:
        """Destinations per layer: query, key, value inputs and the MLP input."""
        return self.n_heads + 2 * self.kv + 1

    @property
    def n_destinations(self) -> int:
        return self.n_layers * self.per_layer + 1

    @property
    def n_edges(self) -> int:
        """Edges of the graph (per position when ``per_position``, times ``n_pos``)."""
        return int(self.valid.sum()) * (self.n_pos or 1)

    def head_source(self, layer: int, head: int = 0) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_source(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def q_destination(self, layer: int, head: int = 0) -> int:
        return layer * self.per_layer + head

    def k_destination(self, layer: int, slot: int = 0) -> int:
        return layer * self.per_layer + self.n_heads + slot

    def v_destination(self, layer: int, slot: int = 0) -> int:
        return layer * self.per_layer + self.n_heads + self.kv + slot

    def mlp_destination(self, layer: int) -> int:
        return layer * self.per_layer + self.n_heads + 2 * self.kv

    @property
    def logits_destination(self) -> int:
        return self.n_destinations - 1

    def prev(self, dst: int) -> int:
        """How many sources (a prefix of the source order) feed destination ``dst``."""
        if dst == self.logits_destination:
            return self.n_sources
        layer, slot = divmod(dst, self.per_layer)
        if slot < self.n_heads + 2 * self.kv or self.parallel:
            return 1 + layer * (self.n_heads + 1)
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def source_layer(self, src: int) -> int:
        """The layer of a source (``-1`` for the input)."""
        return -1 if src == 0 else (src - 1) // (self.n_heads + 1)

    # -- names ---------------------------------------------------------------------------------------------------

    @cached_property
    def source_names(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return names

    @cached_property
    def destination_names(self) -> list[str]:
        kv = "g" if self.grouped and self.group_size > 1 else "h"
        names = []
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}<q>" for h in range(self.n_heads)]
            names += [f"a{layer}.{kv}{g}<k>" for g in range(self.kv)]
            names += [f"a{layer}.{kv}{g}<v>" for g in range(self.kv)]
            names.append(f"m{layer}")
        return names + ["logits"]

    @cached_property
    def node_names(self) -> list[str]:
        return self.source_names + ["logits"]

    def edge_name(self, src: int, dst: int, pos: int | None = None) -> str:
        name = f"{self.source_names[src]}->{self.destination_names[dst]}"
        return name if pos is None else f"{name}@{pos}"

    def edge_names(self) -> list[str]:
        """Every edge's name, sources-major, in the order of ``valid.nonzero()``."""
        return [self.edge_name(int(s), int(d)) for s, d in self.valid.nonzero().tolist()]

    def edge_index(self, name: str) -> tuple[int, int]:
        """``(source, destination)`` of an edge name; a grouped graph also accepts EAP-IG's per-query-head key and
        value names (``a2.h4<k>`` is the key input of ``a2.h4``'s group)."""
        try:
            src_name, dst_name = name.split("->")
        except ValueError:
            raise InputError(f"{name!r} is not an edge name: write source->destination, e.g. a0.h1->m2.") from None
        try:
            src = self._src_index[src_name]
        except KeyError:
            raise InputError(f"Edge {name!r}: unknown source {src_name!r} for this model's graph.") from None
        dst = self._dst_index.get(dst_name)
        if dst is None:
            m = re.fullmatch(r"a(\d+)\.h(\d+)<([kv])>", dst_name)
            if m and self.grouped:
                layer, head, kind = int(m.group(1)), int(m.group(2)), m.group(3)
                slot = head // self.group_size
                dst = (self.k_destination if kind == "k" else self.v_destination)(layer, slot)
        if dst is None:
            raise InputError(f"Edge {name!r}: unknown destination {dst_name!r} for this model's graph.")
        if not bool(self.valid[src, dst]):
            raise InputError(f"Edge {name!r} does not exist: {src_name} is not upstream of {dst_name}.")
        return src, dst

    @cached_property
    def _src_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.source_names)}

    @cached_property
    def _dst_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.destination_names)}

    # -- structure -----------------------------------------------------------------------------------------------

    @cached_property
    def owners(self) -> torch.Tensor:
        """``[n_sources, n_destinations]``: which node each destination is an input of (a grouped key/value input
        belongs to every head of its group); the logits destination belongs to no source."""
        own = torch.zeros(self.n_sources, self.n_destinations, dtype=torch.bool)
        for layer in range(self.n_layers):
            for h in range(self.n_heads):
                s = self.head_source(layer, h)
                slot = h // self.group_size if self.grouped else h
                own[s, self.q_destination(layer, h)] = True
                own[s, self.k_destination(layer, slot)] = True
                own[s, self.v_destination(layer, slot)] = True
            own[self.mlp_source(layer), self.mlp_destination(layer)] = True
        return own

    def to_dict(self) -> dict:
        return {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "d_model": self.d_model,
            "parallel_attn_mlp": self.parallel,
            "grouped": self.grouped,
            "n_pos": self.n_pos,
        }

    # -- hooks ---------------------------------------------------------------------------------------------------

    @staticmethod
    def input_hook() -> str:
        return resid_pre(0)

    @staticmethod
    def head_hook(layer: int) -> str:
        return hook_name("z", layer)

    @staticmethod
    def mlp_out_hook(layer: int) -> str:
        return hook_name("mlp_out", layer)

    @staticmethod
    def input_hooks(layer: int) -> dict[str, str]:
        """The destination hooks of a layer: the split query/key/value inputs and the MLP input."""
        return {
            "q": f"blocks.{layer}.hook_q_input",
            "k": f"blocks.{layer}.hook_k_input",
            "v": f"blocks.{layer}.hook_v_input",
            "mlp": f"blocks.{layer}.hook_mlp_in",
        }

    @staticmethod
    def logits_hook() -> str:
        return LN_FINAL_IN
