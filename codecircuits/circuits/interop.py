"""Interoperation with other tools: TransformerLens's edge attribution results, and EAP-IG's graph files (``Graph.to_json`` / ``Graph.from_json`` in hannamw/EAP-IG and MIB's circuit track): read
and written, so that scores and circuits move between codecircuits, EAP-IG and MIB's evaluation.

The file is ``{"cfg": {n_layers, n_heads, parallel_attn_mlp, d_model}, "nodes": {name: {"in_graph": ..}},
"edges": {name: {"score": .., "in_graph": ..}}}`` with EAP-IG's names (``input->a0.h0<q>``, ``a3.h1->m5``,
``m11->logits``). EAP-IG's graph is ungrouped, so a grouped graph of a grouped-query model is written with each
key/value group's edge repeated under every query head of the group, its score split evenly between them (the
group's score is their sum, as it is for ungrouped scores); ``cfg`` then also holds ``n_key_value_heads`` and
``"grouped": true`` so that reading it back restores the grouped scores exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import InputError
from .attribution import EdgeScores
from .graph import Graph
from .selection import Circuit


def _ungrouped_pairs(graph: Graph):
    """``(source, destination in graph, ungrouped destination name, share)`` of every edge, EAP-IG's names."""
    flat = graph.with_view(grouped=False)
    for s, d in flat.valid.nonzero().tolist():
        name = flat.edge_name(s, d)
        if graph.grouped and graph.group_size > 1:
            gs, gd = graph.edge_index(name)
            yield gs, gd, name, (1.0 / graph.group_size if name.endswith(("<k>", "<v>")) else 1.0)
        else:
            yield s, d, name, 1.0


def write_eapig(path, scores: EdgeScores | None = None, circuit: Circuit | None = None) -> Path:
    """Write ``scores`` (and which edges ``circuit`` keeps; every edge when none) as an EAP-IG graph file."""
    if scores is None and circuit is None:
        raise InputError("Give edge scores, a circuit, or both to write.")
    graph = scores.graph if scores is not None else circuit.graph
    if graph.n_pos:
        raise InputError("EAP-IG's files hold edges summed over positions: write scores with per_position=False.")
    m = scores.edge_matrix if scores is not None else torch.zeros(graph.valid.shape)
    keep = circuit.edges if circuit is not None else graph.valid
    grouped = graph.grouped and graph.group_size > 1
    cfg = {
        "n_layers": graph.n_layers,
        "n_heads": graph.n_heads,
        "parallel_attn_mlp": graph.parallel,
        "d_model": graph.d_model,
    }
    if grouped:
        cfg.update(n_key_value_heads=graph.n_kv_heads, grouped=True)
    edges = {}
    for s, d, name, share in _ungrouped_pairs(graph):
        edges[name] = {"score": float(m[s, d]) * share, "in_graph": bool(keep[s, d])}
    nodes_in = Circuit(graph, keep).nodes if circuit is not None else torch.ones(graph.n_sources, dtype=torch.bool)
    nodes = {n: {"in_graph": bool(nodes_in[i])} for i, n in enumerate(graph.source_names)}
    nodes["logits"] = {"in_graph": True}
    if scores is not None:
        for i, n in enumerate(graph.source_names):
            nodes[n]["score"] = float(scores.node_scores[i])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cfg": cfg, "nodes": nodes, "edges": edges}))
    return path


def read_eapig(path, *, method: str = "EAP-IG file") -> tuple[EdgeScores, Circuit]:
    """Edge scores and the circuit (its ``in_graph`` edges) of an EAP-IG graph file."""
    try:
        d = json.loads(Path(path).read_text())
        cfg, edges = d["cfg"], d["edges"]
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: not an EAP-IG graph file ({e}); expected keys cfg, nodes and edges.") from None
    n_kv = int(cfg.get("n_key_value_heads", cfg["n_heads"]))
    graph = Graph(int(cfg["n_layers"]), int(cfg["n_heads"]), n_kv, int(cfg["d_model"]),
                  bool(cfg.get("parallel_attn_mlp", False)), grouped=bool(cfg.get("grouped", False)))
    scores = torch.zeros(graph.valid.shape)
    keep = torch.zeros(graph.valid.shape, dtype=torch.bool)
    for name, info in edges.items():
        s, dst = graph.edge_index(name)
        scores[s, dst] += float(info.get("score", 0.0))
        keep[s, dst] |= bool(info.get("in_graph", False))
    return EdgeScores(graph, scores, method, 1, 0), Circuit(graph, keep)


def from_transformer_lens(result, graph: Graph, *, n_examples: int = 0) -> EdgeScores:
    """TransformerLens 4.3's ``attribution_patch(..., EdgeAttributionConfig(granularity="edge"))`` result as
    :class:`EdgeScores` of ``graph`` (its per-position edges summed over positions). TransformerLens takes the
    gradient at the corrupted run (denoising), so its scores equal ``edge_scores`` with clean and corrupted
    swapped."""
    scores = torch.zeros(graph.valid.shape)
    dst_of = {"q_input": graph.q_destination, "k_input": graph.k_destination, "v_input": graph.v_destination}
    for (w, r), v in result.edge_scores.items():
        if w.kind == "embed":
            s = 0
        elif w.kind == "attn_head_out":
            s = graph.head_source(w.layer, w.head)
        else:
            s = graph.mlp_source(w.layer)
        if r.kind in dst_of:
            d = dst_of[r.kind](r.layer, r.head)
        else:
            d = graph.mlp_destination(r.layer) if r.kind == "mlp_in" else graph.logits_destination
        scores[s, d] += v
    return EdgeScores(graph, scores, "TransformerLens attribution_patch", 1, n_examples)
