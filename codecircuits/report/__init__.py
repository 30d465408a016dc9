"""Self-contained offline HTML reports: sections, key numbers, sortable tables, heatmaps and line charts with
labelled axes, highlighted code, per-token colouring, and circuitsvis attention / neuron views rendered from
circuitsvis's bundled JavaScript (never its CDN, never its network check).

>>> from codecircuits.report import Report
>>> r = Report(title="Closing parentheses on smollm2-135m")
>>> r.section("Where the answer emerges", text="...").metrics({"accuracy_1": 1.0})
>>> r.save("reports/parens/report.html")

In notebooks, a :class:`Report` and the pieces of :mod:`codecircuits.report.views` display inline, offline.
"""

from ._util import format_value, position_labels, show_token
from .builder import Report
from .views import (
    View,
    attention_of,
    attention_view,
    head_patterns,
    heatmap_view,
    neuron_acts,
    neuron_view,
    neurons_of,
    token_view,
)

__all__ = [
    "Report",
    "View",
    "attention_of",
    "attention_view",
    "format_value",
    "head_patterns",
    "heatmap_view",
    "neuron_acts",
    "neuron_view",
    "neurons_of",
    "position_labels",
    "show_token",
    "token_view",
]
