"""``codecircuits eval MODEL``: held-out code loss and closing-paren accuracy, printed and written as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "eval"
HELP = "held-out code loss (stdlib test split, HumanEval) and closing-paren accuracy for 1-4 parens"
DESCRIPTION = (
    "Evaluate a model: next-token loss (nats/token and bits/byte) on held-out standard-library code and on "
    "HumanEval, and top-1 accuracy on the Miller et al. closing-paren template for 1-4 parens. Prints a "
    "summary and writes JSON (--json-out, default eval-MODEL.json)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--json-out", default=None, help="where to write the JSON (default: eval-<model>.json; '-' = none)")
    p.add_argument("--max-chars", type=int, default=20_000, help="characters scored per corpus (default 20000)")
    p.add_argument("--file-chars", type=int, default=2_000, help="at most this many characters per file")
    p.add_argument("--window", type=int, default=512, help="longest window scored at once (tokens)")
    p.add_argument("--numbers", type=int, default=100, help="numbers per paren count in the template (default 100)")
    p.add_argument("--seed", type=int, default=20, help="seed of the template's numbers (the paper's: 20)")
    bos = p.add_mutually_exclusive_group()
    bos.add_argument("--bos", dest="bos", action="store_true", default=None, help="force a BOS token in front")
    bos.add_argument("--no-bos", dest="bos", action="store_false", help="force no BOS token")
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from ..models import DEFAULT_MODEL, load_model
    from ..quality import evaluate

    name = args.model or DEFAULT_MODEL
    model = load_model(name, device=args.device)
    r = evaluate(
        model,
        max_chars=args.max_chars,
        file_chars=args.file_chars,
        window=args.window,
        n_numbers=args.numbers,
        seed=args.seed,
        prepend_bos=args.bos,
        progress=not args.no_progress,
    )
    print(r)
    if args.json_out != "-":
        out = Path(args.json_out or f"eval-{Path(str(r.model)).name}.json")
        out.write_text(r.to_json())
        print(f"wrote {out}")
    return 0
