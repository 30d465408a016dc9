"""``codecircuits memories``: feed-forward key-value memories (Haider et al. 2024) as a report and a JSON."""

from __future__ import annotations

import argparse

NAME = "memories"
HELP = "FF key-value memories: trigger examples, concept keys, masking edits, layer agreement by context size"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/memories", help="output directory for report.html and results.json")
    p.add_argument("--corpus", default="stdlib:test", help="corpus to scan: stdlib[:split], humaneval or a directory")
    p.add_argument("--eval-corpus", default="stdlib:validation", help="corpus for the masking edits and agreement")
    p.add_argument("--max-tokens", type=int, default=6000, help="token budget of the scan (0: the whole corpus)")
    p.add_argument("--max-docs", type=int, default=None, help="scan only the first N documents of the corpus")
    p.add_argument("--window", type=int, default=128, help="chunk length in tokens, BOS included")
    p.add_argument("--top-k", type=int, default=20, help="trigger examples kept per key")
    p.add_argument("--tau", type=float, default=0.5, help="share of a key's triggers that must match a concept")
    p.add_argument("--min-lift", type=float, default=2.0, help="score / base rate needed to label a key")
    p.add_argument("--edit", default=None, help="comma-separated concepts to mask (default: chosen from the scores)")
    p.add_argument("--edit-max-keys", type=int, default=300, help="at most this many keys masked per concept")
    p.add_argument("--edit-tokens", type=int, default=512, help="evaluation tokens for the edits (0 skips them)")
    p.add_argument("--agreement-tokens", type=int, default=512, help="tokens for layer agreement (0 skips it)")
    p.add_argument("--checkpoint", default=None, help="scan checkpoint file (default: OUT/scan.safetensors)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted scan from its checkpoint")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from pathlib import Path

    import torch

    from .. import corpus as corpus_mod
    from ..models import DEFAULT_MODEL, load_model
    from ..studies import memories

    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = corpus_mod.load(args.corpus)
    if args.max_docs:
        corpus = corpus_mod.Corpus(name=f"{corpus.name}[:{args.max_docs}]", files=corpus.files[: args.max_docs])
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    study = memories.run(
        model,
        corpus=corpus,
        eval_corpus=args.eval_corpus,
        max_tokens=args.max_tokens or None,
        window=args.window,
        k=args.top_k,
        tau=args.tau,
        min_lift=args.min_lift,
        edit=[c.strip() for c in args.edit.split(",") if c.strip()] if args.edit else None,
        edit_max_keys=args.edit_max_keys,
        edit_tokens=args.edit_tokens,
        agreement_tokens=args.agreement_tokens,
        checkpoint=args.checkpoint or Path(args.out) / "scan.safetensors",
        resume=args.resume,
        progress=not args.quiet,
    )
    html, js = memories.write(study, args.out, model=model)
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
