"""The metric protocol (TransformerLens's per-example contract); it lives in :mod:`codecircuits.core.metrics`."""

from .core.metrics import (  # noqa: F401
    Metric,
    Metrics,
    RowwiseMetric,
    as_named,
    check_output,
    evaluate,
    metric_positions,
    per_cell,
    per_cell_named,
    rowwise,
)

__all__ = [
    "Metric",
    "Metrics",
    "RowwiseMetric",
    "as_named",
    "check_output",
    "evaluate",
    "metric_positions",
    "per_cell",
    "per_cell_named",
    "rowwise",
]
