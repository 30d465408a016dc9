"""The attribution-graph viewer in headless Chromium with the network off: it draws, hovering shows a node, clicking
lists its inputs and outputs, the threshold slider hides nodes, and nothing is fetched."""

from __future__ import annotations

import json

import pytest

from codecircuits.graphs import attribute
from codecircuits.transcoders import random_transcoders


@pytest.fixture(scope="module")
def graph(tiny_dirs):
    from codecircuits import load_model

    model = load_model(tiny_dirs["llama"], device="cpu")
    return attribute(model, "print(str(str(123", random_transcoders(model, 32, activation="topk", k=4), progress=False)


def test_viewer_page(graph, tmp_path):
    from browser import open_report

    view = graph.show(dashboards={})
    path = view.save(tmp_path / "graph.html")
    html = path.read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html.replace("https://d3js.org", "")
    assert "<iframe srcdoc=" in view._repr_html_()
    feature = next(n["node_id"] for n in view.data["nodes"] if n["feature_type"] == "cross layer transcoder")
    page = open_report(
        path,
        tmp_path / "graph.png",
        evaluate=(
            "document.querySelectorAll('.cc-node').length",
            "document.querySelectorAll('.cc-edges path').length",
            f"(ccGraph.select({json.dumps(feature)}), document.querySelector('.cc-detail h4').textContent)",
            "(document.querySelector('#cc-threshold').value = 0.05, ccGraph.draw(), document.querySelectorAll('.cc-node').length)",
            "(() => { const n = document.querySelector('.cc-node'); n.dispatchEvent(new MouseEvent('mouseenter')); return document.querySelector('.cc-tip').textContent; })()",
        ),
    )
    assert not page.console_errors, page.console_errors
    assert not page.outgoing and not page.failed_requests
    n_nodes, n_edges, heading, fewer, tip = page.evaluated
    start = view.data["metadata"]["node_threshold"]  # the slider starts there; the page holds a looser graph
    expected = [n for n in view.data["nodes"] if n["feature_type"] in ("embedding", "logit") or n["influence"] <= start]
    assert n_nodes == len(expected) < len(view.data["nodes"]) and n_edges > 0
    assert heading.startswith("L") and "#" in heading
    assert fewer < n_nodes
    assert "activation" in tip and "influence" in tip
