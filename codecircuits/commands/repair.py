"""``codecircuits repair``: neuron-level repair (MINT) of held-out code lines against an SGD baseline, as a report."""

from __future__ import annotations

import argparse

from ._options import config_from, config_options

NAME = "repair"
HELP = "repair wrong line completions by editing a few neurons' value vectors (MINT) vs SGD; writes a report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..studies.repair import RepairConfig

    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/repair", help="output directory for report.html and results.json")
    config_options(p, RepairConfig)  # one option per setting; RepairConfig holds the defaults
    p.add_argument("--checkpoint", default=None,
                   help="file the finished steps are written to as they finish (default: OUT/progress.json)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    import torch

    from ..models import DEFAULT_MODEL, load_model
    from ..studies import repair

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    from pathlib import Path

    study = repair.run(
        model,
        config_from(args, repair.RepairConfig),
        progress=not args.quiet,
        checkpoint=args.checkpoint or Path(args.out) / "progress.json",
        resume=args.resume,
    )
    html, js = study.save(args.out)
    print(study.summary().round(3).to_string(index=False))
    print(f"wrote {html} and {js} ({study.settings['seconds']} s)")
    return 0
