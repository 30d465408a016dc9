"""Cross-check our attribution graphs against circuit-tracer 0.5.0 on the same model, prompt and transcoders.

circuit-tracer cannot be installed beside TransformerLens 4 (it needs ``HookedTransformer`` and
``transformers<=4.57.3``), so it runs in a separate virtual environment, and this script has three steps:

    python scripts/circuit_tracer_check.py ours OUT        # in our environment
    CT/bin/python scripts/circuit_tracer_check.py theirs OUT   # in circuit-tracer's (see below)
    python scripts/circuit_tracer_check.py compare OUT

``ours`` writes into OUT a random ReLU transcoder set in circuit-tracer's layout (``--features`` per layer, firing on
about 2% of tokens, encoders for the model's own MLP input: the norm's weight unfolded), a copy of
the default model's directory that transformers 4.57 reads (``rope_theta`` at the top level, ``torch_dtype``, a
``PreTrainedTokenizerFast`` tokenizer class), the prompt's tokens with the BOS token circuit-tracer always puts first,
and our graph of those tokens (features at position 0 excluded, as circuit-tracer zeroes them; every active feature
a node). ``theirs`` builds circuit-tracer's graph with its nnsight backend on the same files. ``compare`` checks
that the node sets are equal and prints the largest adjacency difference relative to the largest entry (goal
≤ 1e-4), the pruned node sets (0.8 / 0.98) and both times.

circuit-tracer's environment (once; ``../shared/FEATURES.md`` has the details)::

    python -m venv CT && CT/bin/pip install torch==2.13.0
    echo torch==2.13.0 > c.txt && CT/bin/pip install -c c.txt circuit-tracer==0.5.0 nnsight==0.6.1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

PROMPT = "def area(r):\n    return 3.14 * r * r\nprint(str(area(2"


def ours(out: Path, features: int) -> None:
    from codecircuits import load_model
    from codecircuits.graphs import attribute
    from codecircuits.models.cache import model_cache_dir
    from codecircuits.transcoders import load_transcoders, random_transcoders

    out.mkdir(parents=True, exist_ok=True)
    model = load_model("smollm2-135m", device="cpu")
    src = model_cache_dir("smollm2-135m")
    dst = out / "model"
    shutil.copytree(src, dst, dirs_exist_ok=True)
    config = json.loads((dst / "config.json").read_text())
    config["rope_theta"] = config.get("rope_parameters", {}).get("rope_theta", 100000.0)
    config["torch_dtype"] = config.get("dtype", "float32")
    (dst / "config.json").write_text(json.dumps(config, indent=1))
    tok_config = json.loads((dst / "tokenizer_config.json").read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))

    if not (out / "transcoders" / "config.yaml").exists():  # written for the model's own MLP input, as circuit-tracer reads it
        random_transcoders(model, features, activation="relu", seed=0, density=0.02).save(out / "transcoders", model=model)
    transcoders = load_transcoders(out / "transcoders")  # the same files circuit-tracer reads (norm weights folded in here)
    bos = model.tokenizer.bos_token_id
    tokens = torch.tensor([[bos] + model.to_tokens(PROMPT, prepend_bos=False)[0].tolist()])
    t0 = time.perf_counter()
    graph = attribute(model, tokens, transcoders, max_feature_nodes=None, exclude_positions=(0,), progress=False)
    seconds = time.perf_counter() - t0
    (out / "tokens.json").write_text(json.dumps(tokens[0].tolist()))
    pruned = graph.prune(0.8, 0.98)
    torch.save({"n_pos": graph.n_pos, "n_logits": graph.n_logits, "adjacency": graph.adjacency, "features": torch.stack([graph.feature_layer, graph.feature_pos, graph.feature_index], 1),
                "activations": graph.activations, "targets": torch.tensor(graph.target_ids), "node_mask": pruned.node_mask,
                "seconds": seconds, "threads": torch.get_num_threads()}, out / "ours.pt")
    print(f"ours: {graph.n_features} features, {graph.n_nodes} nodes, {seconds:.1f} s")


def theirs(out: Path) -> None:
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.graph import prune_graph

    tokens = torch.tensor(json.loads((out / "tokens.json").read_text()))
    model = ReplacementModel.from_pretrained(str((out / "model").resolve()), str((out / "transcoders").resolve()), backend="nnsight", device=torch.device("cpu"))
    t0 = time.perf_counter()
    graph = attribute(tokens, model, max_n_logits=10, desired_logit_prob=0.95, batch_size=256)
    seconds = time.perf_counter() - t0
    node_mask, _, _ = prune_graph(graph, node_threshold=0.8, edge_threshold=0.98)
    torch.save({"adjacency": graph.adjacency_matrix, "features": graph.active_features[graph.selected_features],
                "activations": graph.activation_values[graph.selected_features], "targets": torch.tensor([int(t[1]) if isinstance(t, tuple) else int(t) for t in graph.logit_targets]) if hasattr(graph, "logit_targets") else None,
                "node_mask": node_mask, "seconds": seconds, "threads": torch.get_num_threads()}, out / "theirs.pt")
    print(f"circuit-tracer: {len(graph.selected_features)} features, {graph.adjacency_matrix.shape[0]} nodes, {seconds:.1f} s")


def compare(out: Path) -> dict:
    a, b = torch.load(out / "ours.pt"), torch.load(out / "theirs.pt")
    result = {"ours_seconds": a["seconds"], "theirs_seconds": b["seconds"], "threads": [a["threads"], b["threads"]]}
    same_nodes = a["features"].shape == b["features"].shape and bool((a["features"] == b["features"]).all())
    result["same_feature_nodes"] = same_nodes
    result["n_features"] = [int(a["features"].shape[0]), int(b["features"].shape[0])]
    if same_nodes and a["adjacency"].shape == b["adjacency"].shape:
        A, B = a["adjacency"].double(), b["adjacency"].double()
        result["max_abs_difference_relative"] = float((A - B).abs().max() / B.abs().max())
        # circuit-tracer zeroes the error vectors where it zeroes features (the BOS position), so the MLP output
        # there is in no node; we keep it in the error node (every node's incoming edges then sum to its input).
        # Apart from those error nodes' columns, the two must agree.
        n_feat, n_pos = int(a["features"].shape[0]), int(a["n_pos"])
        n_layers = (A.shape[0] - n_feat - n_pos - int(a["n_logits"])) // n_pos
        keep = torch.ones(A.shape[0], dtype=torch.bool)
        keep[n_feat : n_feat + n_layers * n_pos : n_pos] = False  # error nodes (layer, position 0)
        result["max_abs_difference_relative_without_bos_errors"] = float((A - B)[:, keep].abs().max() / B.abs().max())
        result["activation_difference"] = float((a["activations"] - b["activations"]).abs().max())
        ma, mb = a["node_mask"].bool(), b["node_mask"].bool()
        result["pruned_nodes"] = [int(ma.sum()), int(mb.sum())]
        result["pruned_nodes_equal"] = bool((ma == mb).all())
        result["pruned_jaccard"] = float((ma & mb).sum() / (ma | mb).sum())
    result["time_ratio_ours_over_theirs"] = a["seconds"] / b["seconds"]
    print(json.dumps(result, indent=1))
    (out / "comparison.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("ours", "theirs", "compare"))
    p.add_argument("out", type=Path)
    p.add_argument("--features", type=int, default=512)
    args = p.parse_args(argv)
    if args.step == "ours":
        ours(args.out, args.features)
    elif args.step == "theirs":
        theirs(args.out)
    else:
        compare(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
