"""``codecircuits cna``: arithmetic heads and comparative neuron analysis (Yu & Ananiadou) as a report."""

from __future__ import annotations

import argparse

from ._options import csv, given, study_option

NAME = "cna"
HELP = "single-head ablation, comparative neuron analysis and neuron attribution on code arithmetic and parens"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/cna", help="output directory for report.html and results.json")
    study_option(p, "--templates", "templates", "arithmetic templates, comma-separated (tasks.arithmetic)", type=csv)
    study_option(p, "--n-sweep", "n_sweep", "prompts per task for the head sweep (every head each)", type=int)
    study_option(p, "--n-cna", "n_cna", "correct prompts per task for CNA and mask/keep", type=int)
    study_option(p, "--n-top10", "n_top10", "prompts for the top-10 attribution comparison", type=int)
    study_option(p, "--top10-layers", "top10_layers", "score the last N layers for the comparison", type=int)
    study_option(
        p, "--no-parens", "paren_n_values", "skip the closing-parenthesis task", action="store_const", const=()
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    import torch

    from ..models import DEFAULT_MODEL, load_model
    from ..studies import cna

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    study = cna.run(model, **given(args), progress=not args.quiet)  # cna.run's keywords hold the defaults
    html, js = cna.write(study, args.out)
    m = study.metrics()
    a = study.arithmetic
    print(f"arithmetic accuracy: {', '.join(f'{k} {v:.2f}' for k, v in a.accuracy.items())}")
    print(f"top arithmetic head {a.head[0]}_{a.head[1]}: accuracy drop {m['arith_top_head_accuracy_drop']:.3f}")
    print(a.mask_keep.table.round(1).to_string(index=False))
    if study.parens is not None:
        p = study.parens
        print(f"top parens head {p.head[0]}_{p.head[1]}: accuracy drop {m['parens_top_head_accuracy_drop']:.3f}")
    print(f"wrote {html} and {js} ({study.settings['seconds']} s)")
    return 0
