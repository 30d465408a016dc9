"""``codecircuits repair``: neuron-level repair (MINT) of held-out code lines against an SGD baseline, as a report."""

from __future__ import annotations

import argparse

NAME = "repair"
HELP = "repair wrong line completions by editing a few neurons' value vectors (MINT) vs SGD; writes a report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/repair", help="output directory for report.html and results.json")
    p.add_argument("--cases", type=int, default=16, help="repair cases (split over the sources)")
    p.add_argument("--sources", default="stdlib:test,humaneval", help="corpora of held-out code (comma-separated)")
    p.add_argument("--layers", default="half", help="editable layers: half, quarter, last3 or all")
    p.add_argument("--scale", type=float, default=10.0, help="MINT edit size eps = 0.01 * scale")
    p.add_argument("--max-edits", type=int, default=10, help="edits per wrong token before rolling back")
    p.add_argument("--candidates", type=int, default=10, help="candidate neurons per wrong token")
    p.add_argument("--sgd-steps", type=int, default=10, help="SGD baseline steps")
    p.add_argument("--sgd-lr", type=float, default=1e-2, help="SGD baseline learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    import torch

    from ..models import DEFAULT_MODEL, load_model
    from ..studies import repair

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    study = repair.run(
        model,
        n_cases=args.cases,
        sources=tuple(s.strip() for s in args.sources.split(",") if s.strip()),
        layers=args.layers,
        scale=args.scale,
        max_edits=args.max_edits,
        n_candidates=args.candidates,
        sgd_steps=args.sgd_steps,
        sgd_lr=args.sgd_lr,
        seed=args.seed,
        progress=not args.quiet,
    )
    html, js = repair.write(study, args.out)
    print(study.summary().round(3).to_string(index=False))
    print(f"wrote {html} and {js} ({study.settings['seconds']} s)")
    return 0
