"""The offline viewer of an attribution graph: one self-contained HTML page.

The page holds the graph's node-link JSON (circuit-tracer's format, pruned loosely so the page's threshold slider
can tighten it), d3 (``assets/d3.min.js``, d3 7.9.2 from npm, ISC licence beside it; ``scripts/vendor_graph_js.sh``
fetches it again) and our drawing code (``assets/graph.js``), all inline: it needs no network and no server.
circuit-tracer's own page loads d3 from a CDN and needs its local server.

Nodes sit by layer (rows, embeddings at the bottom, logits on top) and position (columns, the prompt's tokens
below); hovering shows a node's activation, influence, label and dashboard (top contexts, promoted tokens) when
the graph has one; clicking lists its strongest inputs and outputs; the slider keeps the nodes within a cumulative
share of the influence. In Jupyter the page shows inline, in an iframe.
"""

from __future__ import annotations

import functools
import html
import json
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"

STYLE = """
body{margin:0;font:13px system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2330;background:#fff}
.ccr{position:relative;padding:10px 14px}
h1{font-size:16px;margin:0 0 4px}.cc-meta{color:#5b6475;margin-bottom:8px}
.cc-controls{margin:6px 0 8px}.cc-controls input{vertical-align:middle;width:260px}
.cc-graph text{font-size:11px;fill:#2b3342}.cc-token{font-family:ui-monospace,monospace}
.cc-row{stroke:#eef1f5}.cc-node{cursor:pointer}.cc-edges path{fill:none}
.cc-tip{position:absolute;pointer-events:none;background:#fff;border:1px solid #b8c0cc;border-radius:4px;
padding:6px 8px;max-width:360px;box-shadow:0 2px 6px rgba(0,0,0,.15);font-size:12px}
.cc-detail{margin-top:10px;max-width:900px}.cc-detail h4{margin:4px 0}
.cc-links{border-collapse:collapse;margin:6px 18px 6px 0;display:inline-table;vertical-align:top}
.cc-links td,.cc-links th{padding:2px 8px;border-bottom:1px solid #eef1f5;text-align:left}
.pos{color:#2f6fb5}.neg{color:#c0392b}code{font-size:11px}
"""


@functools.cache
def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def _script_json(data) -> str:
    """JSON safe inside a ``<script>`` element."""
    return json.dumps(data).replace("</", "<\\/").replace("<!--", "<\\!--")


class GraphView:
    """The viewer page of a :class:`~codecircuits.graphs.Graph` (``graph.show()``): inline in Jupyter, ``save()``
    writes the standalone page. ``node_threshold``/``edge_threshold`` prune what the page holds (the slider tightens
    it further); ``dashboards`` maps node ids to ``{"label", "contexts", "promotes", "suppresses"}``."""

    def __init__(self, graph, *, node_threshold: float = 0.95, edge_threshold: float = 0.99, dashboards: dict | None = None,
                 title: str | None = None):
        self.data = graph.prune(node_threshold, edge_threshold).to_json(node_threshold, edge_threshold)
        self.data["metadata"]["node_threshold"] = min(0.8, node_threshold)
        if dashboards:
            self.data["dashboards"] = dashboards
        self.title = title or f"Attribution graph: {graph.prompt!r}"
        meta = graph.meta
        self.subtitle = (
            f"{meta.get('model', '')} · basis: {meta.get('basis', '')} {meta.get('scan', '') if meta.get('basis') != 'neurons' else ''}"
            f" · {graph.n_features} feature nodes of {meta.get('n_active', graph.n_features)} active · targets: "
            + ", ".join(f"{n!r}" for n in graph.target_names)
        )

    def to_html(self) -> str:
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head><body>"
            f"<div class='ccr' data-rendered='false'><h1>{html.escape(self.title)}</h1>"
            f"<div class='cc-meta'>{html.escape(self.subtitle)}</div></div>"
            f"<script>{_asset('d3.min.js')}</script>"
            f"<script>window.CC_GRAPH = {_script_json(self.data)};</script>"
            f"<script>{_asset('graph.js')}</script></body></html>"
        )

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(self.to_html(), encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        return (
            f'<iframe srcdoc="{html.escape(self.to_html(), quote=True)}" style="width:100%;height:760px;border:1px '
            'solid #dde2ea" sandbox="allow-scripts"></iframe>'
        )
