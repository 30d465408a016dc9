"""The pieces of a report, each rendered to an HTML fragment: metrics, tables, code, per-token colouring, figures
and circuitsvis views. :class:`~codecircuits.report.Report` strings them together; :mod:`.views` shows one
piece on its own in a notebook.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..figures.svg import heatmap_svg, line_chart_svg
from ._util import ColourScale, esc, format_value, is_special_token, json_for_script, jsonable, show_token, to_array
from .highlight import highlight_python

MAX_TABLE_ROWS = 500


@dataclass(frozen=True)
class Fragment:
    """One rendered piece: its HTML and whether it needs circuitsvis's JavaScript on the page."""

    html: str
    needs_circuitsvis: bool = False


def figure(body: str, title: str | None, caption: str | None, kind: str) -> str:
    """The HTML of a figure: ``body`` (HTML) under an optional ``title``, above an optional ``caption`` (an empty
    caption, ``""``, shows none), marked ``data-figure="<kind>"``."""
    head = f"<h3>{esc(title)}</h3>" if title else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure class="cc-figure" data-figure="{kind}">{head}<div class="figure-scroll">{body}</div>{cap}</figure>'


# ------------------------------------------------------------------------------------------------------- text


def text(paragraph: str) -> Fragment:
    """A paragraph of plain text (escaped; blank lines start new paragraphs)."""
    parts = [p.strip() for p in str(paragraph).split("\n\n") if p.strip()]
    return Fragment("".join(f'<p class="text">{esc(p)}</p>' for p in parts))


# ---------------------------------------------------------------------------------------------------- metrics


def metrics(values: Mapping, labels: Mapping | None = None, *, digits: int = 4) -> Fragment:
    """Key numbers as cards. Each card carries ``data-metric="<key>"`` and ``data-value="<JSON value>"``."""
    if not isinstance(values, Mapping) or not values:
        raise InputError("metrics needs a non-empty dict of name -> value, e.g. {'accuracy': 0.93}.")
    labels = dict(labels or {})
    unknown = set(labels) - set(values)
    if unknown:
        raise InputError(f"metrics labels name keys that are not among the values: {sorted(unknown)}")
    cards = []
    for key, value in values.items():
        value = jsonable(value)
        if not isinstance(value, (int, float, str, bool)) and value is not None:
            raise InputError(f"metric {key!r} must be a number, string, bool or None, got {type(value).__name__}.")
        label = labels.get(key, str(key).replace("_", " "))
        data_value = _json_value(value)
        cards.append(
            f'<div class="cc-metric" data-metric="{esc(key)}" data-value="{esc(data_value)}">'
            f'<div class="value">{esc(format_value(value, digits=digits))}</div>'
            f'<div class="label">{esc(label)}</div></div>'
        )
    return Fragment(f'<div class="cc-metrics">{"".join(cards)}</div>')


def _json_value(value) -> str:
    import json

    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(str(value))  # "nan", "inf", "-inf": strict JSON has no such numbers
    return json.dumps(value)


# ----------------------------------------------------------------------------------------------------- tables


def _table_columns_rows(data, columns: Sequence[str] | None) -> tuple[list[str], list[list]]:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(data, pd.Series):
        data = data.to_frame()
    if pd is not None and isinstance(data, pd.DataFrame):
        df = data
        if not isinstance(df.index, pd.RangeIndex) or df.index.name is not None:
            df = df.reset_index()
        cols = [str(c) for c in df.columns]
        rows = df.to_numpy(dtype=object).tolist()
    elif isinstance(data, Mapping):
        cols = [str(c) for c in data]
        lists = [list(v) for v in data.values()]
        n = {len(v) for v in lists}
        if len(n) > 1:
            raise InputError(f"table columns have different lengths {sorted(n)}: give every column the same length.")
        rows = [list(r) for r in zip(*lists)]
    else:
        rows_in = list(data)
        if rows_in and all(isinstance(r, Mapping) for r in rows_in):
            dicts = [{str(k): v for k, v in r.items()} for r in rows_in]
            cols = list(dict.fromkeys(k for d in dicts for k in d))  # every key, in order of first appearance
            rows = [[d.get(c) for c in cols] for d in dicts]
        else:
            rows = [list(r) for r in rows_in]
            width = {len(r) for r in rows}
            if len(width) > 1:
                raise InputError(f"table rows have different lengths {sorted(width)}.")
            if columns is None:
                cols = [f"column {i}" for i in range(width.pop() if width else 0)]
            else:
                cols = [str(c) for c in columns]
    if columns is not None:
        columns = [str(c) for c in columns]
        if len(columns) != len(cols):
            raise InputError(f"columns= names {len(columns)} columns but the data has {len(cols)}.")
        cols = columns
    return cols, rows


def table(
    data,
    *,
    caption: str | None = None,
    columns: Sequence[str] | None = None,
    max_rows: int = MAX_TABLE_ROWS,
    digits: int = 4,
) -> Fragment:
    """A sortable table from a DataFrame, a list of dicts, a dict of columns or a list of rows (with ``columns``)."""
    cols, rows = _table_columns_rows(data, columns)
    if not cols:
        raise InputError("table has no columns: pass a DataFrame, a list of dicts or rows with columns=[...].")
    shown = rows[:max_rows]
    numeric = []
    for j in range(len(cols)):
        vals = [jsonable(r[j]) for r in shown if jsonable(r[j]) is not None]
        numeric.append(bool(vals) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals))
    head = "".join(f'<th scope="col">{esc(c)}</th>' for c in cols)
    body = []
    for r in shown:
        cells = []
        for j, v in enumerate(r):
            v = jsonable(v)
            if numeric[j] and v is not None:
                cells.append(
                    f'<td class="num" data-sort="{esc(repr(float(v)))}">{esc(format_value(v, digits=digits))}</td>'
                )
            else:
                cells.append(f"<td>{esc('' if v is None else v)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    note = f'<p class="note">Showing the first {max_rows:,} of {len(rows):,} rows.</p>' if len(rows) > max_rows else ""
    html = (
        f'<div class="table-wrap"><table class="cc-table" data-kind="table" data-rows="{len(shown)}">{cap}'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>{note}"
    )
    return Fragment(f'<figure class="cc-figure" data-figure="table">{html}</figure>')


# ------------------------------------------------------------------------------------------------------- code


def code(source: str, *, title: str | None = None, language: str = "python") -> Fragment:
    """Code with syntax highlighting (Python; other languages are shown plainly)."""
    source = str(source)
    body = highlight_python(source) if language == "python" else esc(source)
    return Fragment(figure(f'<pre class="cc-code" data-kind="code"><code>{body}</code></pre>', title, None, "code"))


def token_values(
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
) -> Fragment:
    """Code shown token by token, each token's background coloured by its value (e.g. a neuron's activation).

    Colours are diverging around ``center`` (default 0 when there are negative values) and sequential otherwise;
    hovering a token shows its position and exact value. ``marked`` positions get an outline.
    """
    tokens = [str(t) for t in tokens]
    vals = to_array(values, name="token values", ndim=1)
    if len(vals) != len(tokens):
        raise InputError(f"token_values got {len(tokens)} tokens but {len(vals)} values: give one value per token.")
    if not tokens:
        raise InputError("token_values got no tokens.")
    finite = vals[np.isfinite(vals)]
    if center is None and finite.size and finite.min() < 0:
        center = 0.0
    scale = ColourScale(vals, center=center, vmin=vmin, vmax=vmax)
    marked = {int(m) % len(tokens) for m in marked}
    spans = []
    for i, (tok, v) in enumerate(zip(tokens, vals)):
        tip = f"position {i} · {show_token(tok)!s} · {value_label} {format_value(float(v), digits=4)}"
        cls = "tok marked" if i in marked else "tok"
        style = f"background:{scale.css(float(v))};color:{scale.text_css(float(v))}"
        if is_special_token(tok):
            inner = f'<span class="special">{esc(tok)}</span>'
        else:
            inner = _code_token_html(tok)
        spans.append(f'<span class="{cls}" data-pos="{i}" style="{style}" title="{esc(tip)}">{inner}</span>')
    stops = ", ".join(col for _, col in scale.gradient_stops())
    lo_label, hi_label = scale.end_labels()
    legend = (
        f'<div class="cc-legend"><span>{esc(lo_label)}</span>'
        f'<span class="bar" style="background:linear-gradient(to right, {stops})"></span>'
        f"<span>{esc(hi_label)}</span><span>{esc(value_label)}</span></div>"
    )
    body = f'<pre class="cc-tokens" data-kind="tokens" data-tokens="{len(tokens)}">{"".join(spans)}</pre>{legend}'
    return Fragment(figure(body, title, caption, "tokens"))


def _code_token_html(tok: str) -> str:
    """A token as it sits in code: a newline gets a visible mark (so a newline token shows its colour), and an
    invisible control character is written as its escape."""
    out = []
    for c in tok:
        if c == "\n":
            out.append('<span class="nl">⏎</span>\n')
        elif c in " \t" or c.isprintable():
            out.append(esc(c))
        else:
            out.append(f'<span class="nl">{esc(repr(c)[1:-1])}</span>')
    return "".join(out)


# ---------------------------------------------------------------------------------------------------- figures


def heatmap(values, *, title: str | None = None, caption: str | None = None, **kwargs) -> Fragment:
    """A heatmap with labelled axes (see :func:`codecircuits.figures.svg.heatmap_svg` for the options)."""
    return Fragment(figure(heatmap_svg(values, **kwargs), title, caption, "heatmap"))


def line_chart(x, series, *, title: str | None = None, caption: str | None = None, **kwargs) -> Fragment:
    """A line chart of named series over ``x`` (see :func:`codecircuits.figures.svg.line_chart_svg`)."""
    return Fragment(figure(line_chart_svg(x, series, **kwargs), title, caption, "line-chart"))


# ----------------------------------------------------------------------------------------- circuitsvis views


def _round(arr: np.ndarray, decimals: int = 4):
    return np.round(arr, decimals).tolist()


def _cv_view(component: str, props: dict, *, kind: str, title, caption, extra_attrs: str = "") -> Fragment:
    target = f"cc-cv-{uuid.uuid4().hex[:12]}"
    body = (
        f'<div class="cc-cv" data-kind="{kind}" data-component="{component}"{extra_attrs}>'
        f'<div class="cc-cv-target" id="{target}"></div>'
        f'<script type="application/json" class="cc-cv-props">{json_for_script(props)}</script></div>'
    )
    return Fragment(figure(body, title, caption, kind), needs_circuitsvis=True)


def attention(
    tokens: Sequence[str],
    patterns,
    *,
    head_labels: Sequence[str] | None = None,
    title: str | None = None,
    caption: str | None = None,
    max_value: float | None = None,
) -> Fragment:
    """Attention patterns ``[n_heads, query_pos, key_pos]`` (or one ``[query, key]``) over ``tokens``, drawn by
    circuitsvis's ``AttentionHeads`` from its bundled JavaScript: a thumbnail per head; hover or click one
    to enlarge it, hover a cell to read the query and key tokens."""
    tokens = [str(t) for t in tokens]
    arr = to_array(patterns, name="attention patterns", ndim=(2, 3))
    if arr.ndim == 2:
        arr = arr[None]
    n_heads, q, k = arr.shape
    if q != len(tokens) or k != len(tokens):
        raise InputError(
            f"attention patterns have shape {tuple(arr.shape)} [heads, query, key] but there are {len(tokens)} tokens: "
            "query and key lengths must both equal the number of tokens."
        )
    if n_heads == 0:
        raise InputError("attention got no heads (patterns have 0 heads).")
    labels = [f"head {i}" for i in range(n_heads)] if head_labels is None else [str(h) for h in head_labels]
    if len(labels) != n_heads:
        raise InputError(f"attention got {n_heads} heads but {len(labels)} head_labels.")
    if not np.isfinite(arr).all():
        raise InputError("attention patterns contain NaN or infinite values.")
    if caption is None:
        caption = (
            "Each thumbnail is one head: hover it to enlarge it, click to keep it. In the enlarged pattern a row is "
            "the query (destination) token and a column the key (source) token it attends to; darker is more."
        )
    props = {
        "attention": _round(arr),
        "tokens": tokens,
        "attentionHeadNames": labels,
        "maxValue": float(max_value) if max_value is not None else None,
        "minValue": 0.0,
        "maskUpperTri": True,
    }
    props = {k: v for k, v in props.items() if v is not None}
    attrs = f' data-heads="{n_heads}" data-tokens="{len(tokens)}"'
    return _cv_view("AttentionHeads", props, kind="attention", title=title, caption=caption, extra_attrs=attrs)


def neuron_activations(
    tokens: Sequence[str],
    activations,
    *,
    neuron_labels: Sequence[str] | None = None,
    layer_labels: Sequence[str] | None = None,
    title: str | None = None,
    caption: str | None = None,
) -> Fragment:
    """Activations ``[pos, neuron]`` (or ``[pos, layer, neuron]``) coloured over the tokens, with a neuron
    picker: circuitsvis's ``TextNeuronActivations``, from its bundled JavaScript."""
    tokens = [str(t) for t in tokens]
    arr = to_array(activations, name="neuron activations", ndim=(2, 3))
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if arr.shape[0] != len(tokens):
        raise InputError(
            f"neuron activations have {arr.shape[0]} positions but there are {len(tokens)} tokens "
            "(activations are [pos, neuron] or [pos, layer, neuron])."
        )
    _, n_layers, n_neurons = arr.shape
    if caption is None:
        caption = "Pick a neuron (and layer) above: each token is coloured by that neuron's activation there."
    props = {
        "tokens": tokens,
        "activations": _round(arr),
        "firstDimensionName": "Layer",
        "secondDimensionName": "Neuron",
    }
    if layer_labels is not None:
        if len(layer_labels) != n_layers:
            raise InputError(f"{n_layers} layers of activations but {len(layer_labels)} layer_labels.")
        props["firstDimensionLabels"] = [str(v) for v in layer_labels]
    if neuron_labels is not None:
        if len(neuron_labels) != n_neurons:
            raise InputError(f"{n_neurons} neurons of activations but {len(neuron_labels)} neuron_labels.")
        props["secondDimensionLabels"] = [str(v) for v in neuron_labels]
    attrs = f' data-neurons="{n_neurons}" data-tokens="{len(tokens)}"'
    return _cv_view("TextNeuronActivations", props, kind="neurons", title=title, caption=caption, extra_attrs=attrs)
