"""The command of every registered study (:mod:`codecircuits.studies.registry`), generated from its spec.

``codecircuits <study>`` takes ``--model`` and ``--out``, one option per setting of the study's config (the
config holds the defaults), ``--threads`` and ``--quiet``, and what the spec asks for: ``--checkpoint`` /
``--resume`` for a study whose long job checkpoints, ``--workers`` / ``--ray`` for one that shards its jobs.
It runs the study, saves ``report.html`` and ``results.json`` into OUT and prints the study's summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._options import config_from, config_options, worker_options, workers_of


def add_arguments(p: argparse.ArgumentParser, spec) -> None:
    p.add_argument("--model", default=None, help=f"model name or directory (default: {spec.model})")
    p.add_argument("--out", default=f"reports/{spec.name}", help="directory for report.html and results.json")
    config_options(p, spec.config_class)  # one option per setting; the config holds the defaults
    if spec.checkpoint:
        p.add_argument(
            "--checkpoint", default=None, help=f"file the long job is checkpointed to (default: OUT/{spec.checkpoint})"
        )
        p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    if spec.name == "memories":
        p.add_argument("--max-docs", type=int, default=None, help="scan only the first N documents of the corpus")
    default = "torch's choice" if spec.threads is None else f"{spec.threads}: many small forwards"
    p.add_argument("--threads", type=int, default=spec.threads, help=f"torch CPU threads (default: {default})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if spec.workers:
        worker_options(p)


def _first_documents(config, n: int | None):
    """The memories study's config scanning only the first ``n`` documents of its corpus (``--max-docs``)."""
    if not n:
        return config
    import dataclasses

    from .. import corpus as corpus_mod

    corpus = corpus_mod.load(config.corpus)
    first = corpus_mod.Corpus(name=f"{corpus.name}[:{n}]", files=corpus.files[:n])
    return dataclasses.replace(config, corpus=first)


def run(args, spec) -> int:
    import torch

    from .. import models

    if args.threads:
        torch.set_num_threads(args.threads)
    config = config_from(args, spec.config_class)
    if spec.name == "memories":
        config = _first_documents(config, args.max_docs)
    model = models.load_model(args.model or spec.model, device="cpu")
    kwargs: dict = {"progress": not args.quiet}
    if spec.checkpoint:
        kwargs.update(checkpoint=args.checkpoint or Path(args.out) / spec.checkpoint, resume=args.resume)
    if spec.out_dir:
        kwargs["out_dir"] = args.out
    with workers_of(args) as workers:
        if spec.workers:
            kwargs["workers"] = workers
        study = spec.module.run(model, config, **kwargs)
    html, js = study.save(args.out, model=model)
    text = study.summary_text()
    if text:
        print(text)
    print(f"report  {html}\nresults {js}")
    return 0
