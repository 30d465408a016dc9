"""``codecircuits signatures``: weight signatures of real code shifts (tabs, renamed locals), as a report."""

from __future__ import annotations

import argparse

from ._options import csv, csv_floats, given, int_list, study_option

NAME = "signatures"
HELP = "fine-tune briefly on clean and shifted code, extract weight signatures, patch with alpha; writes a report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/signatures", help="output directory for report.html and results.json")
    study_option(p, "--shifts", "shifts", "code shifts: tabs, rename (comma-separated)", type=csv)
    study_option(p, "--kind", "kind", "weights to fine-tune: mlp_out, mlp, attn or block")
    study_option(p, "--layers", "layers", "layers to fine-tune, e.g. 0-9 or 0,3,6 (None: all)", type=_layers)
    study_option(p, "--steps", "steps", "fine-tuning steps per task vector", type=int)
    study_option(p, "--lr", "lr", "Adam learning rate", type=float)
    study_option(p, "--batch-size", "batch_size", "fine-tuning batch size", type=int)
    study_option(p, "--seq-len", "seq_len", "tokens per training and evaluation chunk", type=int)
    study_option(p, "--eval-chunks", "eval_chunks", "held-out chunks of seq-len tokens per evaluation set", type=int)
    study_option(p, "--alphas", "alphas", "alphas to patch the signatures with (comma-separated)", type=csv_floats)
    study_option(p, "--seed", "seed", "seed of data order and initialisation", type=int)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _layers(spec: str) -> list[int] | None:
    return list(int_list(spec)) or None


def run(args) -> int:
    import torch

    from ..models import DEFAULT_MODEL, load_model
    from ..studies import signatures

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    study = signatures.run(model, **given(args), progress=not args.quiet)  # signatures.run's keywords: defaults
    html, js = signatures.write(study, args.out)
    print(study.losses.round(4).to_string(index=False))
    for k, v in study.metrics().items():
        print(f"{k}: {v}")
    print(f"wrote {html} and {js} ({study.settings['seconds']} s)")
    return 0
