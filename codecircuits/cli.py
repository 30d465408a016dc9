"""The ``codecircuits`` command line.

Each study's command is generated from its entry in :mod:`codecircuits.studies.registry`
(:mod:`codecircuits.commands.study`). Every other sub-command lives in its own module under
``codecircuits/commands/`` and defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; this
module discovers them, so a new study registers itself and a new tool adds a file, touching nothing here.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import pkgutil
import sys

from . import commands as _commands
from .commands import study as study_command
from .errors import CodeCircuitsError
from .studies.registry import STUDIES


def _command_modules():
    mods = []
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{_commands.__name__}.{info.name}")
        if hasattr(mod, "NAME"):  # commands.study builds the registered studies' commands; it is not one itself
            mods.append(mod)
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codecircuits",
        description="Mechanistic interpretability of code language models, on TransformerLens 4.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {mod.NAME: (mod.HELP, getattr(mod, "DESCRIPTION", mod.HELP), mod.add_arguments, mod.run)
                for mod in _command_modules()}
    for spec in STUDIES:  # every registered study's command, generated from its spec
        commands[spec.name] = (
            spec.help, f"{spec.help}. Reproduces {spec.paper}; findings in {spec.findings}.",
            functools.partial(study_command.add_arguments, spec=spec),
            functools.partial(study_command.run, spec=spec),
        )
    for name in sorted(commands):
        help_text, description, add_arguments, run = commands[name]
        p = sub.add_parser(name, help=help_text, description=description)
        add_arguments(p)
        p.set_defaults(run_command=run)
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
