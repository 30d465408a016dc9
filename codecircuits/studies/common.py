"""What every study shares: JSON-safe numbers and writing ``report.html`` beside ``results.json``."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import field, fields, replace
from pathlib import Path

from ..errors import InputError


def json_safe(obj, digits: int | None = 6):
    """``obj`` as plain JSON: dict keys as strings, tuples/arrays/tensors as lists, numpy and 0-d tensor scalars as
    Python numbers, floats rounded to ``digits`` (``None``: as they are), NaN and infinities as ``None``."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, digits) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        if math.isnan(obj) or math.isinf(obj):
            return None
        return obj if digits is None else round(obj, digits)
    if hasattr(obj, "tolist") and getattr(obj, "ndim", 0) > 0:  # numpy arrays, tensors
        return json_safe(obj.tolist(), digits)
    if hasattr(obj, "item"):  # numpy scalars, 0-d tensors
        return json_safe(obj.item(), digits)
    return obj


def write_study(out_dir, payload: dict, report: Callable[[], object]) -> tuple[Path, Path]:
    """Write ``results.json`` (``payload``) and ``report.html`` (``report()``'s :class:`Report`) into ``out_dir``,
    created if needed; returns ``(html, json)`` paths."""
    out = Path(out_dir)
    if out.suffix in (".html", ".json"):
        raise InputError(f"The output must be a directory, not a file name: {out}")
    out.mkdir(parents=True, exist_ok=True)
    js = out / "results.json"
    js.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    html = report().save(out / "report.html")
    return html, js


# ----------------------------------------------------------------------------------------------------------------
# one study shape: a Config dataclass, run(model, config) -> Study with to_json(), report() and save(out)


def setting(
    default,
    help: str,
    *,
    flag: str | None = None,
    convert: Callable | str | None = None,
    switches: dict | None = None,
    cli: bool = True,
):
    """A field of a study's config with the text its command-line option shows.

    ``flag`` names the option (default ``--field-name``); ``convert`` turns the option's text into the field's
    type: a function, or the name of one of the command line's converters (``"zero_is_none"``, ``"csv_list"``,
    ...; default: chosen from the type of ``default``); ``switches`` adds flags without a value that set the field
    to a constant (``{"--no-parens": ()}``); ``cli=False`` keeps the field off the command line (a value only the
    library can give, e.g. a corpus object). The default is written once, here.
    """
    meta = {"help": help, "flag": flag, "convert": convert, "switches": switches or {}, "cli": cli}
    if isinstance(default, (list, dict, set)):
        raise TypeError("study settings are immutable: use a tuple instead of a list")
    return field(default=default, metadata=meta)


def configure(config_cls, config, overrides: dict):
    """``config`` (default ``config_cls()``) with ``overrides`` (keyword arguments of ``run``) applied; an error
    naming the settings that do not exist."""
    if config is None:
        config = config_cls()
    elif not isinstance(config, config_cls):
        raise InputError(f"Expected a {config_cls.__name__}, got {type(config).__name__}.")
    if not overrides:
        return config
    names = {f.name for f in fields(config_cls)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise InputError(
            f"{config_cls.__name__} has no setting {', '.join(bad)}: choose from {', '.join(sorted(names))}."
        )
    return replace(config, **overrides)


@contextmanager
def timed(timings: dict, name: str):
    """``with timed(timings, "step"):`` records the block's wall seconds as ``timings["step"]``."""
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0


def model_name(model) -> str:
    """The name a study records for ``model``: its config's ``model_name``, else its class name."""
    return str(getattr(model.cfg, "model_name", None) or type(model).__name__)


class Study:
    """What every study result has: ``to_json()`` (every number), ``report(model=None)`` (a
    :class:`codecircuits.report.Report`; a study whose report shows token texts reads them from ``model``),
    ``claims`` (its :class:`~codecircuits.intervals.Claim` rows), ``summary_text()`` (what its command prints) and
    one ``save(out)``, which writes ``results.json`` and ``report.html`` into the directory ``out``."""

    def to_json(self) -> dict:
        raise NotImplementedError

    def report(self, model=None):
        raise NotImplementedError

    def results(self) -> dict:
        """What ``results.json`` holds (default: :meth:`to_json`)."""
        return self.to_json()

    def summary_text(self) -> str:
        """The lines the study's command prints after a run (default: its claims table)."""
        from ..intervals import claims_markdown

        claims = self.claim_rows()
        return claims_markdown(claims) if claims else ""

    def claim_rows(self) -> list:
        """The study's :class:`~codecircuits.intervals.Claim` rows (``claims``, a field or a method)."""
        claims = getattr(self, "claims", None)
        return list((claims() if callable(claims) else claims) or [])

    def save(self, out_dir, model=None) -> tuple[Path, Path]:
        """Write ``report.html`` and ``results.json`` into ``out_dir``; returns both paths."""
        return write_study(out_dir, self.results(), lambda: self.report(model))
