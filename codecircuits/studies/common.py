"""What every study shares: JSON-safe numbers and writing ``report.html`` beside ``results.json``."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import ClassVar

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


def check_config(cfg, *, at_least: dict[int, str] | None = None, choices: dict[str, tuple] | None = None) -> None:
    """Raise an :class:`InputError` naming the first setting of ``cfg`` below its minimum (``at_least``: minimum ->
    the settings' names, space-separated) or outside its choices (``choices``: setting -> allowed values; every
    item of a tuple setting must be one)."""
    cls = type(cfg).__name__
    for low, names in (at_least or {}).items():
        for name in names.split():
            if getattr(cfg, name) < low:
                raise InputError(f"{cls}.{name} must be >= {low}, got {getattr(cfg, name)}.")
    for name, allowed in (choices or {}).items():
        value = getattr(cfg, name)
        if any(v not in allowed for v in (value if isinstance(value, tuple) else (value,))):
            raise InputError(f"{cls}.{name} must be one of {', '.join(map(str, allowed))}; got {value!r}.")


@contextmanager
def timed(timings: dict, name: str):
    """``with timed(timings, "step"):`` records the block's wall seconds as ``timings["step"]``."""
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0


def model_name(model) -> str:
    """The name a study records for ``model``: its config's ``model_name``, else its class name."""
    return str(getattr(model.cfg, "model_name", None) or type(model).__name__)


@dataclass(frozen=True)
class ClaimSpec:
    """A claim of a paper as data: its text, the rule its verdict applies, the paper's value and where that is
    given, and the command that measures it; ``text``, ``rule`` and ``paper`` may hold ``{name}`` fields a run fills
    in.
    Calling it with the run's tests and numbers gives the :class:`~codecircuits.intervals.Claim` row."""

    text: str
    rule: str = ""
    paper: str = ""
    source: str = ""
    command: str = ""

    def __call__(self, reproduced: bool, partly: bool, evidence=None, control=None, detail: str = "", **fill):
        from ..intervals import Claim, verdict

        text, rule, paper = (x.format(**fill) if fill else x for x in (self.text, self.rule, self.paper))
        return Claim(text, verdict(reproduced, partly), evidence, control, detail, self.command, rule, paper,
                     self.source)


def claim_specs(command: str = "", source: str = "", **specs: tuple) -> dict[str, ClaimSpec]:
    """A study's claims as a table: ``name=(text, rule, paper, source)`` (the paper's value and its source may be
    left off; a claim with the paper's value and no source of its own cites ``source``), each measured by
    ``command``."""
    out = {}
    for name, spec in specs.items():
        text, rule, paper, src = (*spec, "", "", "")[:4]
        out[name] = ClaimSpec(text, rule, paper, src or (source if paper and len(spec) < 4 else ""), command)
    return out


def plain(value):
    """``value`` as JSON-ready data: a result's own ``to_json()``, a DataFrame's records, a dataclass's fields,
    containers item by item (the default conversion of a study's fields)."""
    if hasattr(value, "columns") and hasattr(value, "to_dict"):  # a DataFrame
        return value.to_dict("records")
    for method in ("to_json", "to_dict"):
        if hasattr(value, method) and not isinstance(value, type):
            return getattr(value, method)()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def result(default=MISSING, *, json: Callable | None = plain, key: str | None = None, **kw):
    """A field of a study's result: ``json`` converts its value for ``results.json`` (``None``: left out), under
    ``key`` (default: the field's name)."""
    meta = {"json": json, "key": key}
    if default is not MISSING:
        kw["default"] = default
    return field(metadata=meta, **kw)


class Study:
    """What every study result has: ``to_json()`` (every number), ``report(model=None)`` (a
    :class:`codecircuits.report.Report`; a study whose report shows token texts reads them from ``model``),
    ``claims`` (its :class:`~codecircuits.intervals.Claim` rows), ``summary_text()`` (what its command prints) and
    one ``save(out)``, which writes ``results.json`` and ``report.html`` into the directory ``out``.

    ``to_json`` is written from the dataclass's fields (each converted by its ``json`` metadata, see
    :func:`result`, else by :func:`plain`), then :meth:`json_extra` (numbers derived from the fields), the
    ``claims`` and the key numbers (``metrics()``), rounded to :attr:`JSON_DIGITS`."""

    JSON_DIGITS: ClassVar[int | None] = 6

    def json_extra(self) -> dict:
        """Numbers ``results.json`` holds beyond the fields (default: none)."""
        return {}

    def to_json(self) -> dict:
        out = {}
        for f in fields(self):
            convert = f.metadata.get("json", plain)
            if convert is not None:
                out[f.metadata.get("key") or f.name] = convert(getattr(self, f.name))
        out.update(self.json_extra())
        out["claims"] = [c.to_json() for c in self.claim_rows()]
        if hasattr(self, "metrics"):
            out["metrics"] = self.metrics()
        return json_safe(out, self.JSON_DIGITS)

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

    def open_report(self, title: str, subtitle: str | None = None, *, labels: dict, meta: dict | None = None,
                    claims_text: str | None = None, key_text: str | None = None):
        """A :class:`codecircuits.report.Report` that opens as every study's does: the claims table, then the key
        numbers ``labels`` names (``metrics()`` key -> the label a reader understands; those a run lacks are
        skipped)."""
        from ..report import Report

        r = Report(title, subtitle, meta=meta)
        claims = self.claim_rows()
        if claims:
            r.section("Claims and verdicts", text=claims_text or "Each claim with the number it rests on (95% "
                      "bootstrap interval), its control, the paper's own number and the verdict by the stated rule.")
            r.claims(claims)
        metrics = json_safe(self.metrics(), self.JSON_DIGITS) if hasattr(self, "metrics") else {}
        shown = {k: metrics[k] for k in labels if k in metrics}
        if shown:
            r.section("Key numbers", text=key_text)
            r.metrics(shown, labels={k: labels[k] for k in shown})
        return r

    def close_report(self, r, labels: dict | None = None):
        """End report ``r`` as every study's does: the key numbers not shown yet (labelled by ``labels``, else by
        their key) and the JSON of :meth:`to_json`."""
        metrics = json_safe(self.metrics(), self.JSON_DIGITS) if hasattr(self, "metrics") else {}
        rest = {k: v for k, v in metrics.items() if k not in r.metric_keys}
        if rest:
            r.section("Every key number", text="The numbers of results.json's \"metrics\", beside those above.")
            r.metrics(rest, labels={k: (labels or {}).get(k, k) for k in rest})
        return r.data(self.to_json(), "results")

    def save(self, out_dir, model=None) -> tuple[Path, Path]:
        """Write ``report.html`` and ``results.json`` into ``out_dir``; returns both paths."""
        return write_study(out_dir, self.results(), lambda: self.report(model))
