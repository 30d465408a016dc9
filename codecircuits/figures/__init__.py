"""Figures drawn as SVG in Python: what every result's ``plot()`` returns and what the HTML reports embed.

- :mod:`~codecircuits.figures.figure`: :class:`Figure` (inline in Jupyter, saved as ``.svg`` or ``.html``) and
  :func:`heatmap`, :func:`lines`, :func:`bars`, :func:`top_bars`.
- :mod:`~codecircuits.figures.svg`: the drawings (heatmaps with a colour bar, line charts with bands).
- :mod:`~codecircuits.figures.style`: numbers as arrays, escaping, number formats, colour scales.
"""

from .figure import Figure, bars, heatmap, lines, top_bars

__all__ = ["Figure", "bars", "heatmap", "lines", "top_bars"]
