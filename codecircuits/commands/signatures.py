"""``codecircuits signatures``: weight signatures of real code shifts (tabs, renamed locals, quote style), run as
Cai et al. run them (patched into the clean fine-tuned model, with transfer, seeds, controls and intervals)."""

from __future__ import annotations

import argparse

from ._options import config_from, config_options

NAME = "signatures"
HELP = "weight signatures of code shifts patched into the clean fine-tune, with transfer, controls and intervals"
DEFAULT = "cc-py-neox"  # this study's default: 27 fine-tunes of smollm2 do not fit 10 minutes on a CPU


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..studies.signatures import SignatureConfig

    p.add_argument("--model", default=None, help=f"model name or directory (default: {DEFAULT}; e.g. smollm2-135m)")
    p.add_argument("--out", default="reports/signatures", help="output directory for report.html and results.json")
    config_options(p, SignatureConfig)  # one option per setting; SignatureConfig holds the defaults
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    import torch

    from ..intervals import claims_markdown
    from ..models import load_model
    from ..studies import signatures

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model or DEFAULT, device="cpu")
    study = signatures.run(model, config_from(args, signatures.SignatureConfig), progress=not args.quiet)
    html, js = study.save(args.out)
    print(claims_markdown(list(study.claims)))
    for k, v in study.metrics().items():
        print(f"{k}: {v}")
    print(f"wrote {html} and {js} ({study.settings['seconds']} s)")
    return 0
