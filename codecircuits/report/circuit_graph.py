"""A circuit drawn as a static SVG graph: the input at the bottom, heads and MLPs row by row upward by layer, the
logits at the top; one curve per edge, its width by ``|score|`` and its colour by the score's sign.

It needs no JavaScript and no plotting library, like :mod:`codecircuits.figures.svg`. Query edges are solid, key
edges dashed and value edges dotted; in the grouped view of a grouped-query model a key or value edge ends at
the small port under the heads of its key/value group (the input they share). Only layers with a node of the
circuit get a row; every node and edge carries a ``<title>`` tooltip with its name and score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import InputError
from ._util import esc, format_value

POSITIVE = "#c0392b"  # the edge supports the metric (removing it lowers the metric)
NEGATIVE = "#2166ac"
#: outline colours of marked heads, by mark (e.g. the heads another method found), in order of first use
MARK_COLOURS = ("#e08214", "#1b9e77", "#7570b3", "#e7298a", "#66a61e")
_DASH = {"q": "", "k": "6 3", "v": "1.6 2.6", "mlp": "", "logits": ""}


def _kind(graph, dst: int) -> tuple[str, int, int]:
    """``(kind, layer, slot)`` of a destination: kind is q, k, v, mlp or logits."""
    if dst == graph.logits_destination:
        return "logits", graph.n_layers, 0
    layer, slot = divmod(dst, graph.per_layer)
    h, kv = graph.n_heads, graph.kv
    if slot < h:
        return "q", layer, slot
    if slot < h + kv:
        return "k", layer, slot - h
    if slot < h + 2 * kv:
        return "v", layer, slot - h - kv
    return "mlp", layer, 0


def circuit_graph_svg(
    circuit, scores=None, *, marks: Mapping[str, str] | None = None, max_edges: int = 2500, width: int = 860
) -> str:
    """The SVG of ``circuit`` (a :class:`codecircuits.circuits.Circuit` on edges summed over positions).

    ``scores``: an :class:`~codecircuits.circuits.EdgeScores` or a ``[n_sources, n_destinations]`` tensor (edge
    width by ``|score|``, colour by sign: red positive, blue negative; without scores every edge is drawn grey
    at one width). ``marks`` maps head labels (``"L3H7"``) to a category name (``"paren-promoting"``); marked
    heads get a coloured outline and a legend entry. At most ``max_edges`` edges are drawn, the largest
    ``|score|`` first; the SVG says how many were left out (``data-edges-omitted``).
    """
    g = circuit.graph
    edges, scores, pairs, omitted = _drawn_edges(circuit, scores, max_edges)
    marks = dict(marks or {})
    node_ids = _drawn_nodes(circuit, pairs)
    has_logits = bool(edges[:, g.logits_destination].any())
    lay = _layout(g, node_ids, pairs, width=width, n_marks=len(set(marks.values())), omitted=omitted)
    mark_colour = {m: MARK_COLOURS[i % len(MARK_COLOURS)] for i, m in enumerate(dict.fromkeys(marks.values()))}
    out = [
        f'<svg class="cc-circuit" data-kind="circuit-graph" data-edges="{len(pairs)}" data-edges-omitted="{omitted}" '
        f'data-nodes="{len(node_ids) + 1 + has_logits}" xmlns="http://www.w3.org/2000/svg" width="{lay.width}" '
        f'height="{lay.height}" viewBox="0 0 {lay.width} {lay.height}" role="img" '
        f'aria-label="circuit graph, {len(pairs)} edges">'
    ]
    out += _grid_svg(lay)
    out += _edges_svg(lay, pairs, scores)
    out += _nodes_svg(lay, node_ids, pairs, edges, scores, marks, mark_colour, has_logits)
    out += _legend_svg(lay, scores, mark_colour, omitted, len(pairs))
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------- the steps
_ROW_H = 58.0  # between two rows (layers)
_LEFT, _RIGHT, _TOP = 54.0, 70.0, 34.0  # margins around the plot


def _drawn_edges(circuit, scores, max_edges: int):
    """``(edges, scores, pairs, omitted)``: the circuit's ``[source, destination]`` edge matrix (summed over
    positions), the scores as a float tensor of its shape (or None), the ``[source, destination]`` pairs to
    draw (the largest ``|score|`` first) and how many edges were left out beyond ``max_edges``."""
    edges = circuit.edges if circuit.edges.dim() == 2 else circuit.edges.any(0)
    if scores is not None and hasattr(scores, "edge_matrix"):
        scores = scores.edge_matrix
    if scores is not None:
        scores = torch.as_tensor(scores).float()
        if scores.shape != edges.shape:
            raise InputError(f"scores of shape {tuple(scores.shape)} do not fit the circuit's {tuple(edges.shape)}.")
    pairs = edges.nonzero().tolist()
    if scores is not None:
        pairs.sort(key=lambda sd: -abs(float(scores[sd[0], sd[1]])))
    omitted = max(0, len(pairs) - int(max_edges))
    return edges, scores, pairs[: int(max_edges)], omitted


def _drawn_nodes(circuit, pairs) -> list[int]:
    """The source nodes drawn besides the input (which is always drawn): the circuit's own, and the owner of
    every drawn edge's destination even when it has no outgoing edge (e.g. pruned off)."""
    g = circuit.graph
    nodes = circuit.nodes.clone()
    for _, d in pairs:
        kind, layer, slot = _kind(g, d)
        if kind == "q":
            nodes[g.head_source(layer, slot)] = True
        elif kind == "mlp":
            nodes[g.mlp_source(layer)] = True
        elif kind in ("k", "v") and not (g.grouped and g.group_size > 1):
            nodes[g.head_source(layer, slot)] = True
    return [int(i) for i in nodes.nonzero().flatten().tolist() if i]


@dataclass(frozen=True)
class _Layout:
    """Where things go: row 0 is the input, rows ``1..`` the layers with a node (``row_of``), the last row the
    logits; one column per head and, right of them, one for the MLPs."""

    graph: object
    row_of: dict[int, int]  # layer -> row
    n_rows: int
    col_w: float
    plot_w: float
    width: int
    height: int
    r_head: float  # radius of a head's circle
    port: bool  # key/value edges end at the port of their key/value group (grouped view of grouped-query)

    @property
    def mlp_x(self) -> float:
        return _LEFT + self.col_w * (self.graph.n_heads + 1.0)

    @property
    def mid_x(self) -> float:
        return _LEFT + self.plot_w / 2

    def y_of(self, row: int) -> float:
        return _TOP + _ROW_H * (self.n_rows - 1 - row)

    def head_x(self, h: float) -> float:
        return _LEFT + self.col_w * (h + 0.5)

    def port_xy(self, layer: int, slot: int) -> tuple[float, float]:
        """The centre of the key/value port of group ``slot`` in ``layer``, under the middle of its heads."""
        gs = self.graph.group_size
        return self.head_x(slot * gs + (gs - 1) / 2), self.y_of(self.row_of[layer]) + self.r_head + 9

    def src_xy(self, s: int) -> tuple[float, float]:
        """Where an edge leaves source node ``s`` (the top of its node)."""
        g = self.graph
        if s == 0:
            return self.mid_x, self.y_of(0) - 9
        layer = g.source_layer(s)
        h = s - g.head_source(layer)
        y = self.y_of(self.row_of[layer])
        return (self.head_x(h), y - self.r_head) if h < g.n_heads else (self.mlp_x, y - 9)

    def dst_xy(self, d: int) -> tuple[float, float]:
        """Where an edge enters destination ``d`` (the bottom of its node, or its key/value port)."""
        kind, layer, slot = _kind(self.graph, d)
        if kind == "logits":
            return self.mid_x, self.y_of(self.n_rows - 1) + 9
        y = self.y_of(self.row_of[layer])
        if kind == "mlp":
            return self.mlp_x, y + 9
        if kind == "q" or not self.port:
            return self.head_x(slot), y + self.r_head
        return self.port_xy(layer, slot)


def _layout(g, node_ids: list[int], pairs, *, width: int, n_marks: int, omitted: int) -> _Layout:
    """The geometry of the drawing: one row per layer with a drawn node or destination, columns fitted to
    ``width``, room below for the legend (a line per three marks, one for the omitted-edges note)."""
    layers = sorted(
        {g.source_layer(i) for i in node_ids} | {_kind(g, d)[1] for _, d in pairs if d != g.logits_destination}
    )
    n_rows = len(layers) + 2
    cols = g.n_heads + 1
    col_w = max(30.0, min(84.0, (width - _LEFT - _RIGHT) / (cols + 0.5)))
    plot_w = col_w * (cols + 0.5)
    legend_h = 44 + 16 * math.ceil(n_marks / 3) + (16 if omitted else 0)
    return _Layout(
        graph=g, row_of={layer: i + 1 for i, layer in enumerate(layers)}, n_rows=n_rows, col_w=col_w, plot_w=plot_w,
        width=int(_LEFT + plot_w + _RIGHT), height=int(_TOP + _ROW_H * (n_rows - 1) + 30 + legend_h),
        r_head=min(11.0, col_w * 0.28), port=g.grouped and g.group_size > 1,
    )


def _grid_svg(lay: _Layout) -> list[str]:
    """A guide line and a label per layer row."""
    out = ['<g class="grid">']
    for layer, row in lay.row_of.items():
        y = lay.y_of(row)
        out.append(f'<line x1="{_LEFT}" x2="{_LEFT + lay.plot_w:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text x="{_LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">L{layer}</text>')
    out.append("</g>")
    return out


def _edges_svg(lay: _Layout, pairs, scores) -> list[str]:
    """One curve per edge, the weakest first so that the strongest are drawn on top."""
    biggest = max((abs(float(scores[s, d])) for s, d in pairs), default=0.0) if scores is not None else 0.0
    out = ['<g class="edges" fill="none" stroke-linecap="round">']
    out += [_edge_svg(lay, s, d, scores, biggest) for s, d in reversed(pairs)]
    out.append("</g>")
    return out


def _edge_svg(lay: _Layout, s: int, d: int, scores, biggest: float) -> str:
    """The curve of edge ``s -> d``: width and opacity by ``|score| / biggest``, colour by sign, dashes by kind."""
    x1, y1 = lay.src_xy(s)
    x2, y2 = lay.dst_xy(d)
    kind = _kind(lay.graph, d)[0]
    v = float(scores[s, d]) if scores is not None else float("nan")
    if scores is None:
        colour, w, alpha = "#7f7f7f", 1.0, 0.5
    else:
        frac = abs(v) / biggest if biggest > 0 else 0.0
        colour = POSITIVE if v >= 0 else NEGATIVE
        w, alpha = 0.4 + 4.6 * frac, 0.25 + 0.7 * frac
    dy = max(18.0, abs(y1 - y2) * 0.45)
    bx = 0.0  # an edge between two rows of one column that skips rows bows sideways, clear of the nodes between
    if abs(x1 - x2) < 1.0 and abs(y1 - y2) > _ROW_H + 30:
        bx = min(lay.col_w * 0.9, 14.0 + 6.0 * abs(y1 - y2) / _ROW_H) * (1 if x1 >= lay.mlp_x - 1 else -1)
    dash = f' stroke-dasharray="{_DASH[kind]}"' if _DASH[kind] else ""
    tip = lay.graph.edge_name(s, d) + ("" if scores is None else f": score {format_value(v, digits=4)}")
    return (
        f'<path class="edge" data-edge-kind="{kind}" d="M{x1:.1f},{y1:.1f} C{x1 + bx:.1f},{y1 - dy:.1f} {x2 + bx:.1f},'
        f'{y2 + dy:.1f} {x2:.1f},{y2:.1f}" stroke="{colour}" stroke-width="{w:.2f}" stroke-opacity="{alpha:.2f}"'
        f"{dash}><title>{esc(tip)}</title></path>"
    )


def _nodes_svg(lay: _Layout, node_ids, pairs, edges, scores, marks, mark_colour, has_logits: bool) -> list[str]:
    """The input and logits boxes, a circle per head (outlined by its mark), a box per MLP and, in the grouped
    view of a grouped-query model, a port per key/value group that a drawn edge ends at."""
    g = lay.graph
    node_score = edges_score = None
    if scores is not None:
        kept = scores * edges.float()
        node_score, edges_score = kept.sum(1), kept.sum(0)

    def out_of(s: int) -> str:
        return f", outgoing score {format_value(float(node_score[s]), digits=4)}" if node_score is not None else ""

    out = ['<g class="nodes">']
    out.append(_box(lay.mid_x, lay.y_of(0), 96, 18, "input", "input (embeddings)" + out_of(0), "input"))
    if has_logits:
        into = f", incoming score {format_value(float(edges_score[-1]), digits=4)}" if edges_score is not None else ""
        out.append(_box(lay.mid_x, lay.y_of(lay.n_rows - 1), 96, 18, "logits", "logits" + into, "logits"))
    for s in node_ids:
        layer = g.source_layer(s)
        h = s - g.head_source(layer)
        y = lay.y_of(lay.row_of[layer])
        if h == g.n_heads:
            tip = f"m{layer} (MLP {layer})" + out_of(s)
            out.append(_box(lay.mlp_x, y, min(46.0, lay.col_w * 0.9), 18, f"m{layer}", tip, "mlp"))
        else:
            out.append(_head_svg(lay, layer, h, marks, mark_colour, out_of(s)))
    if lay.port:
        out += _ports_svg(lay, pairs)
    out.append("</g>")
    return out


def _box(x, y, w, h, label, tip, cls) -> str:
    """A labelled box (the input, the logits, an MLP) centred on ``(x, y)``."""
    return (
        f'<g class="node {cls}"><rect x="{x - w / 2:.1f}" y="{y - h / 2:.1f}" width="{w:.1f}" height="{h:.1f}" '
        f'rx="4" fill="#f4f1e8" stroke="#5c5c5c"/><text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle">'
        f"{esc(label)}</text><title>{esc(tip)}</title></g>"
    )


def _head_svg(lay: _Layout, layer: int, h: int, marks, mark_colour, score_note: str) -> str:
    """The circle of head ``h`` of ``layer``, outlined in its mark's colour when it has one."""
    label = f"L{layer}H{h}"
    mark = marks.get(label)
    stroke = mark_colour[mark] if mark else "#5c5c5c"
    sw = 3 if mark else 1
    tip = f"a{layer}.h{h} ({label})" + score_note + (f"; {mark}" if mark else "")
    attr = f' data-mark="{esc(mark)}"' if mark else ""
    x, y = lay.head_x(h), lay.y_of(lay.row_of[layer])
    return (
        f'<g class="node head"{attr}><circle cx="{x:.1f}" '
        f'cy="{y:.1f}" r="{lay.r_head:.1f}" fill="#fff" stroke="{stroke}" stroke-width="{sw}"/><text '
        f'x="{x:.1f}" y="{y + 3.5:.1f}" text-anchor="middle" font-size="9">h{h}</text>'
        f"<title>{esc(tip)}</title></g>"
    )


def _ports_svg(lay: _Layout, pairs) -> list[str]:
    """A small square per key/value group that a drawn key or value edge ends at."""
    g = lay.graph
    kinds = (_kind(g, d) for _, d in pairs)
    ports = sorted({(layer, slot) for kind, layer, slot in kinds if kind in ("k", "v")})
    out = []
    for layer, slot in ports:
        x, y = lay.port_xy(layer, slot)
        tip = f"a{layer}.g{slot}: the key/value input of heads {slot * g.group_size}-{(slot + 1) * g.group_size - 1}"
        out.append(
            f'<g class="node port"><rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="#5c5c5c"/>'
            f"<title>{esc(tip)}</title></g>"
        )
    return out


def _legend_svg(lay: _Layout, scores, mark_colour, omitted: int, n_drawn: int) -> list[str]:
    """Under the plot: the edge kinds' dashes, the score colours (with scores), the marks (three a line) and a
    note on the edges left out."""
    ly = _TOP + _ROW_H * (lay.n_rows - 1) + 34
    out = ['<g class="legend">']
    x = _LEFT
    for text, dash in (("query edge", ""), ("key edge", _DASH["k"]), ("value edge", _DASH["v"])):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{x}" x2="{x + 26}" y1="{ly}" y2="{ly}" stroke="#333" stroke-width="2"{d}/>')
        out.append(f'<text x="{x + 32}" y="{ly + 4}">{esc(text)}</text>')
        x += 120
    if scores is not None:
        for colour, text in ((POSITIVE, "positive score"), (NEGATIVE, "negative score")):
            out.append(f'<line x1="{x}" x2="{x + 26}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="3"/>')
            out.append(f'<text x="{x + 32}" y="{ly + 4}">{esc(text)}</text>')
            x += 130
    for i, (mark, colour) in enumerate(mark_colour.items()):
        mx = _LEFT + (i % 3) * 250
        my = ly + 20 + 16 * (i // 3)
        out.append(f'<circle cx="{mx + 8}" cy="{my}" r="6" fill="#fff" stroke="{colour}" stroke-width="3"/>')
        out.append(f'<text x="{mx + 20}" y="{my + 4}">{esc(mark)}</text>')
    if omitted:
        out.append(
            f'<text x="{_LEFT}" y="{lay.height - 6}">{omitted} weaker edges not drawn (the {n_drawn} largest |score| are)</text>'
        )
    out.append("</g>")
    return out


def circuit_graph(circuit, scores=None, *, title: str | None = None, caption: str | None = None, **kwargs):
    """The graph of ``circuit`` as a report :class:`~codecircuits.report.elements.Fragment` (a titled figure);
    ``Report.add`` takes it. ``kwargs`` go to :func:`circuit_graph_svg`."""
    from .elements import Fragment, figure

    return Fragment(figure(circuit_graph_svg(circuit, scores, **kwargs), title, caption, "circuit-graph"))
