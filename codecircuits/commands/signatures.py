"""``codecircuits signatures``: weight signatures of real code shifts (tabs, renamed locals), as a report."""

from __future__ import annotations

import argparse

NAME = "signatures"
HELP = "fine-tune briefly on clean and shifted code, extract weight signatures, patch with alpha; writes a report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/signatures", help="output directory for report.html and results.json")
    p.add_argument("--shifts", default="tabs,rename", help="code shifts: tabs, rename (comma-separated)")
    p.add_argument("--kind", default="mlp_out", help="weights to fine-tune: mlp_out, mlp, attn or block")
    p.add_argument("--layers", default=None, help="layers to fine-tune, e.g. 0-9 or 0,3,6 (default: all)")
    p.add_argument("--steps", type=int, default=20, help="fine-tuning steps per task vector")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=96)
    p.add_argument("--eval-chunks", type=int, default=6, help="held-out chunks of seq-len tokens per evaluation set")
    p.add_argument("--alphas", default="0,0.5,1,1.5", help="alphas to patch the signatures with")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _layers(spec: str | None) -> list[int] | None:
    if not spec:
        return None
    out: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part.strip():
            out.append(int(part))
    return out


def run(args) -> int:
    import torch

    from ..models import DEFAULT_MODEL, load_model
    from ..studies import signatures

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    study = signatures.run(
        model,
        shifts=tuple(s.strip() for s in args.shifts.split(",") if s.strip()),
        kind=args.kind,
        layers=_layers(args.layers),
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        eval_chunks=args.eval_chunks,
        alphas=tuple(float(a) for a in args.alphas.split(",")),
        seed=args.seed,
        progress=not args.quiet,
    )
    html, js = signatures.write(study, args.out)
    print(study.losses.round(4).to_string(index=False))
    for k, v in study.metrics().items():
        print(f"{k}: {v}")
    print(f"wrote {html} and {js} ({study.settings['seconds']} s)")
    return 0
