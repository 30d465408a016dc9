"""``codecircuits repair``: neuron-level repair (MINT) of held-out code lines against an SGD baseline, as a report."""

from __future__ import annotations

import argparse

from ._options import csv, given, study_option

NAME = "repair"
HELP = "repair wrong line completions by editing a few neurons' value vectors (MINT) vs SGD; writes a report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/repair", help="output directory for report.html and results.json")
    study_option(p, "--cases", "n_cases", "repair cases (split over the sources)", type=int)
    study_option(p, "--sources", "sources", "corpora of held-out code (comma-separated)", type=csv)
    study_option(p, "--layers", "layers", "editable layers: half, quarter, last3 or all")
    study_option(p, "--scale", "scale", "MINT edit size eps = 0.01 * scale", type=float)
    study_option(p, "--max-edits", "max_edits", "edits per wrong token before rolling back", type=int)
    study_option(p, "--candidates", "n_candidates", "candidate neurons per wrong token", type=int)
    study_option(p, "--sgd-steps", "sgd_steps", "SGD baseline steps", type=int)
    study_option(p, "--sgd-lr", "sgd_lr", "SGD baseline learning rate", type=float)
    study_option(p, "--seed", "seed", "seed of case sampling", type=int)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    import torch

    from ..models import DEFAULT_MODEL, load_model
    from ..studies import repair

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    study = repair.run(model, **given(args), progress=not args.quiet)  # repair.run's keywords hold the defaults
    html, js = repair.write(study, args.out)
    print(study.summary().round(3).to_string(index=False))
    print(f"wrote {html} and {js} ({study.settings['seconds']} s)")
    return 0
