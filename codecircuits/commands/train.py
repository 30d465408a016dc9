"""``codecircuits train --arch neox --out DIR``: train a small code LM (tokenizer, model, card) on offline code."""

from __future__ import annotations

import argparse
import dataclasses

NAME = "train"
HELP = "train a small GPT-NeoX code LM and its BPE tokenizer on the standard library (or a directory)"
DESCRIPTION = (
    "Train a byte-level BPE tokenizer and a GPT-NeoX code LM on real code available offline: the running "
    "interpreter's standard library without its tests (train split by path hash), or --corpus DIR. Seeded and "
    "reproducible; a checkpoint is written every --checkpoint-every steps and --resume continues an "
    "interrupted run. At the end DIR holds config.json, model.safetensors, the tokenizer and MODEL.md, and "
    "`codecircuits.load_model(DIR)` loads it. The defaults are the settings of the shipped cc-py-neox."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..training import ARCHS, TrainConfig

    p.add_argument("--arch", choices=ARCHS, default="neox", help="model architecture (GPT-NeoX: plain GELU MLP)")
    p.add_argument("--out", required=True, help="output directory (tokenizer, checkpoint/, final model, MODEL.md)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {TrainConfig.steps})")
    length.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="train for about this long (the step count is fixed after the first steps)",
    )
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint after an interruption")
    p.add_argument(
        "--max-minutes", type=float, default=None, help="stop with a checkpoint after this long (resume later)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    skip = {"arch", "steps"}
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        p.add_argument(
            f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, help=f"default {f.default}"
        )


def run(args) -> int:
    import torch

    from ..training import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in ("steps",)}
    if args.steps is not None:
        kw["steps"] = args.steps
    cfg = TrainConfig(**kw)
    r = train(
        cfg,
        args.out,
        resume=args.resume,
        max_minutes=args.max_minutes,
        progress=not args.no_progress,
        minutes=args.minutes,
    )
    if not r.finished:
        print(
            f"stopped at step {r.steps_done}/{r.config.steps}; continue with --resume (same settings, --steps {r.config.steps})"
        )
        return 0
    print(
        f"trained {r.steps_done} steps ({r.train_tokens_seen:,} tokens) in {r.wall_seconds / 60:.1f} min -> {r.out_dir}"
    )
    if r.val_loss is not None:
        print(
            f"validation loss {r.val_loss:.4f} nats/token (bigram baseline {r.bigram['loss']:.4f}); see {r.out_dir}/MODEL.md"
        )
    return 0
