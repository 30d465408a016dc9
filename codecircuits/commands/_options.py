"""Study options of the sub-commands: each study's defaults live in one place, its config (a config dataclass
or the keyword defaults of the study's ``run``), and the command line passes only the options a user gave.

An option declared with :func:`study_option` has no default of its own (argparse's ``SUPPRESS``): when it is not
given it is absent from the parsed arguments, so :func:`given` leaves it out and the study's own default applies.
Converters (``type=``) turn the command-line text into the library's types, so a given value is passed as is.
"""

from __future__ import annotations

import argparse
import inspect

_KEYS = "_study_keys"


def study_option(p: argparse.ArgumentParser, flag: str, dest: str, help: str, **kw) -> None:
    """Add ``flag``, stored as the study's keyword ``dest``; its default is the study's own."""
    p.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=f"{help} (default: the study's, {dest})", **kw)
    keys = p.get_default(_KEYS) or ()
    p.set_defaults(**{_KEYS: (*keys, dest)})


def given(args: argparse.Namespace) -> dict:
    """The study options the user gave, by the study's keyword names."""
    return {k: getattr(args, k) for k in getattr(args, _KEYS, ()) if hasattr(args, k)}


def library_default(run, name: str):
    """The default of keyword ``name`` of a study's ``run`` (for a command that needs it before the call)."""
    return inspect.signature(run).parameters[name].default


def csv(text: str) -> tuple[str, ...]:
    """``"a, b"`` -> ``("a", "b")``."""
    return tuple(s.strip() for s in text.split(",") if s.strip())


def csv_floats(text: str) -> tuple[float, ...]:
    return tuple(float(s) for s in csv(text))


def int_list(text: str) -> tuple[int, ...]:
    """``"0-3,7"`` -> ``(0, 1, 2, 3, 7)``."""
    out: list[int] = []
    try:
        for part in csv(text):
            if "-" in part.strip("-"):
                a, b = part.split("-")
                out += list(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers or ranges like 0-3,7; got {text!r}") from e
    return tuple(out)


def csv_list(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``."""
    return list(csv(text))


def zero_is_none(kind=int):
    """A converter for budgets where 0 means "no limit" (the library's ``None``)."""

    def convert(text: str):
        v = kind(text)
        return None if v == 0 else v

    return convert
