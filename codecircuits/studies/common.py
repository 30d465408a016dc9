"""What every study shares: JSON-safe numbers and writing ``report.html`` beside ``results.json``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
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
