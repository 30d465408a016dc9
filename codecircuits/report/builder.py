"""The report builder: one self-contained, offline HTML file per study.

Everything the page needs is inlined: styles, the small script that sorts tables, circuitsvis's bundled
JavaScript (only when the report has an attention or neuron view) and the data. The page makes no network
request, so it opens on a machine with no network, in any browser, and can be mailed or kept as a CI artefact.
"""

from __future__ import annotations

import datetime as _dt
import functools
import re
import uuid
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from ..errors import InputError
from . import elements as el
from ._util import esc, json_for_script


@functools.cache
def asset(name: str) -> str:
    """The text of a file under ``codecircuits/report/assets/``."""
    return resources.files("codecircuits.report").joinpath("assets", name).read_text(encoding="utf-8")


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, i = base, 2
    while slug in taken:
        slug, i = f"{base}-{i}", i + 1
    taken.add(slug)
    return slug


def page_scripts(needs_circuitsvis: bool) -> str:
    """The ``<script>`` elements a report page or fragment ends with."""
    from .cvis import bundle_js

    cv = f'<script data-origin="circuitsvis">{bundle_js()}</script>' if needs_circuitsvis else ""
    return f'{cv}<script data-origin="codecircuits">{asset("report.js")}</script>'


class Report:
    """An HTML report built piece by piece, saved as one self-contained offline file.

    Example::

        r = Report(title="Closing parentheses on smollm2-135m", subtitle="logit lens and patching")
        r.section("Where the answer emerges", text="The correct paren becomes top-1 at layer 20.")
        r.metrics({"accuracy_1": 1.0}, labels={"accuracy_1": "accuracy, 1 paren"})
        path = r.save("reports/parens/report.html")

    Every method returns the report, so calls can be chained. Pieces before the first :meth:`section` go
    under the title. A report also displays itself in a notebook (offline, like :mod:`.views`).
    """

    def __init__(self, title: str, subtitle: str | None = None, *, meta: Mapping[str, object] | None = None):
        if not str(title).strip():
            raise InputError("A report needs a non-empty title.")
        self.title = str(title)
        self.subtitle = subtitle
        self.meta = dict(meta or {})
        self._sections: list[tuple[str | None, str, list[el.Fragment]]] = [(None, "top", [])]
        self._slugs: set[str] = {"top"}
        self._data: dict[str, object] = {}
        self._metric_keys: set[str] = set()

    @property
    def metric_keys(self) -> frozenset[str]:
        """The keys of the metric cards added so far."""
        return frozenset(self._metric_keys)

    # ------------------------------------------------------------------------------------------ structure
    def add(self, fragment: el.Fragment) -> Report:
        """Append a rendered fragment (e.g. a view's) to the current section."""
        self._sections[-1][2].append(fragment)
        return self

    def section(self, heading: str, text: str | None = None) -> Report:
        """Start a new section (listed in the contents at the top), optionally with an explaining paragraph."""
        if not str(heading).strip():
            raise InputError("A section needs a non-empty heading.")
        self._sections.append((str(heading), _slug(str(heading), self._slugs), []))
        if text:
            self.text(text)
        return self

    def text(self, paragraph: str) -> Report:
        """A paragraph of text (escaped; a blank line starts a new paragraph)."""
        return self.add(el.text(paragraph))

    def metrics(self, values: Mapping, labels: Mapping | None = None, *, digits: int = 4) -> Report:
        """Key numbers as cards, each rendered with ``data-metric="<key>"`` and its exact JSON ``data-value``."""
        dup = self._metric_keys & set(map(str, values))
        if dup:
            raise InputError(f"metrics {sorted(dup)} were already added to this report; each key must be unique.")
        self._metric_keys |= set(map(str, values))
        return self.add(el.metrics(values, labels, digits=digits))

    def table(
        self,
        data,
        caption: str | None = None,
        *,
        columns: Sequence[str] | None = None,
        max_rows: int = el.MAX_TABLE_ROWS,
        digits: int = 4,
    ) -> Report:
        """A sortable table (click a header) from a DataFrame, list of dicts, dict of columns or rows."""
        return self.add(el.table(data, caption=caption, columns=columns, max_rows=max_rows, digits=digits))

    def claims(self, claims, caption: str | None = "Claims and verdicts") -> Report:
        """The study's claim -> verdict table (:class:`codecircuits.intervals.Claim` rows, each number with its 95%
        bootstrap interval and its control)."""
        return self.table([c.row() for c in claims], caption=caption)

    def heatmap(
        self,
        values,
        x_labels: Sequence | None = None,
        y_labels: Sequence | None = None,
        *,
        title: str | None = None,
        caption: str | None = None,
        x_title: str = "",
        y_title: str = "",
        center: float | None = None,
        vmin: float | None = None,
        vmax: float | None = None,
        value_label: str = "value",
        annotate: bool | None = None,
    ) -> Report:
        """A heatmap of ``values[row, col]``: rows on the y axis (e.g. layer), columns on the x axis (e.g.
        position; use :func:`codecircuits.report.position_labels` for "3 print" labels). ``center`` makes the
        colours diverge around it (blue below, red above); hover a cell for its labels and exact value."""
        return self.add(
            el.heatmap(
                values, title=title, caption=caption, x_labels=x_labels, y_labels=y_labels, x_title=x_title,
                y_title=y_title, center=center, vmin=vmin, vmax=vmax, value_label=value_label, annotate=annotate,
            )
        )

    def attention(
        self,
        tokens: Sequence[str],
        patterns,
        head_labels: Sequence[str] | None = None,
        *,
        title: str | None = None,
        caption: str | None = None,
        max_value: float | None = None,
    ) -> Report:
        """Attention patterns ``[n_heads, query, key]`` over ``tokens`` (circuitsvis, offline)."""
        return self.add(
            el.attention(tokens, patterns, head_labels=head_labels, title=title, caption=caption, max_value=max_value)
        )

    def neuron_activations(
        self,
        tokens: Sequence[str],
        activations,
        neuron_labels: Sequence[str] | None = None,
        *,
        layer_labels: Sequence[str] | None = None,
        title: str | None = None,
        caption: str | None = None,
    ) -> Report:
        """Activations ``[pos, neuron]`` or ``[pos, layer, neuron]`` over the tokens with a neuron picker (circuitsvis)."""
        return self.add(
            el.neuron_activations(
                tokens, activations, neuron_labels=neuron_labels, layer_labels=layer_labels, title=title,
                caption=caption,
            )
        )

    def token_values(
        self,
        tokens: Sequence[str],
        values,
        *,
        title: str | None = None,
        caption: str | None = None,
        value_label: str = "value",
        center: float | None = None,
        vmin: float | None = None,
        vmax: float | None = None,
        marked: Sequence[int] = (),
    ) -> Report:
        """Code token by token, each coloured by its value (e.g. one neuron's activation); ``marked`` outlines positions."""
        return self.add(
            el.token_values(
                tokens, values, title=title, caption=caption, value_label=value_label, center=center, vmin=vmin,
                vmax=vmax, marked=marked,
            )
        )

    def code(self, text: str, title: str | None = None, *, language: str = "python") -> Report:
        """Code with syntax highlighting."""
        return self.add(el.code(text, title=title, language=language))

    def line_chart(
        self,
        x: Sequence,
        series: Mapping[str, Sequence],
        *,
        title: str | None = None,
        caption: str | None = None,
        x_title: str = "",
        y_title: str = "",
        zero_line: bool = True,
        bands: Mapping[str, tuple[Sequence, Sequence]] | None = None,
    ) -> Report:
        """Lines of named series over ``x`` (e.g. logit difference per layer), with markers and a legend;
        ``bands`` adds shaded ``(low, high)`` ranges (see :func:`codecircuits.figures.svg.line_chart_svg`)."""
        return self.add(
            el.line_chart(
                x, series, title=title, caption=caption, x_title=x_title, y_title=y_title, zero_line=zero_line,
                bands=bands,
            )
        )

    def data(self, obj, name: str = "results") -> Report:
        """Embed JSON-able data (e.g. the study's results) in the page, as ``<script type="application/json"
        id="cc-data-<name>">``, so the file carries its own numbers."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise InputError(f"data name {name!r} must be letters, digits, '-' or '_'.")
        try:
            json_for_script(obj)
        except (TypeError, ValueError) as e:
            raise InputError(
                f"data {name!r} is not JSON-serialisable (NaN and infinity are not allowed): {e}"
            ) from None
        self._data[name] = obj
        return self

    # ---------------------------------------------------------------------------------------------- output
    @property
    def needs_circuitsvis(self) -> bool:
        return any(f.needs_circuitsvis for _, _, frags in self._sections for f in frags)

    def _body(self, root_id: str) -> str:
        from .. import __version__

        meta = {"generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), **self.meta}
        meta["codecircuits"] = __version__
        meta_html = "".join(f"<span>{esc(k)}: {esc(v)}</span>" for k, v in meta.items())
        sub = f'<p class="subtitle">{esc(self.subtitle)}</p>' if self.subtitle else ""
        toc = "".join(f'<a href="#{slug}">{esc(h)}</a>' for h, slug, _ in self._sections if h)
        parts = [
            f'<div class="ccr" id="{root_id}"><header><h1 data-report-title>{esc(self.title)}</h1>{sub}'
            f'<p class="meta">{meta_html}</p></header>'
        ]
        if toc:
            parts.append(f'<nav class="toc" aria-label="contents">{toc}</nav>')
        parts.append("<main>")
        for heading, slug, frags in self._sections:
            if heading is None and not frags:
                continue
            parts.append(f'<section id="{slug}">')
            if heading:
                parts.append(f"<h2>{esc(heading)}</h2>")
            parts.extend(f.html for f in frags)
            parts.append("</section>")
        parts.append("</main>")
        parts.append(
            "<footer>A self-contained report written by codecircuits: it needs no network; hover a heatmap cell, "
            "a token or a point for its exact value; click a table header to sort.</footer>"
        )
        for name, obj in self._data.items():
            parts.append(f'<script type="application/json" id="cc-data-{name}">{json_for_script(obj)}</script>')
        parts.append("</div>")
        return "".join(parts)

    def to_html(self) -> str:
        """The whole page as one HTML document."""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="codecircuits"><title>{esc(self.title)}</title>'
            f"<style>body{{margin:0;background:#fff}}{asset('report.css')}</style></head>"
            f"<body>{self._body('cc-report')}{page_scripts(self.needs_circuitsvis)}</body></html>\n"
        )

    def save(self, path: str | Path) -> Path:
        """Write the report to ``path`` (parents created) and return the path."""
        path = Path(path)
        if path.suffix.lower() not in (".html", ".htm"):
            raise InputError(f"A report is an HTML file: give a path ending in .html, not {str(path)!r}.")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_html(), encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        """Inline, offline display in Jupyter / VS Code / Colab (styles and scripts inlined, no CDN)."""
        root = f"cc-{uuid.uuid4().hex[:10]}"
        return f"<style>{asset('report.css')}</style>{self._body(root)}{page_scripts(self.needs_circuitsvis)}"

    def __repr__(self) -> str:
        n = sum(len(f) for _, _, f in self._sections)
        return f"Report(title={self.title!r}, sections={len(self._sections) - 1}, pieces={n})"
