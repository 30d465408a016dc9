"""``codecircuits languages``: FF memories in Python, Java and Go, RQ1 per language and the cross-language
comparison of the keys each concept selects, as a report and a JSON."""

from __future__ import annotations

import argparse

from ._options import config_from, config_options, worker_options, workers_of

NAME = "languages"
HELP = "FF memories in Python, Java and Go: RQ1 per language and whether a concept selects the same keys in each"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..studies.languages import LanguagesConfig

    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/languages", help="output directory for report.html and results.json")
    config_options(p, LanguagesConfig)
    p.add_argument(
        "--scans", default=None, help="directory of the per-language scan checkpoints, reused and resumed (default: OUT/scans)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    worker_options(p)


def run(args) -> int:
    import dataclasses

    import torch

    from ..models import DEFAULT_MODEL, load_model
    from ..studies import languages

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(config_from(args, languages.LanguagesConfig), scans=args.scans)
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    with workers_of(args) as workers:
        study = languages.run(model, cfg, out_dir=args.out, progress=not args.quiet, workers=workers)
    html, js = study.save(args.out)
    for g in study.languages:
        shares = ", ".join(f"{t} {iv.format(3)}" for t, iv in study.rq1[g].items())
        print(f"{g}: {study.tokens[g]} tokens scanned; semantic share of labelled keys by third: {shares}")
    s = study.comparison.summary()
    print(
        f"cross-language: {s['above_chance']} of {s['concept_pairs']} concept pairs overlap above chance "
        f"(mean Jaccard {s['mean_jaccard']:.3f}, chance {s['mean_chance']:.3f})"
    )
    print(f"report written to {html}")
    return 0
