"""``codecircuits signatures``: weight signatures of real code shifts (tabs, renamed locals), as a report."""

from __future__ import annotations

import argparse

from ._options import config_from, config_options

NAME = "signatures"
HELP = "fine-tune briefly on clean and shifted code, extract weight signatures, patch with alpha; writes a report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..studies.signatures import SignatureConfig

    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/signatures", help="output directory for report.html and results.json")
    config_options(p, SignatureConfig)  # one option per setting; SignatureConfig holds the defaults
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    import torch

    from ..models import DEFAULT_MODEL, load_model
    from ..studies import signatures

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    study = signatures.run(model, config_from(args, signatures.SignatureConfig), progress=not args.quiet)
    html, js = study.save(args.out)
    print(study.losses.round(4).to_string(index=False))
    for k, v in study.metrics().items():
        print(f"{k}: {v}")
    print(f"wrote {html} and {js} ({study.settings['seconds']} s)")
    return 0
