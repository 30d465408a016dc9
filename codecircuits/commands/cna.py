"""``codecircuits cna``: arithmetic heads and comparative neuron analysis (Yu & Ananiadou) as a report."""

from __future__ import annotations

import argparse

from ._options import config_from, config_options, worker_options, workers_of

NAME = "cna"
HELP = "arithmetic heads, comparative neuron analysis and neuron attribution (Yu & Ananiadou) with intervals"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..studies.cna import CNAConfig

    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/cna", help="output directory for report.html and results.json")
    config_options(p, CNAConfig)  # one option per setting; CNAConfig holds the defaults
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    worker_options(p)


def run(args) -> int:
    import torch

    from ..core.sites import head_label
    from ..models import DEFAULT_MODEL, load_model
    from ..studies import cna

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    with workers_of(args) as workers:
        study = cna.run(model, config_from(args, cna.CNAConfig), progress=not args.quiet, workers=workers)
    html, js = study.save(args.out)
    from ..intervals import claims_markdown

    m = study.metrics()
    a = study.arithmetic
    print(f"accuracy per operation: {', '.join(f'{k} {v.format(3)}' for k, v in study.accuracy_by_op.items())}")
    print(f"accuracy per template: {', '.join(f'{k} {v:.2f}' for k, v in a.accuracy.items())}")
    print(f"top arithmetic head {head_label(*a.head)}: selection drop {m['arith_top_head_accuracy_drop']:.3f}")
    print(a.mask_keep.table.round(1).to_string(index=False))
    print(claims_markdown(study.claims))
    if study.parens is not None:
        p = study.parens
        print(f"top parens head {head_label(*p.head)}: accuracy drop {m['parens_top_head_accuracy_drop']:.3f}")
    print(f"wrote {html} and {js} ({study.settings['seconds']} s)")
    return 0
