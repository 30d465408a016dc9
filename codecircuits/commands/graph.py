"""``codecircuits graph PROMPT --neurons | --transcoders DIR``: the attribution graph of a prompt's next token."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "graph"
HELP = "attribution graph of a prompt's next token, over MLP neurons or a transcoder set (JSON + offline viewer)"
DESCRIPTION = (
    "Builds the attribution graph of PROMPT in the local replacement model (attention and norms frozen; each MLP "
    "written in the basis: the model's own neurons with --neurons, the default, or a transcoder set in "
    "circuit-tracer's or SAELens's layout with --transcoders DIR), prunes it (node/edge thresholds of the influence), "
    "checks it against the linearised model and by interventions in the real model, and writes OUT/graph.json "
    "(circuit-tracer's node-link JSON, which its viewer and Neuronpedia read), OUT/graph.html (the offline viewer) and "
    "OUT/summary.json (sizes, scores, checks, timing). See docs/graphs.md."
)
DEFAULT_PROMPT = "print(str(str(123"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT, help=f"the prompt (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--model", default="smollm2-135m", help="model name or directory (default: smollm2-135m)")
    basis = p.add_mutually_exclusive_group()
    basis.add_argument("--neurons", action="store_true", help="the MLPs' own neurons as nodes (the default)")
    basis.add_argument("--transcoders", metavar="DIR", help="a transcoder set (circuit-tracer or SAELens layout)")
    p.add_argument("--target", action="append", default=None, metavar="TOKEN",
                   help="a logit target token (repeatable); default: the likeliest tokens up to 95%% probability, at most 10")
    p.add_argument("--diff", nargs=2, metavar=("PLUS", "MINUS"), help="target the logit difference PLUS − MINUS instead")
    p.add_argument("--max-feature-nodes", type=int, default=4096, help="cap on feature nodes (default 4096; 0: no cap)")
    p.add_argument("--node-threshold", type=float, default=0.8, help="share of influence the kept nodes cover (default 0.8)")
    p.add_argument("--edge-threshold", type=float, default=0.98, help="share of influence the kept edges cover (default 0.98)")
    p.add_argument("--memory-budget", default=None, help="bytes per batched backward, e.g. 2GB (default 2 GiB)")
    p.add_argument("--checks", type=int, default=10, help="top nodes to ablate in the real model (default 10; 0: none)")
    p.add_argument("--out", default="out/graph", help="output folder (default out/graph)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from ..graphs import attribute, check_edges, intervene
    from ..models import load_model

    model = load_model(args.model, device="cpu")
    basis = args.transcoders or "neurons"
    targets = {f"{args.diff[0]} − {args.diff[1]}": tuple(args.diff)} if args.diff else args.target
    graph = attribute(model, args.prompt, basis, targets=targets, max_feature_nodes=args.max_feature_nodes or None,
                      memory_budget=args.memory_budget, progress=not args.quiet)
    pruned = graph.prune(args.node_threshold, args.edge_threshold)
    edges = check_edges(model, graph, basis, n_sources=6)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "graph.json").write_text(json.dumps(pruned.to_json(args.node_threshold, args.edge_threshold)), encoding="utf-8")
    summary = {
        "prompt": args.prompt,
        "tokens": graph.token_strings,
        "targets": [{"name": n, "probability": float(p)} for n, p in zip(graph.target_names, graph.target_probabilities)],
        "meta": graph.meta,
        "nodes": {"features": graph.n_features, "kept_after_pruning": int(pruned.node_mask.sum()), "edges_kept": int(pruned.edge_mask.sum())},
        "scores": {"graph": graph.scores().to_dict(), "pruned": pruned.scores().to_dict()},
        "linearised_check": {"column_error": edges.column_error, "sum_error": edges.sum_error, "input_error": edges.input_error},
        "top_nodes": graph.top(10)[["name", "influence"]].to_dict("records"),
    }
    if args.checks:
        summary["interventions"] = intervene(model, graph, basis, k=args.checks).summary()
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    graph.show(node_threshold=max(args.node_threshold, 0.95), edge_threshold=max(args.edge_threshold, 0.99)).save(out / "graph.html")
    s = summary["scores"]["graph"]
    print(f"{graph.n_features} feature nodes ({graph.meta['n_active']} active), {int(pruned.node_mask.sum())} kept; "
          f"replacement score {s['replacement']:.3f}, completeness {s['completeness']:.3f}; {graph.meta['seconds']:.1f} s")
    if "interventions" in summary:
        iv = summary["interventions"]
        print(f"interventions (real model, {iv['n']} top nodes): correlation {iv['correlation']:.2f}, slope {iv['slope']:.2f}; "
              f"random nodes: {iv['random_correlation']:.2f}, {iv['random_slope']:.2f}")
    print(f"wrote {out / 'graph.html'}, {out / 'graph.json'}, {out / 'summary.json'}")
    return 0
