"""Circuits: a set of edges of a :class:`~codecircuits.circuits.graph.Graph`, selected from edge scores by top-n,
by threshold or greedily from the logits backwards, and pruned to the part connected from the input to the logits.

The selection and pruning rules are EAP-IG's (the ones MIB's circuit track evaluates with): top-n takes the ``n``
highest (absolute) scores among real edges; greedy starts from the logits and repeatedly takes the best edge into
a node already in the circuit; pruning repeatedly drops nodes without an incoming edge (the input always has
one) or without an outgoing edge, then edges whose source or destination node was dropped.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

from ..errors import InputError
from .graph import Graph


@dataclass(frozen=True)
class Circuit:
    """Edges ``[n_sources, n_destinations]`` (``[n_pos, ...]`` per position) of ``graph`` that are in the circuit."""

    graph: Graph
    edges: torch.Tensor

    @property
    def n_edges(self) -> int:
        return int(self.edges.sum())

    @property
    def nodes(self) -> torch.Tensor:
        """``[n_sources]``: the nodes whose output the circuit uses (an edge out of them; in a pruned circuit they
        are exactly its nodes besides the logits, each with an edge in unless it is the input)."""
        return self._edges2d.any(1)

    def node_names(self) -> list[str]:
        names = [self.graph.source_names[i] for i in self.nodes.nonzero().flatten().tolist()]
        return names + (["logits"] if bool(self._edges2d[:, -1].any()) else [])

    def edge_names(self) -> list[str]:
        if self.edges.dim() == 3:
            return [self.graph.edge_name(s, d, p) for p, s, d in self.edges.nonzero().tolist()]
        return [self.graph.edge_name(s, d) for s, d in self.edges.nonzero().tolist()]

    @property
    def _edges2d(self) -> torch.Tensor:
        return self.edges if self.edges.dim() == 2 else self.edges.any(0)

    def heads(self) -> list[str]:
        """The heads in the circuit, as ``L3H7`` labels."""
        g = self.graph
        out = []
        for s in self.nodes.nonzero().flatten().tolist():
            if s and s % (g.n_heads + 1) != 0:
                layer, h = divmod(s - 1, g.n_heads + 1)
                out.append(f"L{layer}H{h}")
        return out

    def mlps(self) -> list[int]:
        g = self.graph
        return [g.source_layer(s) for s in self.nodes.nonzero().flatten().tolist() if s and s % (g.n_heads + 1) == 0]


def _ranked(scores: torch.Tensor, graph: Graph, absolute: bool) -> torch.Tensor:
    s = scores.abs() if absolute else scores.clone()
    valid = graph.valid if s.dim() == 2 else graph.valid.expand_as(s)
    return torch.where(valid, s.float(), torch.tensor(-torch.inf))


def top_n(scores: torch.Tensor, graph: Graph, n: int, *, absolute: bool = True, prune: bool = True) -> Circuit:
    """The ``n`` best-scoring edges (by ``|score|`` when ``absolute``), pruned when ``prune``."""
    n = int(n)
    if n < 0 or n > graph.n_edges:
        raise InputError(f"Cannot take {n} edges of a graph with {graph.n_edges}.")
    ranked = _ranked(scores, graph, absolute).flatten()
    keep = torch.zeros(ranked.numel(), dtype=torch.bool)
    if n:
        # stable order: ties broken by edge index, as a sort is in EAP-IG
        order = torch.sort(ranked, descending=True, stable=True).indices[:n]
        keep[order] = True
    circuit = Circuit(graph, keep.view(scores.shape))
    return pruned(circuit) if prune else circuit


def threshold(
    scores: torch.Tensor, graph: Graph, value: float, *, absolute: bool = True, prune: bool = True
) -> Circuit:
    """Every edge whose (absolute) score is at least ``value``."""
    circuit = Circuit(graph, _ranked(scores, graph, absolute) >= float(value))
    return pruned(circuit) if prune else circuit


def greedy(scores: torch.Tensor, graph: Graph, n: int, *, absolute: bool = True, prune: bool = True) -> Circuit:
    """``n`` edges chosen from the logits backwards: start with the edges into the logits; take the best edge
    into a node already in the circuit; a newly reached source node adds its own incoming edges as candidates."""
    if scores.dim() != 2:
        raise InputError("Greedy selection works on edges summed over positions: pass scores [sources, destinations].")
    n = int(n)
    if n < 0 or n > graph.n_edges:
        raise InputError(f"Cannot take {n} edges of a graph with {graph.n_edges}.")
    ranked = _ranked(scores, graph, absolute)
    keep = torch.zeros_like(graph.valid)
    heap: list[tuple[float, int, int]] = []

    def push_into(dst: int) -> None:
        for s in range(graph.prev(dst)):
            heapq.heappush(heap, (-float(ranked[s, dst]), s, dst))

    push_into(graph.logits_destination)
    reached = torch.zeros(graph.n_sources, dtype=torch.bool)
    owners = graph.owners
    done_dst = torch.zeros(graph.n_destinations, dtype=torch.bool)
    done_dst[graph.logits_destination] = True
    while n > 0 and heap:
        _, s, d = heapq.heappop(heap)
        if keep[s, d]:
            continue
        keep[s, d] = True
        n -= 1
        if s and not reached[s]:
            reached[s] = True
            for dst in owners[s].nonzero().flatten().tolist():
                if not done_dst[dst]:
                    done_dst[dst] = True
                    push_into(dst)
    circuit = Circuit(graph, keep)
    return pruned(circuit) if prune else circuit


def pruned(circuit: Circuit) -> Circuit:
    """The part of ``circuit`` connected from the input to the logits (EAP-IG's pruning rule)."""
    g = circuit.graph
    edges = circuit.edges.clone()
    owners = g.owners.float()
    flat = edges if edges.dim() == 2 else None
    nodes = None
    while True:
        e2 = flat if flat is not None else edges.any(0)
        has_out = e2.any(1)
        has_in = (e2.any(0).float() @ owners.T) > 0
        has_in[0] = True
        new_nodes = has_out & has_in
        if nodes is not None and torch.equal(new_nodes, nodes):
            break
        nodes = new_nodes
        dst_alive = (nodes.float() @ owners) > 0
        dst_alive[g.logits_destination] = True
        alive = nodes[:, None] & dst_alive[None, :]
        edges &= alive if edges.dim() == 2 else alive[None]
        flat = edges if edges.dim() == 2 else None
    return Circuit(g, edges)


def random_scores(graph: Graph, seed: int) -> torch.Tensor:
    """Uniform random edge scores (the random-circuit baseline selects by these)."""
    gen = torch.Generator().manual_seed(int(seed))
    shape = (graph.n_pos, graph.n_sources, graph.n_destinations) if graph.n_pos else graph.valid.shape
    return torch.rand(shape, generator=gen)
