"""``codecircuits transcoders train|quality``: train per-layer transcoders for a model, and measure a set's quality."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._options import csv, layer_list

NAME = "transcoders"
HELP = "train per-layer transcoders (TopK / JumpReLU / ReLU) on our code corpora, and measure a set's quality"
DESCRIPTION = (
    "`train` trains a transcoder for each chosen layer (reads mlp.hook_in, predicts mlp.hook_out) from one forward "
    "pass per batch of windows streamed from the corpora; it checkpoints to OUT/checkpoint and resumes from there "
    "when run again with the same settings. OUT then holds the set in circuit-tracer's layout (config.yaml + "
    "layer_{i}.safetensors), training.json, and quality.json / quality.md measured on held-out code. "
    "`quality DIR` measures (again) a saved set. See docs/transcoders.md."
)
DEFAULT_MODEL = "smollm2-135m"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpora", type=csv, default=None, help="comma-separated corpus specs (default: stdlib, humaneval "
                   "and the fetched Debian languages; train splits for training, test splits for quality)")
    p.add_argument("--window", type=int, default=128, help="tokens per window (default 128)")
    p.add_argument("--quality-tokens", type=int, default=32_768, help="held-out tokens for the statistics (default 32768)")
    p.add_argument("--loss-tokens", type=int, default=4_096,
                   help="held-out tokens for the spliced losses, one forward pass per layer each (default 4096; 0: skip)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a transcoder set", description=DESCRIPTION)
    t.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or directory (default: {DEFAULT_MODEL})")
    t.add_argument("--out", required=True, help="folder for the set, its log and its quality report")
    t.add_argument("--layers", type=layer_list, default=None, help="layers, e.g. 0-29 or 3,5 (default: all)")
    t.add_argument("--features", type=int, default=4096, help="features per layer (default 4096)")
    t.add_argument("--k", type=int, default=32, help="TopK: active features per token (default 32)")
    t.add_argument("--activation", choices=("topk", "jumprelu", "relu"), default="topk", help="default topk")
    t.add_argument("--skip", action="store_true", help="add a linear skip connection (W_skip)")
    t.add_argument("--tokens", type=int, default=1_000_000, help="training tokens (default 1,000,000)")
    t.add_argument("--batch-size", type=int, default=32, help="windows per forward pass (default 32)")
    t.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (default 5e-4)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint", default=None, help="checkpoint folder (default: OUT/checkpoint)")
    t.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (default 50)")
    t.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start again")
    t.add_argument("--max-minutes", type=float, default=None, help="stop with a checkpoint after this long (run again to resume)")
    t.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="another training setting (TranscoderTrainingConfig), e.g. l1_coefficient=3; repeatable")
    _common(t)
    q = sub.add_parser("quality", help="measure a saved set's quality on held-out code")
    q.add_argument("directory", help="the set's folder (circuit-tracer's layout)")
    q.add_argument("--model", default=None, help="model (default: the one the set was trained for, else smollm2-135m)")
    _common(q)


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option takes NAME=VALUE, got {pair!r}")
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[name.strip()] = value
    return out


def _quality(model, tset, args, out: Path):
    from ..transcoders.quality import save_quality_table, transcoder_quality

    # held-out code: the test splits of the corpora named (HumanEval has no split: it is training data only)
    held = None if args.corpora is None else [c.replace(":train", ":test") for c in args.corpora if c != "humaneval"]
    q = transcoder_quality(model, tset, corpora=held or None,
                           tokens=args.quality_tokens, loss_tokens=args.loss_tokens, window=args.window,
                           progress=not args.quiet)
    path = save_quality_table(q, out)
    print(q.table())
    print(f"quality -> {path}")
    return q


def run(args) -> int:
    import torch

    from .. import models
    from ..transcoders import load_transcoders

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.action == "quality":
        tset = load_transcoders(args.directory)
        model = models.load_model(args.model or tset.meta.get("model_name") or DEFAULT_MODEL, device="cpu")
        _quality(model, tset, args, Path(args.directory))
        return 0
    from ..transcoders.training import train_transcoders

    out = Path(args.out)
    model = models.load_model(args.model, device="cpu")
    r = train_transcoders(
        model, args.layers, args.features, k=args.k, activation=args.activation, skip=args.skip, corpora=args.corpora,
        tokens=args.tokens, window=args.window, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        checkpoint_dir=args.checkpoint or out / "checkpoint", checkpoint_every=args.checkpoint_every,
        resume=not args.fresh, max_minutes=args.max_minutes, progress=not args.quiet, **_options(args.option),
    )
    if not r.finished:
        print(f"stopped at step {r.steps_done}/{r.steps} ({r.tokens_seen:,} tokens); run the same command again to resume")
        return 0
    r.transcoders.meta["model_name"] = args.model
    r.transcoders.save(out, model=model)  # circuit-tracer's convention: encoders read the model's own MLP input
    (out / "training.json").write_text(json.dumps(r.to_dict(), indent=1), encoding="utf-8")
    speed = f", {r.tokens_per_second:,.0f} tokens/s" if r.tokens_per_second else ""
    print(f"trained {len(r.config.layers)} layers x {r.config.n_features} features on {r.tokens_seen:,} tokens in "
          f"{r.wall_seconds / 60:.1f} min{speed} -> {out}")
    _quality(model, r.transcoders, args, out)
    return 0
