"""The ``codecircuits`` command line.

Each sub-command lives in its own module under ``codecircuits/commands/`` and defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; this module discovers them, so a new study adds a file and
touches nothing here.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import commands as _commands
from .errors import CodeCircuitsError


def _command_modules():
    mods = []
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"{_commands.__name__}.{info.name}"))
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codecircuits",
        description="Mechanistic interpretability of code language models, on TransformerLens 4.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(run_command=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run_command", None):
        parser.print_help()
        return 0
    try:
        return int(args.run_command(args) or 0)
    except CodeCircuitsError as e:
        print(f"codecircuits {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"codecircuits {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
