"""Static SVG figures: heatmaps with labelled axes and a colour bar, line charts and bar charts.

They are drawn in Python, so they need no JavaScript and no plotting library, display in any browser and
print. Every cell and point carries a ``<title>`` tooltip with its labels and exact value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError
from .style import PALETTE, ColourScale, esc, format_value, to_array

_CHAR_W = 6.6  # approximate width of one character of the 11px label font
_TITLE_W = 7.4  # ... and of the 12.5px bold axis-title font
MAX_HEATMAP_CELLS = 60_000
_IDS = itertools.count()


def _label_step(cell: float, min_px: float) -> int:
    return max(1, math.ceil(min_px / max(cell, 1e-9)))


def _clip_label(text: str, n: int = 24) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def heatmap_svg(
    values,
    *,
    x_labels: Sequence | None = None,
    y_labels: Sequence | None = None,
    x_title: str = "",
    y_title: str = "",
    center: float | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    value_label: str = "value",
    annotate: bool | None = None,
    digits: int | None = None,
) -> str:
    """A heatmap of ``values[row, col]`` (rows on the y axis, top to bottom) as an SVG string."""
    arr = to_array(values, name="heatmap values", ndim=2)
    n_rows, n_cols = arr.shape
    if n_rows == 0 or n_cols == 0:
        raise InputError(f"heatmap values are empty (shape {arr.shape}): nothing to draw.")
    if arr.size > MAX_HEATMAP_CELLS:
        raise InputError(
            f"heatmap has {arr.size:,} cells (shape {arr.shape}); the report draws at most {MAX_HEATMAP_CELLS:,}. "
            "Select the rows or columns that matter (e.g. the top-k neurons) before plotting."
        )
    x_labels = [str(v) for v in (range(n_cols) if x_labels is None else x_labels)]
    y_labels = [str(v) for v in (range(n_rows) if y_labels is None else y_labels)]
    if len(x_labels) != n_cols:
        raise InputError(f"heatmap has {n_cols} columns but {len(x_labels)} x_labels were given.")
    if len(y_labels) != n_rows:
        raise InputError(f"heatmap has {n_rows} rows but {len(y_labels)} y_labels were given.")

    scale = ColourScale(arr, center=center, vmin=vmin, vmax=vmax)
    finite = np.abs(arr[np.isfinite(arr)])
    biggest = float(finite.max()) if finite.size else 1.0
    if digits is None:  # decimals for the in-cell numbers: two significant digits at the largest magnitude
        digits = int(min(3, max(0, 1 - math.floor(math.log10(biggest))))) if biggest > 0 else 1
    cw = min(48.0, max(6.0, 860.0 / n_cols))
    ch = min(26.0, max(6.0, 640.0 / n_rows))
    if annotate is None:
        annotate = cw >= 36 and ch >= 16 and arr.size <= 600
    x_step, y_step = _label_step(cw, 13), _label_step(ch, 12)
    xl = [_clip_label(s) for s in x_labels]
    yl = [_clip_label(s) for s in y_labels]
    rotate = max(len(s) for s in xl) * _CHAR_W > cw - 2
    max_x = max(len(s) for s in xl[::x_step]) * _CHAR_W
    plot_w, plot_h = cw * n_cols, ch * n_rows
    bar_h = max(min(plot_h, 240.0), 60.0)
    # titles too long to stand rotated beside a short plot go horizontally above it instead
    y_flat = bool(y_title) and len(y_title) * _TITLE_W > plot_h + 16
    bar_label = _clip_label(value_label, 40)
    bar_flat = len(bar_label) * _TITLE_W > bar_h
    left = (8 if y_flat else 28) + max(len(s) for s in yl[::y_step]) * _CHAR_W + 8
    top = 10 + 17 * (y_flat + bar_flat)  # one line above the plot per flat title
    x_label_h = (max_x * 0.82 + 10) if rotate else 16
    bottom = x_label_h + 30
    bar_x = left + plot_w + 18
    width = bar_x + 14 + 72
    if bar_flat:
        width = max(width, bar_x + len(bar_label) * _TITLE_W + 6)
    height = max(top + plot_h, top + bar_h) + bottom

    out = [
        f'<svg class="cc-heatmap" data-kind="heatmap" data-rows="{n_rows}" data-cols="{n_cols}" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{esc(value_label)} by {esc(y_title)} and {esc(x_title)}">'
    ]
    # cells
    out.append(f'<g class="cells" transform="translate({left:.1f},{top})">')
    for r in range(n_rows):
        for c in range(n_cols):
            v = float(arr[r, c])
            tip = f"{y_title or 'row'} {y_labels[r]}, {x_title or 'column'} {x_labels[c]}: {value_label} {format_value(v, digits=4)}"
            out.append(
                f'<rect x="{c * cw:.2f}" y="{r * ch:.2f}" width="{cw + 0.3:.2f}" height="{ch + 0.3:.2f}" '
                f'fill="{scale.css(v)}"><title>{esc(tip)}</title></rect>'
            )
            if annotate and math.isfinite(v) and _annotation(v, digits):
                out.append(
                    f'<text x="{(c + 0.5) * cw:.1f}" y="{(r + 0.5) * ch + 3.5:.1f}" text-anchor="middle" '
                    f'class="ann" style="fill:{scale.text_css(v)}">{_annotation(v, digits)}</text>'
                )
    out.append(f'<rect class="frame" x="0" y="0" width="{plot_w:.2f}" height="{plot_h:.2f}" fill="none"/>')
    out.append("</g>")
    # y tick labels
    out.append('<g class="ylabels">')
    for r in range(0, n_rows, y_step):
        y = top + (r + 0.5) * ch + 4
        out.append(f'<text x="{left - 5:.1f}" y="{y:.1f}" text-anchor="end">{esc(yl[r])}</text>')
    out.append("</g>")
    # x tick labels
    out.append('<g class="xlabels">')
    y0 = top + plot_h + 6
    for c in range(0, n_cols, x_step):
        x = left + (c + 0.5) * cw
        if rotate:
            out.append(
                f'<text transform="translate({x + 3:.1f},{y0 + 2:.1f}) rotate(-55)" text-anchor="end">{esc(xl[c])}</text>'
            )
        else:
            out.append(f'<text x="{x:.1f}" y="{y0 + 9:.1f}" text-anchor="middle">{esc(xl[c])}</text>')
    out.append("</g>")
    # axis titles
    if x_title:
        out.append(
            f'<text class="axis-title" x="{left + plot_w / 2:.1f}" y="{top + plot_h + bottom - 8:.1f}" '
            f'text-anchor="middle">{esc(x_title)}</text>'
        )
    if y_title and y_flat:
        out.append(f'<text class="axis-title" x="4" y="14" text-anchor="start">{esc(y_title)} ↓</text>')
    elif y_title:
        out.append(
            f'<text class="axis-title" transform="translate(13,{top + plot_h / 2:.1f}) rotate(-90)" '
            f'text-anchor="middle">{esc(y_title)}</text>'
        )
    out.append(_colour_bar(scale, bar_x, top, bar_h, bar_label, flat_y=14 + 17 * y_flat if bar_flat else None))
    out.append("</svg>")
    return "".join(out)


def _annotation(v: float, decimals: int) -> str:
    """The number written inside a cell: fixed decimals, no leading zero (".38"); nothing when it rounds to zero
    (the cell's colour and tooltip still say so), which keeps sparse maps readable."""
    if abs(v) < 0.5 * 10**-decimals:
        return ""
    text = f"{v:.{decimals}f}"
    return text.replace("0.", ".", 1) if text.lstrip("-").startswith("0.") else text


def _colour_bar(scale: ColourScale, x: float, y: float, h: float, label: str, *, flat_y: float | None = None) -> str:
    """A vertical colour bar with its end (and centre) values; its label rotated beside it, or written
    horizontally at height ``flat_y`` when it is too long for the bar."""
    gid = f"cc-cbar-{next(_IDS)}"
    stops = "".join(
        f'<stop offset="{1 - off:.3f}" stop-color="{col}"/>' for off, col in reversed(scale.gradient_stops())
    )
    lo_label, hi_label = scale.end_labels()
    ticks = [(hi_label, y), (lo_label, y + h)]
    if scale.center is not None:
        ticks.append((format_value(float(scale.center), digits=3), y + h / 2))
    parts = [
        f'<g class="colourbar"><defs><linearGradient id="{gid}" x1="0" y1="0" x2="0" y2="1">{stops}</linearGradient></defs>',
        f'<rect x="{x:.1f}" y="{y:.1f}" width="12" height="{h:.1f}" fill="url(#{gid})" class="frame"/>',
    ]
    for tick, ty in ticks:
        parts.append(f'<text x="{x + 16:.1f}" y="{ty + 4:.1f}">{esc(tick)}</text>')
    if flat_y is not None:
        parts.append(f'<text class="axis-title" x="{x:.1f}" y="{flat_y:.1f}" text-anchor="start">{esc(label)}</text>')
    else:
        parts.append(
            f'<text class="axis-title" transform="translate({x + 74:.1f},{y + h / 2:.1f}) rotate(90)" '
            f'text-anchor="middle">{esc(label)}</text>'
        )
    parts.append("</g>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------------- line chart


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) whose first is <= lo and last >= hi."""
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _tick_texts(ticks: list[float]) -> list[str]:
    """Tick labels with the fewest decimals that show every tick exactly: 0, 5, 10 or 0.25, 0.5, 0.75."""
    for d in range(7):
        if all(abs(round(t, d) - t) < 1e-9 * max(1.0, abs(t)) for t in ticks):
            break
    return [f"{t:,.{d}f}" if abs(t) >= 1e4 else f"{t:.{d}f}" for t in ticks]


def line_chart_svg(
    x: Sequence,
    series: Mapping[str, Sequence],
    *,
    x_title: str = "",
    y_title: str = "",
    width: int = 760,
    height: int = 340,
    zero_line: bool = True,
    bands: Mapping[str, tuple[Sequence, Sequence]] | None = None,
) -> str:
    """A line chart of each named series over ``x`` (numbers or category labels), with markers, axes and a legend.

    ``bands`` (optional) maps a name to ``(low, high)`` values per x, drawn as shaded ranges under the lines (e.g.
    the spread of a random baseline), each with a legend entry."""
    xs, n, ys, band_arrs = _line_chart_data(x, series, bands)
    numeric_x = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in xs)
    xv = np.asarray(xs, dtype=np.float64) if numeric_x else np.arange(n, dtype=np.float64)
    finite = np.concatenate(
        [a[np.isfinite(a)] for a in ys.values()] + [a[np.isfinite(a)] for pair in band_arrs.values() for a in pair]
    )
    if finite.size == 0:
        raise InputError("line_chart: every value is NaN or infinite; nothing to draw.")
    lo, hi = float(finite.min()), float(finite.max())
    if zero_line and lo > 0 and lo < 0.25 * hi:
        lo = 0.0
    yt = _nice_ticks(lo, hi)
    ylo, yhi = yt[0], yt[-1]
    xlo, xhi = float(xv.min()), float(xv.max())
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    ytick_text = _tick_texts(yt)
    left = 30 + max(len(s) for s in ytick_text) * _CHAR_W + 6
    legend_w = min(220, 36 + max(len(s) for s in [*ys, *band_arrs]) * _CHAR_W)
    right, top, bottom = legend_w + 16, 12, 48
    pw, ph = width - left - right, height - top - bottom

    def sx(v):
        return left + (v - xlo) / (xhi - xlo) * pw

    def sy(v):
        return top + (1 - (v - ylo) / (yhi - ylo)) * ph

    out = [
        f'<svg class="cc-linechart" data-kind="line-chart" data-series="{len(ys)}" data-points="{n}" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{esc(y_title)} by {esc(x_title)}">'
    ]
    out.append('<g class="grid">')
    for t, s in zip(yt, ytick_text):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}"/>')
        out.append(f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{esc(s)}</text>')
    out.append("</g>")
    if zero_line and ylo < 0 < yhi:
        out.append(f'<line class="zero" x1="{left}" x2="{left + pw}" y1="{sy(0):.1f}" y2="{sy(0):.1f}"/>')
    # x ticks
    if numeric_x:
        xt = [t for t in _nice_ticks(xlo, xhi, 10) if xlo - 1e-9 <= t <= xhi + 1e-9]
        if all(float(v).is_integer() for v in xv):  # layers, positions: integer ticks only
            xt = [t for t in xt if float(t).is_integer()] or [xlo, xhi]
        xt_pos = [(sx(t), label) for t, label in zip(xt, _tick_texts(xt))]
    else:
        step = _label_step(pw / max(n, 1), 40)
        xt_pos = [(sx(xv[i]), _clip_label(str(xs[i]), 12)) for i in range(0, n, step)]
    out.append('<g class="xticks">')
    for px, s in xt_pos:
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top + ph}" y2="{top + ph + 4}"/>')
        out.append(f'<text x="{px:.1f}" y="{top + ph + 16}" text-anchor="middle">{esc(s)}</text>')
    out.append("</g>")
    out.append(f'<rect class="frame" x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none"/>')
    lx = left + pw + 14
    out += _bands(band_arrs, xv, sx, sy, lx, top + 8 + 18 * len(ys))
    out += _series(ys, xs, xv, sx, sy, lx, top + 8, x_title, y_title)
    if x_title:
        out.append(
            f'<text class="axis-title" x="{left + pw / 2:.1f}" y="{height - 10}" text-anchor="middle">{esc(x_title)}</text>'
        )
    if y_title:
        out.append(
            f'<text class="axis-title" transform="translate(13,{top + ph / 2:.1f}) rotate(-90)" '
            f'text-anchor="middle">{esc(y_title)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _line_chart_data(x, series, bands):
    """The checked inputs of :func:`line_chart_svg`: x values, their count, series and bands as float arrays."""
    if not series:
        raise InputError("line_chart needs at least one series: pass series={'name': [values...]}.")
    xs = list(x)
    n = len(xs)
    if n == 0:
        raise InputError("line_chart got an empty x: pass the x values (e.g. the layers).")
    ys = {}
    for name, vals in series.items():
        arr = to_array(vals, name=f"series {name!r}", ndim=1)
        if len(arr) != n:
            raise InputError(f"series {name!r} has {len(arr)} values but x has {n}: give one value per x.")
        ys[str(name)] = arr
    band_arrs = {}
    for name, (lo_v, hi_v) in (bands or {}).items():
        lo_a = to_array(lo_v, name=f"band {name!r} low", ndim=1)
        hi_a = to_array(hi_v, name=f"band {name!r} high", ndim=1)
        if len(lo_a) != n or len(hi_a) != n:
            raise InputError(f"band {name!r} has {len(lo_a)}/{len(hi_a)} values but x has {n}: give one per x.")
        band_arrs[str(name)] = (lo_a, hi_a)
    return xs, n, ys, band_arrs


def _bands(band_arrs, xv, sx, sy, lx: float, ly0: float) -> list[str]:
    """The shaded ``(low, high)`` ranges and their legend entries."""
    out = []
    n = len(xv)
    for j, (name, (lo_a, hi_a)) in enumerate(band_arrs.items()):
        ok = [i for i in range(n) if math.isfinite(lo_a[i]) and math.isfinite(hi_a[i])]
        if ok:
            pts = [f"{sx(xv[i]):.1f},{sy(hi_a[i]):.1f}" for i in ok] + [
                f"{sx(xv[i]):.1f},{sy(lo_a[i]):.1f}" for i in reversed(ok)
            ]
            out.append(
                f'<polygon class="band" data-name="{esc(name)}" points="{" ".join(pts)}" fill="#7f7f7f" '
                f'fill-opacity="0.18" stroke="none"><title>{esc(name)}</title></polygon>'
            )
        ly = ly0 + 18 * j
        out.append(
            f'<g class="legend"><rect x="{lx}" y="{ly - 5}" width="18" height="10" fill="#7f7f7f" fill-opacity="0.3"/>'
            f'<text x="{lx + 24}" y="{ly + 4}">{esc(_clip_label(name, 28))}</text></g>'
        )
    return out


def _series(ys, xs, xv, sx, sy, lx: float, ly0: float, x_title: str, y_title: str) -> list[str]:
    """Each series' line (broken at non-finite values), its markers with tooltips, and its legend entry."""
    out = []
    n = len(xv)
    for i, (name, arr) in enumerate(ys.items()):
        col = PALETTE[i % len(PALETTE)]
        segs, cur = [], []
        for xi, yi in zip(xv, arr):
            if math.isfinite(yi):
                cur.append(f"{sx(xi):.1f},{sy(yi):.1f}")
            elif cur:
                segs.append(cur)
                cur = []
        if cur:
            segs.append(cur)
        out.append(f'<g class="series" data-name="{esc(name)}">')
        for seg in segs:
            out.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{col}" stroke-width="2"/>')
        r = 3.0 if n <= 60 else 1.8
        for xi, label, yi in zip(xv, xs, arr):
            if math.isfinite(yi):
                tip = f"{name}: {x_title or 'x'} {label}, {y_title or 'y'} {format_value(float(yi), digits=4)}"
                out.append(
                    f'<circle cx="{sx(xi):.1f}" cy="{sy(yi):.1f}" r="{r}" fill="{col}"><title>{esc(tip)}</title></circle>'
                )
        out.append("</g>")
        ly = ly0 + 18 * i
        out.append(
            f'<g class="legend"><line x1="{lx}" x2="{lx + 18}" y1="{ly}" y2="{ly}" stroke="{col}" stroke-width="2.5"/>'
            f'<text x="{lx + 24}" y="{ly + 4}">{esc(_clip_label(name, 28))}</text></g>'
        )
    return out
