"""The intervention core every method is built on.

- :mod:`~codecircuits.core.sites`: heads, neurons, layers and hook sites; their hook names and labels.
- :mod:`~codecircuits.core.interventions`: what an intervention writes (replace, zero, mean, resample, scale, add,
  subspace swap, edge mask) and the one function that turns one into a hook.
- :mod:`~codecircuits.core.runner`: the only code that runs a model from a layer (skipping the blocks before it),
  reuses a prefix's keys and values, and evaluates many interventions in batched chunks.
- :mod:`~codecircuits.core.metrics`: the per-example metric protocol, named metrics from one forward, and the
  probe that finds which positions a metric reads.
- :mod:`~codecircuits.core.batching`: tokens, paired prompts, pad and BOS ids, memory budgets, progress bars.
- :mod:`~codecircuits.core.inputs`: checked conversions of user input (single-token labels, hook names, token
  texts).
"""

from .batching import (
    DEFAULT_MEMORY_BUDGET,
    bos_id,
    check_pair_lengths,
    pad_id,
    paired_tokens,
    parse_budget,
    progress_bar,
    prompt_batches,
    to_tokens,
)
from .inputs import check_hook_names, single_token_id, token_texts
from .interventions import (
    Add,
    EdgeMask,
    Intervention,
    Mean,
    Replace,
    Resample,
    Scale,
    SubspaceSwap,
    Zero,
    hook,
    resample_index,
)
from .metrics import Metric, Metrics, RowwiseMetric, check_output, metric_positions, per_cell, rowwise
from .runner import Receiver, resid_at, run_cells, run_from, skipped_blocks
from .sites import SITE_KINDS, Head, Layer, Neuron, Site, head_label, hook_name, site_kind

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "SITE_KINDS",
    "Add",
    "EdgeMask",
    "Head",
    "Intervention",
    "Layer",
    "Mean",
    "Metric",
    "Metrics",
    "Neuron",
    "Receiver",
    "Replace",
    "Resample",
    "RowwiseMetric",
    "Scale",
    "Site",
    "SubspaceSwap",
    "Zero",
    "bos_id",
    "check_hook_names",
    "check_output",
    "check_pair_lengths",
    "head_label",
    "hook",
    "hook_name",
    "metric_positions",
    "pad_id",
    "paired_tokens",
    "parse_budget",
    "per_cell",
    "progress_bar",
    "prompt_batches",
    "resample_index",
    "resid_at",
    "rowwise",
    "run_cells",
    "run_from",
    "single_token_id",
    "site_kind",
    "skipped_blocks",
    "to_tokens",
    "token_texts",
]
