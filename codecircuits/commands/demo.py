"""``codecircuits demo``: the main job on the default model."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "run the main analysis on the default model and write a report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports", help="directory for the report")


def run(args) -> int:
    from ..models import DEFAULT_MODEL, describe, load_model

    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    print(describe(model))
    prompt = "#print the string 123\nprint(str(str(123"
    completion = model.generate(prompt, max_new_tokens=4, do_sample=False, verbose=False)
    print(f"\ngreedy completion of {prompt!r}: {completion[len(prompt):]!r}")
    return 0
