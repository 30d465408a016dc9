"""``codecircuits cna``: arithmetic heads and comparative neuron analysis (Yu & Ananiadou) as a report."""

from __future__ import annotations

import argparse

NAME = "cna"
HELP = "single-head ablation, comparative neuron analysis and neuron attribution on code arithmetic and parens"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/cna", help="output directory for report.html and results.json")
    p.add_argument("--templates", default="assert,comment", help="arithmetic templates (names in tasks.arithmetic)")
    p.add_argument("--n-sweep", type=int, default=16, help="prompts per task for the head sweep (270 heads each)")
    p.add_argument("--n-cna", type=int, default=4, help="correct prompts per task for CNA and mask/keep")
    p.add_argument("--n-top10", type=int, default=8, help="prompts for the top-10 attribution comparison")
    p.add_argument("--top10-layers", type=int, default=10, help="score the last N layers for the comparison")
    p.add_argument("--no-parens", action="store_true", help="skip the closing-parenthesis task")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    import torch

    from ..models import DEFAULT_MODEL, load_model
    from ..studies import cna

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    study = cna.run(
        model,
        templates=tuple(t.strip() for t in args.templates.split(",") if t.strip()),
        n_sweep=args.n_sweep,
        n_cna=args.n_cna,
        n_top10=args.n_top10,
        top10_layers=args.top10_layers,
        paren_n_values=() if args.no_parens else (0, 1, 2),
        progress=not args.quiet,
    )
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
