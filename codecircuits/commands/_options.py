"""Study options of the sub-commands, generated from each study's config dataclass: a study's defaults live in
one place, its config, and the command line passes only the options a user gave.

:func:`config_options` adds one option per config field, with no default of its own (argparse's ``SUPPRESS``):
an option not given is absent from the parsed arguments, so :func:`given` leaves it out and :func:`config_from`
builds the config with the field's own default. Converters (``type=``) turn the command-line text into the
library's types, so a given value is passed as is.
"""

from __future__ import annotations

import argparse
import contextlib

_KEYS = "_study_keys"


def given(args: argparse.Namespace) -> dict:
    """The study options the user gave, by the study's keyword names."""
    return {k: getattr(args, k) for k in getattr(args, _KEYS, ()) if hasattr(args, k)}


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


def layer_list(text: str) -> tuple[int, ...] | None:
    """``"0-2,5"`` -> ``(0, 1, 2, 5)``; an empty text -> ``None`` (all layers)."""
    return int_list(text) or None


def csv_list(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``."""
    return list(csv(text))


def zero_is_none(kind=int):
    """A converter for budgets where 0 means "no limit" (the library's ``None``)."""

    def convert(text: str):
        v = kind(text)
        return None if v == 0 else v

    return convert


# ----------------------------------------------------------------------------------------------------------------
# options generated from a study's config dataclass


def _converter(default):
    """The converter of an option from the type of its default."""
    if isinstance(default, bool):
        return None
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, tuple):
        if default and all(isinstance(x, int) and not isinstance(x, bool) for x in default):
            return int_list
        if default and all(isinstance(x, float) for x in default):
            return csv_floats
        return csv
    return None


def config_options(p: argparse.ArgumentParser, config_cls) -> None:
    """An option for every field of ``config_cls`` (a dataclass whose fields come from
    :func:`codecircuits.studies.common.setting`): ``--field-name`` unless the field names its flag, converted from
    the text by the field's converter or by the type of its default; a boolean that defaults to true is switched
    off by ``--no-field-name``. No option has a default of its own: the config's applies."""
    import dataclasses

    for f in dataclasses.fields(config_cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        default = f.default
        flag = meta.get("flag")
        text = meta.get("help") or f.name.replace("_", " ")
        shown = f"default: {default!r}" if default is not None else "default: none"
        if isinstance(default, bool) and meta.get("convert") is None:
            flag = flag or (f"--no-{f.name.replace('_', '-')}" if default else f"--{f.name.replace('_', '-')}")
            kw = {"action": "store_false" if default else "store_true"}
        else:
            flag = flag or f"--{f.name.replace('_', '-')}"
            convert = meta.get("convert") or _converter(default)
            if isinstance(convert, str):
                convert = zero_is_none() if convert == "zero_is_none" else globals()[convert]
            kw = {"type": convert} if convert is not None else {}
        p.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=f"{text} ({shown})", **kw)
        for switch, value in meta.get("switches", {}).items():
            p.add_argument(
                switch, dest=f.name, action="store_const", const=value, default=argparse.SUPPRESS,
                help=f"set {f.name} to {value!r}",
            )
        keys = p.get_default(_KEYS) or ()
        p.set_defaults(**{_KEYS: (*keys, f.name)})


def config_from(args: argparse.Namespace, config_cls):
    """The config of the options given (every other setting at the config's default)."""
    return config_cls(**given(args))


# ----------------------------------------------------------------------------------------------------------------
# sharding a command's job over Ray workers (codecircuits.distributed)


def worker_options(p: argparse.ArgumentParser) -> None:
    """``--workers N`` (a local Ray cluster started on the fly), ``--ray ADDRESS`` (join a running cluster) and
    ``--worker-threads``; without them the command runs in one process and Ray is not imported."""
    g = p.add_argument_group("sharding over Ray workers (pip install 'codecircuits[distributed]')")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="shard the job over N workers, each with its own model replica (a local Ray cluster on "
                        "127.0.0.1, or N workers on the cluster of --ray)")
    g.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="join a running Ray cluster: auto, HOST:6379 or ray://HOST:10001 (workers default to one "
                        "per GPU, else one per --worker-threads CPUs)")
    g.add_argument("--worker-threads", type=int, default=1, metavar="T",
                   help="torch threads of each CPU worker (default: 1)")


def workers_from(args: argparse.Namespace):
    """The :class:`codecircuits.distributed.Workers` of :func:`worker_options`' options, or ``None``."""
    n, address = getattr(args, "workers", None), getattr(args, "ray", None)
    if n is None and address is None:
        return None
    from ..distributed.workers import Workers

    return Workers(n, address=address, threads=getattr(args, "worker_threads", 1))


@contextlib.contextmanager
def workers_of(args: argparse.Namespace):
    """``with workers_of(args) as workers:`` the command's :func:`workers_from`, closed (with the cluster it
    started) when the command is done; ``None`` without ``--workers`` / ``--ray``."""
    workers = workers_from(args)
    try:
        yield workers
    finally:
        if workers is not None:
            workers.close()
