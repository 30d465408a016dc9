"""The metric protocol of every sweep, TransformerLens's: one value per example, from the examples in order.

A metric maps the logits ``[batch, pos, vocab]`` of the prompts, in the order they were given, to one value per
prompt ``[batch]``. Any metric that works with ``transformer_lens.patching`` works here and gives the same
numbers, including one that indexes per-example answer tokens::

    answers = torch.tensor([...])                                   # one answer token per prompt
    metric = lambda logits: logits[torch.arange(len(answers)), -1, answers]

The sweeps stack many cells' runs along the batch dimension, but they call a plain metric once per cell, on
that cell's rows only, which are the examples in order. A metric that treats every row on its own may say so
with :func:`rowwise`; it is then called once per batched forward on all of its rows, with ``examples`` telling
which example each row is, so that per-example labels are indexed by it::

    metric = rowwise(lambda logits, examples: logits[torch.arange(len(examples)), -1, answers[examples]])

A row-wise metric still works wherever a plain one does (``metric(logits)`` treats the rows as the examples in
order), so it can be handed to ``transformer_lens.patching`` as it is. The declaration is checked once per
batched call: a metric whose row values depend on the other rows is refused with an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import InputError

Metric = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RowwiseMetric:
    """A metric declared row-wise: ``fn(logits [rows, pos, vocab], examples [rows]) -> [rows]``, where each
    row's value depends only on that row's logits and on ``examples[row]``, the index of its prompt."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __call__(self, logits: torch.Tensor, examples: torch.Tensor | None = None) -> torch.Tensor:
        if examples is None:  # the TransformerLens call: the rows are the examples, in order
            examples = torch.arange(logits.shape[0], device=logits.device)
        return self.fn(logits, examples)


def rowwise(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> RowwiseMetric:
    """Declare ``fn(logits, examples) -> [rows]`` row-wise, so that sweeps call it once on many cells' rows."""
    if isinstance(fn, RowwiseMetric):
        return fn
    if not callable(fn):
        raise InputError(f"rowwise() takes a function fn(logits, examples) -> [rows]; got {type(fn).__name__}.")
    return RowwiseMetric(fn)


def check_output(out, batch: int) -> torch.Tensor:
    """``out`` if it is one value per example (``[batch]``); otherwise an error saying what the metric returned."""
    if not isinstance(out, torch.Tensor):
        raise InputError(f"The metric must return a tensor of per-example values [batch]; it returned {type(out)}.")
    if out.dim() != 1 or out.shape[0] != batch:
        raise InputError(
            f"The metric must return one value per example, shape [{batch}]; it returned shape {tuple(out.shape)}. "
            "Average inside the metric only over positions/vocab, not over the batch."
        )
    return out


def per_cell(metric: Metric, logits: torch.Tensor, n_cells: int, n_examples: int) -> torch.Tensor:
    """The metric ``[n_cells, n_examples]`` of a batched forward whose rows are ``(cell, example)`` pairs,
    cell-major (row ``c * n_examples + e`` is example ``e`` under cell ``c``).

    A plain metric is called once per cell on that cell's ``n_examples`` rows, the examples in order, exactly as
    ``transformer_lens.patching`` calls it. A :func:`rowwise` metric is called once on all rows, and checked
    against a call on the first cell's rows alone.
    """
    rows = n_cells * n_examples
    if logits.shape[0] != rows:
        raise ValueError(f"{logits.shape[0]} rows of logits for {n_cells} cells x {n_examples} examples")
    if isinstance(metric, RowwiseMetric):
        examples = torch.arange(n_examples, device=logits.device).repeat(n_cells)
        vals = check_output(metric(logits, examples), rows).reshape(n_cells, n_examples)
        if n_cells > 1:
            alone = check_output(metric(logits[:n_examples], examples[:n_examples]), n_examples)
            if not torch.allclose(alone, vals[0], rtol=1e-5, atol=1e-6, equal_nan=True):
                raise InputError(
                    "The metric was declared rowwise(), but a row's value changes with the other rows in the "
                    "batch (it reduces or indexes across rows). Index rows with torch.arange(len(examples)) and "
                    "per-example labels with labels[examples], or pass the plain metric without rowwise()."
                )
        return vals
    return torch.stack(
        [check_output(metric(logits[c * n_examples : (c + 1) * n_examples]), n_examples) for c in range(n_cells)]
    )
