"""``codecircuits subspace``: subspace activation patching with DAS and its illusion checks (Makelov et al.)."""

from __future__ import annotations

import argparse

from ._options import config_from, config_options

NAME = "subspace"
HELP = "learn 1-D patching subspaces by DAS, run the illusion checks, write report.html + results.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..studies.subspace import SubspaceConfig

    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/subspace", help="directory for report.html and results.json")
    config_options(p, SubspaceConfig)  # one option per setting; SubspaceConfig holds the defaults
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: many small forwards)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    import torch

    from ..models import DEFAULT_MODEL, load_model
    from ..studies import subspace

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    cfg = config_from(args, subspace.SubspaceConfig)
    study = subspace.run(model, cfg, progress=not args.quiet)
    html, js = study.save(args.out)
    print(f"pairs: {study.n_pairs['train']} train, {study.n_pairs['test']} held out")
    for hook, rep in study.checks.items():
        row = f"  FLDD full {rep.fldd('full/test'):7.1f}%  DAS {rep.patches['das/test'].fldd_interval.format(1)}%"
        if rep.fraction is not None:
            row += f"  rowspace share {rep.fraction.format()}  |v_row| {rep.row_norm:.2f}"
        print(f"{hook:28s} {rep.verdict:14s} (seeds: {', '.join(rep.verdicts)}){row}")
        for reason in rep.reasons:
            print(f"    - {reason}")
    for name, rep in study.controls.items():
        print(f"control {name:10s} {rep.hook_name:28s} {rep.verdict}")
    for c in study.claims:
        print(f"[{c.verdict}] {c.claim}: {c.evidence.format() if c.evidence else ''}")
    print(f"report  {html}\nresults {js}")
    return 0
