"""``codecircuits subspace``: subspace activation patching with DAS and its illusion checks (Makelov et al.)."""

from __future__ import annotations

import argparse

NAME = "subspace"
HELP = "learn 1-D patching subspaces by DAS, run the illusion checks, write report.html + results.json"


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers, got {text!r}") from e


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/subspace", help="directory for report.html and results.json")
    p.add_argument("--values", type=_layers, default=(2, 3), help="the two numbers of open parens (default 2,3)")
    p.add_argument("--train-pairs", type=int, default=None, help="training pairs (paper template, train numbers)")
    p.add_argument("--test-pairs", type=int, default=None, help="held-out pairs of the paper template")
    p.add_argument("--template-pairs", type=int, default=None, help="held-out pairs per reworded template")
    p.add_argument("--mlp-layers", type=_layers, default=None, help="MLP layers to study (default: from the sweep)")
    p.add_argument("--resid-layer", type=int, default=None, help="residual-stream layer (default: from the sweep)")
    p.add_argument("--epochs", type=int, default=None, help="DAS epochs")
    p.add_argument("--seed", type=int, default=0, help="seed for pairs, DAS initialisation and batch order")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: many small forwards)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    import torch

    from ..models import DEFAULT_MODEL, load_model
    from ..studies import subspace

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    given = dict(
        values=tuple(args.values),
        train_pairs=args.train_pairs,
        test_pairs=args.test_pairs,
        template_pairs=args.template_pairs,
        mlp_layers=args.mlp_layers,
        resid_layer=args.resid_layer,
        epochs=args.epochs,
        seed=args.seed,
    )
    cfg = subspace.SubspaceConfig(**{k: v for k, v in given.items() if v is not None})
    study = subspace.run(model, cfg, progress=not args.quiet)
    html, js = study.save(args.out)
    print(f"pairs: {study.n_pairs['train']} train, {study.n_pairs['test']} held out")
    for hook, rep in study.checks.items():
        row = f"  FLDD full {rep.fldd('full/test'):7.1f}%  DAS {rep.fldd('das/test'):7.1f}%"
        if "rowspace/test" in rep.patches:
            row += f"  rowspace {rep.fldd('rowspace/test'):7.1f}%  |v_row| {rep.row_norm:.2f}"
        print(f"{hook:28s} {rep.verdict:10s}{row}")
        for reason in rep.reasons:
            print(f"    - {reason}")
    print(f"report  {html}\nresults {js}")
    return 0
