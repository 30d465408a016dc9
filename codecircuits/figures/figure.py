"""The figure every result's ``plot()`` returns: an SVG drawn in Python, shown inline in Jupyter and saved as a
standalone offline file.

Why our own SVG and not matplotlib or plotly: the HTML reports already draw their heatmaps and line charts this
way (:mod:`codecircuits.figures.svg`), so a figure in a notebook and the same figure in a report are one drawing,
with the same colour scales and tooltips (every cell and point has a ``<title>`` with its exact value); it needs no
JavaScript and no extra dependency, renders in any browser, in Jupyter, VS Code and GitHub's notebook viewer, and
prints. ``Figure.save("x.svg")`` writes the drawing, ``Figure.save("x.html")`` a page that holds it; both open
offline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import svg
from .style import esc, format_value, to_array

# the report's figure styles, inlined so that a figure reads the same outside a report
STYLE = (
    "text{font:11px system-ui,-apple-system,'Segoe UI',sans-serif;fill:#2b3342}"
    ".axis-title{font-size:12.5px;font-weight:600;fill:#1d2330}.ann{font-size:10px;pointer-events:none}"
    ".frame{stroke:#8a93a3;stroke-width:0.8}.cells rect:hover{stroke:#000;stroke-width:1.2}"
    ".grid line{stroke:#e3e7ee}.zero{stroke:#8a93a3;stroke-dasharray:4 3}.xticks line{stroke:#8a93a3}"
    ".title{font-size:13px;font-weight:600;fill:#1d2330}"
)


@dataclass(frozen=True)
class Figure:
    """An SVG figure with a title: ``_repr_svg_``/``_repr_html_`` show it in Jupyter, :meth:`save` writes it."""

    svg: str
    title: str = ""

    def to_svg(self) -> str:
        """The figure as one standalone SVG document (its styles inside, the title on top)."""
        body = self.svg
        open_end = body.index(">") + 1
        head = f"<style>{STYLE}</style>"
        if self.title:
            head += f"<title>{esc(self.title)}</title>"
        return body[:open_end] + head + body[open_end:]

    def _repr_svg_(self) -> str:
        return self.to_svg()

    def _repr_html_(self) -> str:
        cap = f'<div style="font:600 13px system-ui;margin:4px 0">{esc(self.title)}</div>' if self.title else ""
        return f"<div>{cap}{self.to_svg()}</div>"

    def save(self, path) -> Path:
        """Write the figure to ``path``: ``.svg`` (the drawing) or ``.html`` (a page holding it); returns the path."""
        path = Path(path)
        if path.suffix not in (".svg", ".html"):
            raise InputError(f"Save a figure as .svg or .html, not {path.suffix or 'a name without a suffix'}: {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".svg":
            text = '<?xml version="1.0" encoding="utf-8"?>\n' + self.to_svg()
        else:
            text = (
                f'<!doctype html><html><head><meta charset="utf-8"><title>{esc(self.title or "figure")}</title>'
                f"</head><body>{self._repr_html_()}</body></html>"
            )
        path.write_text(text + "\n", encoding="utf-8")
        return path


def heatmap(values, *, title: str = "", **kwargs) -> Figure:
    """A heatmap of ``values[row, col]`` (options of :func:`codecircuits.figures.svg.heatmap_svg`)."""
    return Figure(svg.heatmap_svg(values, **kwargs), title)


def lines(x: Sequence, series: Mapping[str, Sequence], *, title: str = "", **kwargs) -> Figure:
    """A line chart of named series over ``x`` (options of :func:`codecircuits.figures.svg.line_chart_svg`)."""
    return Figure(svg.line_chart_svg(x, series, **kwargs), title)


def bars(labels: Sequence, values, *, title: str = "", value_title: str = "", width: int = 640) -> Figure:
    """A horizontal bar chart of one value per label, in the order given (the largest first, for a ``top(k)``),
    with a zero line when values have both signs."""
    vals = to_array(values, name="bar values", ndim=1)
    labels = [str(v) for v in labels]
    if len(labels) != len(vals):
        raise InputError(f"bars got {len(labels)} labels and {len(vals)} values: give one value per label.")
    if not len(vals):
        raise InputError("bars got no values: nothing to draw.")
    finite = vals[np.isfinite(vals)]
    lo, hi = (float(min(0.0, finite.min())), float(max(0.0, finite.max()))) if finite.size else (0.0, 1.0)
    if hi == lo:
        hi = lo + 1.0
    row, top = 18, 8
    left = 12 + min(32, max(len(s) for s in labels)) * 6.6
    plot_w = width - left - 70
    height = top + row * len(vals) + 36

    def sx(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    out = [
        f'<svg class="cc-bars" data-kind="bar-chart" data-bars="{len(vals)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(value_title)}">'
    ]
    zero = sx(0.0)
    for i, (label, v) in enumerate(zip(labels, vals)):
        y = top + i * row
        text = label if len(label) <= 32 else label[:31] + "…"
        out.append(f'<text x="{left - 6:.1f}" y="{y + 12}" text-anchor="end">{esc(text)}</text>')
        if np.isfinite(v):
            x0, x1 = sorted((zero, sx(float(v))))
            colour = "#1f77b4" if v >= 0 else "#d62728"
            tip = f"{label}: {format_value(float(v))}"
            out.append(
                f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 0.5):.1f}" height="{row - 6}" fill="{colour}">'
                f"<title>{esc(tip)}</title></rect>"
            )
            out.append(f'<text x="{max(x1, zero) + 4:.1f}" y="{y + 12}">{esc(format_value(float(v), digits=3))}</text>')
    base = top + row * len(vals)
    out.append(f'<line class="zero" x1="{zero:.1f}" x2="{zero:.1f}" y1="{top}" y2="{base}"/>')
    if value_title:
        out.append(
            f'<text class="axis-title" x="{left + plot_w / 2:.1f}" y="{base + 26}" text-anchor="middle">'
            f"{esc(value_title)}</text>"
        )
    out.append("</svg>")
    return Figure("".join(out), title)


def top_bars(frame, value: str, *, label: str | Sequence[str] | None = None, title: str = "") -> Figure:
    """The bar chart of a :meth:`top` table: one bar per row, ``value`` its length, ``label`` (a column, or
    columns joined by a space; default: the first column) its name."""
    if value not in frame.columns:
        raise InputError(f"No column {value!r} to plot; the table has {', '.join(map(str, frame.columns))}.")
    cols = [frame.columns[0]] if label is None else ([label] if isinstance(label, str) else list(label))
    names = [" ".join(str(r[c]) for c in cols) for _, r in frame.iterrows()]
    return bars(names, frame[value].to_numpy(dtype=float), title=title, value_title=value)


__all__ = ["STYLE", "Figure", "bars", "heatmap", "lines", "top_bars"]
