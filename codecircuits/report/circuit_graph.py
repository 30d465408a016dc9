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
    circuit,
    scores=None,
    *,
    marks: Mapping[str, str] | None = None,
    max_edges: int = 2500,
    width: int = 860,
) -> str:
    """The SVG of ``circuit`` (a :class:`codecircuits.circuits.Circuit` on edges summed over positions).

    ``scores``: an :class:`~codecircuits.circuits.EdgeScores` or a ``[n_sources, n_destinations]`` tensor (edge
    width by ``|score|``, colour by sign: red positive, blue negative; without scores every edge is drawn grey
    at one width). ``marks`` maps head labels (``"L3H7"``) to a category name (``"paren-promoting"``); marked
    heads get a coloured outline and a legend entry. At most ``max_edges`` edges are drawn, the largest
    ``|score|`` first; the SVG says how many were left out (``data-edges-omitted``).
    """
    g = circuit.graph
    edges = circuit.edges if circuit.edges.dim() == 2 else circuit.edges.any(0)
    if scores is not None and hasattr(scores, "edge_matrix"):
        scores = scores.edge_matrix
    if scores is not None:
        scores = torch.as_tensor(scores).float()
        if scores.shape != edges.shape:
            raise InputError(f"scores of shape {tuple(scores.shape)} do not fit the circuit's {tuple(edges.shape)}.")
    marks = dict(marks or {})
    pairs = edges.nonzero().tolist()
    if scores is not None:
        pairs.sort(key=lambda sd: -abs(float(scores[sd[0], sd[1]])))
    omitted = max(0, len(pairs) - int(max_edges))
    pairs = pairs[: int(max_edges)]

    # ------------------------------------------------------------------ nodes and rows
    nodes = circuit.nodes.clone()
    for _, d in pairs:  # a destination's owner is a node even when it has no outgoing edge (e.g. pruned off)
        kind, layer, slot = _kind(g, d)
        if kind == "q":
            nodes[g.head_source(layer, slot)] = True
        elif kind == "mlp":
            nodes[g.mlp_source(layer)] = True
        elif kind in ("k", "v") and not (g.grouped and g.group_size > 1):
            nodes[g.head_source(layer, slot)] = True
    node_ids = [int(i) for i in nodes.nonzero().flatten().tolist() if i]
    layers = sorted(
        {g.source_layer(i) for i in node_ids} | {_kind(g, d)[1] for _, d in pairs if d != g.logits_destination}
    )
    has_logits = bool(edges[:, g.logits_destination].any())
    n_rows = len(layers) + 2
    row_h = 58.0
    left, right, top = 54.0, 70.0, 34.0
    cols = g.n_heads + 1
    col_w = max(30.0, min(84.0, (width - left - right) / (cols + 0.5)))
    plot_w = col_w * (cols + 0.5)
    width = int(left + plot_w + right)
    legend_h = 44 + 16 * math.ceil(len(set(marks.values())) / 3) + (16 if omitted else 0)
    height = int(top + row_h * (n_rows - 1) + 30 + legend_h)
    row_of = {layer: i + 1 for i, layer in enumerate(layers)}

    def y_of(row: int) -> float:
        return top + row_h * (n_rows - 1 - row)

    def head_x(h: int) -> float:
        return left + col_w * (h + 0.5)

    mlp_x = left + col_w * (g.n_heads + 1.0)
    mid_x = left + plot_w / 2
    r_head = min(11.0, col_w * 0.28)

    def src_xy(s: int) -> tuple[float, float]:
        if s == 0:
            return mid_x, y_of(0) - 9
        layer = g.source_layer(s)
        h = s - g.head_source(layer)
        y = y_of(row_of[layer])
        return (head_x(h), y - r_head) if h < g.n_heads else (mlp_x, y - 9)

    port = g.grouped and g.group_size > 1

    def dst_xy(d: int) -> tuple[float, float]:
        kind, layer, slot = _kind(g, d)
        if kind == "logits":
            return mid_x, y_of(n_rows - 1) + 9
        y = y_of(row_of[layer])
        if kind == "mlp":
            return mlp_x, y + 9
        if kind == "q" or not port:
            return head_x(slot), y + r_head
        first = slot * g.group_size
        return head_x(first + (g.group_size - 1) / 2), y + r_head + 9

    biggest = max((abs(float(scores[s, d])) for s, d in pairs), default=0.0) if scores is not None else 0.0
    out = [
        f'<svg class="cc-circuit" data-kind="circuit-graph" data-edges="{len(pairs)}" data-edges-omitted="{omitted}" '
        f'data-nodes="{len(node_ids) + 1 + has_logits}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="circuit graph, {len(pairs)} edges">'
    ]
    # row guides and labels
    out.append('<g class="grid">')
    for layer, row in row_of.items():
        y = y_of(row)
        out.append(f'<line x1="{left}" x2="{left + plot_w:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">L{layer}</text>')
    out.append("</g>")
    # edges, weakest first so the strongest are on top
    out.append('<g class="edges" fill="none" stroke-linecap="round">')
    for s, d in reversed(pairs):
        x1, y1 = src_xy(s)
        x2, y2 = dst_xy(d)
        kind = _kind(g, d)[0]
        v = float(scores[s, d]) if scores is not None else float("nan")
        if scores is None:
            colour, w, alpha = "#7f7f7f", 1.0, 0.5
        else:
            frac = abs(v) / biggest if biggest > 0 else 0.0
            colour = POSITIVE if v >= 0 else NEGATIVE
            w, alpha = 0.4 + 4.6 * frac, 0.25 + 0.7 * frac
        dy = max(18.0, abs(y1 - y2) * 0.45)
        bx = 0.0  # an edge between two rows of one column that skips rows bows sideways, clear of the nodes between
        if abs(x1 - x2) < 1.0 and abs(y1 - y2) > row_h + 30:
            bx = min(col_w * 0.9, 14.0 + 6.0 * abs(y1 - y2) / row_h) * (1 if x1 >= mlp_x - 1 else -1)
        dash = f' stroke-dasharray="{_DASH[kind]}"' if _DASH[kind] else ""
        tip = g.edge_name(s, d) + ("" if scores is None else f": score {format_value(v, digits=4)}")
        out.append(
            f'<path class="edge" data-edge-kind="{kind}" d="M{x1:.1f},{y1:.1f} C{x1 + bx:.1f},{y1 - dy:.1f} {x2 + bx:.1f},'
            f'{y2 + dy:.1f} {x2:.1f},{y2:.1f}" stroke="{colour}" stroke-width="{w:.2f}" stroke-opacity="{alpha:.2f}"'
            f"{dash}><title>{esc(tip)}</title></path>"
        )
    out.append("</g>")
    # nodes
    node_score = edges_score = None
    if scores is not None:
        kept = scores * edges.float()
        node_score, edges_score = kept.sum(1), kept.sum(0)
    mark_colour = {m: MARK_COLOURS[i % len(MARK_COLOURS)] for i, m in enumerate(dict.fromkeys(marks.values()))}
    out.append('<g class="nodes">')

    def box(x, y, w, h, label, tip, cls):
        out.append(
            f'<g class="node {cls}"><rect x="{x - w / 2:.1f}" y="{y - h / 2:.1f}" width="{w:.1f}" height="{h:.1f}" '
            f'rx="4" fill="#f4f1e8" stroke="#5c5c5c"/><text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle">'
            f"{esc(label)}</text><title>{esc(tip)}</title></g>"
        )

    out_of = (
        (lambda s: f", outgoing score {format_value(float(node_score[s]), digits=4)}")
        if node_score is not None
        else (lambda s: "")
    )
    box(mid_x, y_of(0), 96, 18, "input", "input (embeddings)" + out_of(0), "input")
    if has_logits:
        into = f", incoming score {format_value(float(edges_score[-1]), digits=4)}" if edges_score is not None else ""
        box(mid_x, y_of(n_rows - 1), 96, 18, "logits", "logits" + into, "logits")
    for s in node_ids:
        layer = g.source_layer(s)
        h = s - g.head_source(layer)
        y = y_of(row_of[layer])
        if h == g.n_heads:
            box(mlp_x, y, min(46.0, col_w * 0.9), 18, f"m{layer}", f"m{layer} (MLP {layer})" + out_of(s), "mlp")
            continue
        label = f"L{layer}H{h}"
        mark = marks.get(label)
        stroke = mark_colour[mark] if mark else "#5c5c5c"
        sw = 3 if mark else 1
        tip = f"a{layer}.h{h} ({label})" + out_of(s) + (f"; {mark}" if mark else "")
        attr = f' data-mark="{esc(mark)}"' if mark else ""
        out.append(
            f'<g class="node head"{attr}><circle cx="{head_x(h):.1f}" '
            f'cy="{y:.1f}" r="{r_head:.1f}" fill="#fff" stroke="{stroke}" stroke-width="{sw}"/><text '
            f'x="{head_x(h):.1f}" y="{y + 3.5:.1f}" text-anchor="middle" font-size="9">h{h}</text>'
            f"<title>{esc(tip)}</title></g>"
        )
    if port:
        ports = sorted({(_kind(g, d)[1], _kind(g, d)[2]) for _, d in pairs if _kind(g, d)[0] in ("k", "v")})
        for layer, slot in ports:
            x = head_x(slot * g.group_size + (g.group_size - 1) / 2)
            y = y_of(row_of[layer]) + r_head + 9
            out.append(
                f'<g class="node port"><rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="#5c5c5c"/>'
                f"<title>{esc(f'a{layer}.g{slot}: the key/value input of heads {slot * g.group_size}-{(slot + 1) * g.group_size - 1}')}</title></g>"
            )
    out.append("</g>")
    # legend
    ly = top + row_h * (n_rows - 1) + 34
    items = [
        ("q", "query edge", ""),
        ("k", "key edge", _DASH["k"]),
        ("v", "value edge", _DASH["v"]),
    ]
    out.append('<g class="legend">')
    x = left
    for _, text, dash in items:
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
        mx = left + (i % 3) * 250
        my = ly + 20 + 16 * (i // 3)
        out.append(f'<circle cx="{mx + 8}" cy="{my}" r="6" fill="#fff" stroke="{colour}" stroke-width="3"/>')
        out.append(f'<text x="{mx + 20}" y="{my + 4}">{esc(mark)}</text>')
    if omitted:
        out.append(
            f'<text x="{left}" y="{height - 6}">{omitted} weaker edges not drawn (the {len(pairs)} largest |score| are)</text>'
        )
    out.append("</g></svg>")
    return "".join(out)


def circuit_graph(circuit, scores=None, *, title: str | None = None, caption: str | None = None, **kwargs):
    """The graph of ``circuit`` as a report :class:`~codecircuits.report.elements.Fragment` (a titled figure);
    ``Report.add`` takes it. ``kwargs`` go to :func:`circuit_graph_svg`."""
    from .elements import Fragment, figure

    return Fragment(figure(circuit_graph_svg(circuit, scores, **kwargs), title, caption, "circuit-graph"))
