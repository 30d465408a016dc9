"""``codecircuits demo``: the closing-parenthesis study on the default model, written as an HTML report; prints
the study's claim verdicts."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"
HELP = "run the closing-parenthesis study on the default model and write its report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports", help="directory for the report (written to OUT/parens/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from ..models import DEFAULT_MODEL, load_model
    from ..studies import parens

    name = args.model or DEFAULT_MODEL
    model = load_model(name, device="cpu")
    study = parens.run(model, parens.ParensConfig(), progress=not args.quiet)
    html, js = study.save(Path(args.out) / "parens")
    acc = ", ".join(f"{k}: {v:.2f}" for k, v in study.accuracy.items())
    print(f"closing parentheses on {name}: accuracy per number of parens {acc}")
    for c in study.claims:
        print(f"{c.verdict:>15}  {c.claim}" + (f"  {c.evidence.format()}" if c.evidence else ""))
    print(f"report written to {html}")
    print(f"numbers written to {js}")
    return 0
