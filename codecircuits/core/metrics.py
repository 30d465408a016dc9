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

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import einops
import torch
from jaxtyping import Float

from ..errors import InputError

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


def logit_diff(correct, wrong, *, loss: bool = False, rows: bool = False) -> Metric:
    """The logit-difference metric ``logits [batch, pos, vocab] -> [batch]`` of per-example answer ids.

    ``correct`` and ``wrong`` ``[batch]``: ``logit[correct] - logit[wrong]`` at the last position. ``[batch, pos]``
    (one answer per position, a negative id where there is none): at each position where the two differ, their
    logit difference, averaged over those positions. ``loss``: the negative (a loss, as EAP-IG scores edges).
    ``rows``: declared :func:`rowwise` (sweeps and sharded jobs may then call it on any rows; the values are the
    same). Answers of a pair of clean/corrupted runs give a metric that is high on the clean run.
    """
    correct, wrong = torch.as_tensor(correct).long(), torch.as_tensor(wrong).long()
    if correct.shape != wrong.shape or correct.dim() not in (1, 2):
        raise InputError(
            f"logit_diff takes correct and wrong ids of one shape, [batch] or [batch, pos]; got "
            f"{tuple(correct.shape)} and {tuple(wrong.shape)}."
        )
    if correct.dim() == 2:  # per position, averaged over the positions where the answers differ
        differ = correct != wrong
        weight = differ.float() / differ.sum(-1, keepdim=True).clamp(min=1)
        correct, wrong = correct.clamp(min=0), wrong.clamp(min=0)

    def fn(logits: torch.Tensor, examples: torch.Tensor | None) -> torch.Tensor:
        ex = slice(None) if examples is None else examples.cpu()
        c, w = correct[ex].to(logits.device), wrong[ex].to(logits.device)
        if c.dim() == 2:
            d = logits.gather(-1, c[..., None]) - logits.gather(-1, w[..., None])
            d = (d[..., 0] * weight[ex].to(logits.dtype).to(logits.device)).sum(-1)
        else:
            ar = torch.arange(logits.shape[0], device=logits.device)
            last = logits[:, -1]
            d = last[ar, c] - last[ar, w]
        return -d if loss else d

    return rowwise(fn) if rows else lambda logits: fn(logits, None)


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


def per_cell(
    metric: Metric, logits: Float[torch.Tensor, "rows pos vocab"], n_cells: int, n_examples: int
) -> Float[torch.Tensor, "cell example"]:
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
        examples = einops.repeat(torch.arange(n_examples, device=logits.device), "e -> (cell e)", cell=n_cells)
        vals = einops.rearrange(
            check_output(metric(logits, examples), rows), "(cell example) -> cell example", cell=n_cells
        )
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


# ----------------------------------------------------------------------------------------------------------------
# several named metrics from one forward

Metrics = Metric | Mapping[str, Metric]


def as_named(metric: Metrics) -> dict[str, Metric]:
    """``{name: metric}``: a mapping as it is, a single metric under the name ``"metric"``."""
    if isinstance(metric, Mapping):
        if not metric:
            raise InputError("Give at least one metric: a function or a mapping {name: function}.")
        bad = [k for k, m in metric.items() if not callable(m)]
        if bad:
            raise InputError(f"Metrics {bad} are not functions logits -> [batch].")
        return dict(metric)
    if not callable(metric):
        raise InputError(f"A metric is a function logits [batch, pos, vocab] -> [batch]; got {type(metric).__name__}.")
    return {"metric": metric}


def evaluate(metric: Metrics, logits: torch.Tensor, n_examples: int):
    """The metric(s) of logits of the examples in order: ``[n_examples]``, or ``{name: [n_examples]}`` for a
    mapping of metrics."""
    if isinstance(metric, Mapping):
        return {k: check_output(m(logits), n_examples).detach() for k, m in as_named(metric).items()}
    return check_output(metric(logits), n_examples).detach()


def per_cell_named(metric: Metrics, logits: torch.Tensor, n_cells: int, n_examples: int):
    """:func:`per_cell` for one metric or a mapping of them (then ``{name: [n_cells, n_examples]}``)."""
    if isinstance(metric, Mapping):
        return {k: per_cell(m, logits, n_cells, n_examples).detach() for k, m in as_named(metric).items()}
    return per_cell(metric, logits, n_cells, n_examples).detach()


# ----------------------------------------------------------------------------------------------------------------
# which positions a metric reads


def _same_with_others_replaced(metric: Metric, logits: torch.Tensor, keep: torch.Tensor, ref: torch.Tensor) -> bool:
    other = ~keep
    g = torch.Generator(device="cpu").manual_seed(0)
    for fill in ("nan", "noise"):
        probe = logits.clone()
        if fill == "nan":
            probe[:, other] = float("nan")
        else:
            noise = torch.randn(probe[:, other].shape, generator=g) * 100
            probe[:, other] = noise.to(probe.device, probe.dtype)
        out = metric(probe)
        if not (isinstance(out, torch.Tensor) and out.shape == ref.shape and torch.equal(out, ref)):
            return False
    return True


def metric_positions(metric: Metrics, logits: torch.Tensor) -> list[int] | None:
    """The positions whose logits ``metric`` reads, when that is not all of them; ``None`` means all.

    Checked empirically on ``logits``: the metric must give exactly the same values when every other position is
    replaced by NaN and by large random numbers. The last position alone is tried first (most metrics read only
    it); otherwise each position is dropped in turn to find the ones the values depend on, and that set is
    checked the same way. For a mapping of metrics, the union of what each reads. Sweeps then compute the
    unembedding only there.
    """
    n_pos = logits.shape[1]
    if n_pos < 2:
        return None
    metrics = as_named(metric).values()
    found: set[int] = set()
    for m in metrics:
        try:
            ref = m(logits)
            last = torch.zeros(n_pos, dtype=torch.bool, device=logits.device)
            last[-1] = True
            if _same_with_others_replaced(m, logits, last, ref):
                found.add(n_pos - 1)
                continue
            if n_pos > 64:  # dropping positions one at a time would cost more than it saves
                return None
            keep = torch.zeros(n_pos, dtype=torch.bool, device=logits.device)
            for p in range(n_pos):
                probe = logits.clone()
                probe[:, p] = float("nan")
                out = m(probe)
                if not (isinstance(out, torch.Tensor) and torch.equal(out, ref)):
                    keep[p] = True
            if bool(keep.all()) or not _same_with_others_replaced(m, logits, keep, ref):
                return None
            found.update(int(p) for p in keep.nonzero().flatten())
        except Exception:  # a metric that cannot take the probe reads everything, as far as we know
            return None
    return sorted(found) if found else None
