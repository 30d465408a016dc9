"""What every figure shares: numbers as arrays, escaping, how a number is shown, colour scales and the palette.

(The report's tables, cards and figures use the same, so a number reads the same in a report and in a notebook.)
"""

from __future__ import annotations

import html
import math

import numpy as np

from ..errors import InputError


def to_array(values, *, name: str, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    """``values`` (torch tensor, numpy array or nested lists) as a float64 numpy array, with a checked rank."""
    if hasattr(values, "detach"):  # torch tensor, on any device and dtype
        values = values.detach().to("cpu").float().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be numbers (a tensor, an array or nested lists): {e}") from None
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise InputError(f"{name} must be {want}, got shape {tuple(arr.shape)}.")
    return arr


def esc(text) -> str:
    """HTML-escape any value (attributes included)."""
    return html.escape(str(text), quote=True)


def jsonable(value):
    """Numbers, strings, bools, None, lists and dicts; numpy/torch scalars become Python numbers."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict, str)):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    return value


def format_value(value, *, digits: int = 4) -> str:
    """How a number is shown in metric cards and tables: ints with thousands separators, floats with
    ``digits`` significant digits, NaN as ``n/a``, bools as yes/no, anything else as its string."""
    value = jsonable(value)
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if value == int(value) and abs(value) < 1e15:
            return f"{int(value):,}" if abs(value) >= 1e4 else f"{value:.{max(1, digits - 3)}f}"
        text = f"{value:.{digits}g}"
        if "e" not in text and abs(value) >= 1e4:
            text = f"{value:,.0f}"
        return text
    return str(value)


# ---------------------------------------------------------------------------------------------------- colours

# ColorBrewer RdBu (reversed: negative blue, positive red) and Blues, as RGB stops
_DIVERGING = [
    (5, 48, 97),
    (33, 102, 172),
    (67, 147, 195),
    (146, 197, 222),
    (209, 229, 240),
    (247, 247, 247),
    (253, 219, 199),
    (244, 165, 130),
    (214, 96, 77),
    (178, 24, 43),
    (103, 0, 31),
]
_SEQUENTIAL = [
    (247, 251, 255),
    (222, 235, 247),
    (198, 219, 239),
    (158, 202, 225),
    (107, 174, 214),
    (66, 146, 198),
    (33, 113, 181),
    (8, 81, 156),
    (8, 48, 107),
]
NAN_COLOUR = "#d9d9d9"
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _interp(stops, t: float) -> tuple[int, int, int]:
    t = min(1.0, max(0.0, t))
    x = t * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    f = x - i
    a, b = stops[i], stops[i + 1]
    return tuple(round(a[k] + (b[k] - a[k]) * f) for k in range(3))


class ColourScale:
    """Maps numbers to colours: diverging around ``center`` (blue below, red above) or sequential (light→dark blue)."""

    def __init__(self, values: np.ndarray, *, center: float | None = None, vmin=None, vmax=None):
        finite = values[np.isfinite(values)] if values.size else values
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 1.0
        self.center = center
        self.data_min, self.data_max = lo, hi
        if center is not None:
            half = max(abs(lo - center), abs(hi - center))
            if vmin is not None or vmax is not None:
                half = max(abs(v - center) for v in (vmin, vmax) if v is not None)
            half = half if half > 0 else 1.0
            self.vmin, self.vmax = center - half, center + half
        else:
            self.vmin = lo if vmin is None else float(vmin)
            self.vmax = hi if vmax is None else float(vmax)
            if self.vmax <= self.vmin:
                self.vmax = self.vmin + 1.0

    def rgb(self, v: float) -> tuple[int, int, int] | None:
        if v is None or not math.isfinite(v):
            return None
        t = (v - self.vmin) / (self.vmax - self.vmin)
        return _interp(_DIVERGING if self.center is not None else _SEQUENTIAL, t)

    def css(self, v: float) -> str:
        c = self.rgb(v)
        return NAN_COLOUR if c is None else "#{:02x}{:02x}{:02x}".format(*c)

    def text_css(self, v: float) -> str:
        """Black or white, whichever reads better on the cell colour."""
        c = self.rgb(v)
        if c is None:
            return "#000"
        lum = 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
        return "#000" if lum > 140 else "#fff"

    def end_labels(self, digits: int = 3) -> tuple[str, str]:
        """Labels of the low and high ends of the scale, with "≤" / "≥" when the data runs past them."""
        tol = 1e-9 * max(1.0, abs(self.vmin), abs(self.vmax))
        lo = ("≤ " if self.data_min < self.vmin - tol else "") + format_value(float(self.vmin), digits=digits)
        hi = ("≥ " if self.data_max > self.vmax + tol else "") + format_value(float(self.vmax), digits=digits)
        return lo, hi

    def gradient_stops(self, n: int = 9) -> list[tuple[float, str]]:
        """(offset 0..1, colour) stops for a colour bar, bottom (vmin) to top (vmax)."""
        return [(i / (n - 1), self.css(self.vmin + (self.vmax - self.vmin) * i / (n - 1))) for i in range(n)]
