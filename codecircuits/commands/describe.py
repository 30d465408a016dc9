"""``codecircuits describe MODEL``: load a model and print its summary."""

from __future__ import annotations

import argparse
import json

NAME = "describe"
HELP = "load a model and print its summary (layers, heads, key/value groups, MLP, norm, vocabulary)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    from ..models import DEFAULT_MODEL, describe, load_model

    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    s = describe(model)
    print(json.dumps(s.to_dict(), indent=1) if args.json else s)
    return 0
