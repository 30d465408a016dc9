"""``codecircuits memories``: feed-forward key-value memories (Haider et al. 2024) as a report and a JSON."""

from __future__ import annotations

import argparse

from ._options import config_from, config_options, worker_options, workers_of

NAME = "memories"
HELP = "FF key-value memories: trigger examples, concept keys, masking edits, layer agreement by context size"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..studies.memories import MemoriesConfig

    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/memories", help="output directory for report.html and results.json")
    config_options(p, MemoriesConfig)  # one option per setting; MemoriesConfig holds the defaults
    p.add_argument("--max-docs", type=int, default=None, help="scan only the first N documents of the corpus")
    p.add_argument("--checkpoint", default=None, help="scan checkpoint file (default: OUT/scan.safetensors)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted scan from its checkpoint")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    worker_options(p)


def run(args) -> int:
    import dataclasses
    from pathlib import Path

    import torch

    from .. import corpus as corpus_mod
    from ..models import DEFAULT_MODEL, load_model
    from ..studies import memories

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from(args, memories.MemoriesConfig)
    if args.max_docs:
        corpus = corpus_mod.load(cfg.corpus)
        cfg = dataclasses.replace(
            cfg, corpus=corpus_mod.Corpus(name=f"{corpus.name}[:{args.max_docs}]", files=corpus.files[: args.max_docs])
        )
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    with workers_of(args) as workers:
        study = memories.run(
            model,
            cfg,
            checkpoint=args.checkpoint or Path(args.out) / "scan.safetensors",
            resume=args.resume,
            progress=not args.quiet,
            workers=workers,
        )
    html, js = study.save(args.out, model=model)
    m = study.metrics()
    print(
        f"{study.model}: scanned {m['scan_tokens']} tokens in {m['scan_chunks']} chunks ({m['scan_tokens_per_s']:.0f} tok/s)"
    )
    print(
        "semantic share of labelled keys by depth: "
        + ", ".join(f"{k} {v:.2f}" for k, v in study.depth_shares().items())
    )
    if study.edits:
        cols = [
            "concept",
            "keys",
            "concept_acc",
            "concept_acc_masked",
            "concept_acc_control",
            "general_acc",
            "general_acc_masked",
            "general_acc_control",
        ]
        print(study.edit_table()[cols].round(3).to_string(index=False))
    a = study.agreement
    if a is not None:
        for c in a.components:
            print(f"{c} agreement by layer: " + " ".join(f"{x:.2f}" for x in a.curve(c)))
        print(
            "residual depth to agree by context ("
            + ", ".join(a.bucket_labels())
            + "): "
            + " ".join(f"{x:.2f}" for x in a.mean_layer("resid_post"))
        )
        print(
            "residual agreement over the last quarter of layers by context: "
            + " ".join(f"{x:.2f}" for x in a.late_agreement("resid_post"))
        )
    print(f"wrote {html} and {js} ({sum(v for k, v in study.timings.items() if k.endswith('_s')):.0f} s)")
    return 0
