"""``codecircuits parens``: the closing-parenthesis study (Miller, Rai and Yao 2025) on one model."""

from __future__ import annotations

import argparse

from ._options import config_from, config_options

NAME = "parens"
HELP = "run the closing-parenthesis study and write report.html + results.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..studies.parens import ParensConfig

    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/parens", help="directory for report.html and results.json")
    config_options(p, ParensConfig)  # one option per setting; ParensConfig holds the defaults
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    import torch

    from ..models import DEFAULT_MODEL, load_model
    from ..studies import parens

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    cfg = config_from(args, parens.ParensConfig)
    study = parens.run(model, cfg, progress=not args.quiet)
    html, js = study.save(args.out)
    acc = ", ".join(f"{k}: {v:.2f}" for k, v in study.accuracy.items())
    emerge = ", ".join(f"{k}: {v}" for k, v in study.emergence.items())
    print(f"accuracy per number of parens  {acc}")
    print(f"answer emerges at layer        {emerge}")
    for c in study.claims:
        print(f"{c.verdict:>15}  {c.claim}" + (f"  {c.evidence.format()}" if c.evidence else ""))
    print(f"report  {html}\nresults {js}")
    return 0
