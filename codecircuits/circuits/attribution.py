"""Edge attribution: EAP, EAP-IG over the input embeddings, EAP-IG over activations, and clean-corrupted.

Every method scores an edge ``u -> v`` as ``(a_u(corrupted) - a_u(clean)) . dm/dx_v``, summed over positions and
``d_model`` and averaged over examples, where ``a_u`` is the source's output and ``x_v`` the destination's input
(before its norm); they differ in where the gradient is taken:

- ``"EAP"``: at the clean run. Cost 2 F + 1 B (a corrupted forward without gradients, a clean forward and one
  backward; F and B over the same batch).
- ``"EAP-IG-inputs"`` (the default; EAP-IG's and MIB's recommendation): averaged over ``steps`` runs whose input
  embeddings are ``corrupted + k/steps (clean - corrupted)``, ``k = 0 .. steps-1`` (EAP-IG's points). 2 F +
  steps (F + B).
- ``"EAP-IG-activations"``: for each group of sources (the input, a layer's heads, a layer's MLP) the group's
  output is interpolated ``corrupted + k/steps (clean - corrupted)``, ``k = 1 .. steps``, and only that group's
  edges take the gradient of those runs. (EAP-IG's code adds every run's gradient to every edge; here an edge
  integrates along its own source's path, which is what the method integrates.) 2 F + steps (2 L + 1) (F + B).
- ``"clean-corrupted"``: the mean of the gradients at the clean and at the corrupted run. 3 F + 2 B.

The source differences are held in one tensor ``[batch, pos, n_sources, d_model]`` (fp32) and each destination's
gradient is contracted against the sources upstream of it in a backward hook as the backward reaches it: one
einsum per destination hook (a layer's query, key, value and MLP inputs, the logits), never a Python loop over
edges. Examples are streamed in chunks that fit ``budget`` (a :func:`~codecircuits.core.metrics.rowwise` metric
is needed for more than one chunk, since a plain metric sees the examples all together).

In the grouped view a key/value destination's gradient is the one the model has (its group's shared input); the
ungrouped view splits it per query head exactly: after the backward, each head's share is the gradient of that
head's ``pattern @ v`` with respect to the group's key and value inputs, given the head's output gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import einops
import pandas as pd
import torch

from .. import figures
from ..core.batching import paired_tokens, parse_budget, progress_bar
from ..core.metrics import RowwiseMetric, check_output
from ..core.runner import row_bytes
from ..errors import InputError
from . import selection
from .graph import Graph
from .hooks import destination_inputs, destination_slices, input_taps, output_weights, source_hooks

METHODS = ("EAP", "EAP-IG-inputs", "EAP-IG-activations", "clean-corrupted")
LEVELS = ("edge", "neuron")
# which way the metric's clean behaviour lies: "higher" (a logit difference, a log-probability: TransformerLens's
# metrics), "lower" (a loss, EAP-IG's convention), or "auto" (from its mean on the clean and the corrupted runs)
DIRECTIONS = ("auto", "higher", "lower")


def resolve_direction(direction: str, metric_clean: float, metric_corrupted: float) -> str:
    """``"higher"`` or ``"lower"``: ``direction`` itself, or for ``"auto"`` the side of the clean run's mean metric
    (an error when the clean and corrupted means are equal, which leaves the direction undefined)."""
    if direction not in DIRECTIONS:
        raise InputError(f"Unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}.")
    if direction != "auto":
        return direction
    if metric_clean == metric_corrupted:
        raise InputError(
            f"The metric's mean is the same on the clean and the corrupted prompts ({metric_clean:.6g}), so which "
            "way is the clean behaviour cannot be told from it: pass direction='higher' (a metric that is higher "
            "on the clean behaviour) or direction='lower' (a loss)."
        )
    return "higher" if metric_clean > metric_corrupted else "lower"


def direction_sign(direction: str) -> float:
    """The factor from EAP-IG's sign (``m(edge corrupted) - m(clean)``) to scores oriented toward the clean
    behaviour: ``-1`` for a metric that is higher on it, ``+1`` for a loss."""
    return -1.0 if direction == "higher" else 1.0


@dataclass
class EdgeScores:
    """Scores of every edge of ``graph``: ``scores[source, destination]`` (``[pos, source, destination]`` for a
    per-position graph), the mean over ``n_examples`` examples, 0 where there is no edge.

    A positive score means the edge moves the model toward the clean behaviour (corrupting it moves the metric
    away from its clean value), whether the metric is higher or lower on the clean behaviour:
    ``meta["direction"]`` records which (``"higher"``/``"lower"``), with the metric's means on the clean and
    corrupted runs (``meta["metric_clean"]``, ``meta["metric_corrupted"]``). For a loss this is EAP-IG's sign.

    ``neuron_scores[source, d_model]`` (with ``level="neuron"``) splits each source's node score over the
    residual dimensions it writes (EAP-IG's neuron level); :attr:`node_scores` is each source's total.
    """

    graph: Graph
    scores: torch.Tensor
    method: str
    steps: int
    n_examples: int
    neuron_scores: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    @classmethod
    def merge(cls, parts: Sequence[EdgeScores]) -> EdgeScores:
        """Scores of the same graph on consecutive shards of the examples, as one: each score is a mean over
        examples, so the shards' means are averaged weighted by their example counts, ``sum_i n_i * s_i / n``
        (in float64, then back to the scores' dtype): one process's up to the rounding of its float32 sums."""
        parts = list(parts)
        if not parts:
            raise InputError("Nothing to merge: give at least one EdgeScores.")
        n = sum(p.n_examples for p in parts)
        meta = dict(parts[0].meta)
        # each shard oriented its scores by its own direction; merge in EAP-IG's sign, then orient once
        signs = [direction_sign(p.meta.get("direction", "lower")) for p in parts]
        sign = 1.0
        if "direction" in meta:
            for key in ("metric_clean", "metric_corrupted"):
                meta[key] = sum(p.meta[key] * p.n_examples for p in parts) / n
            meta["direction"] = resolve_direction(
                meta.get("direction_given", meta["direction"]), meta["metric_clean"], meta["metric_corrupted"]
            )
            sign = direction_sign(meta["direction"])

        def weighted(name: str) -> torch.Tensor | None:
            first = getattr(parts[0], name)
            if first is None:
                return None
            raw = sum(getattr(p, name).double() * (s * p.n_examples) for p, s in zip(parts, signs))
            return (raw * (sign / n)).to(first.dtype)

        return replace(parts[0], scores=weighted("scores"), neuron_scores=weighted("neuron_scores"), n_examples=n, meta=meta)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per edge of the graph (summed over positions): its name, source, destination and score."""
        g, m = self.graph, self.edge_matrix
        src, dst = g.valid.nonzero(as_tuple=True)
        return pd.DataFrame(
            {
                "edge": [g.edge_name(int(a), int(b)) for a, b in zip(src.tolist(), dst.tolist())],
                "source": [g.source_names[int(a)] for a in src.tolist()],
                "destination": [g.destination_names[int(b)] for b in dst.tolist()],
                "score": m[src, dst].tolist(),
            }
        )

    def top(self, k: int = 10, *, absolute: bool = True) -> pd.DataFrame:
        """The ``k`` edges with the largest ``|score|`` (``absolute=False``: the largest scores, the edges that move
        the model most toward the clean behaviour)."""
        df = self.to_dataframe()
        key = df["score"].abs() if absolute else df["score"]
        return df.loc[key.sort_values(ascending=False, kind="stable").index[:k]].reset_index(drop=True)

    def plot(self, k: int = 20, *, absolute: bool = True) -> figures.Figure:
        """The top ``k`` edges as bars (positive: toward the clean behaviour)."""
        return figures.top_bars(self.top(k, absolute=absolute), "score", label="edge",
                                title=f"{self.method} edge scores: top {k}")

    @property
    def edge_matrix(self) -> torch.Tensor:
        """``[source, destination]`` scores, summed over positions for a per-position graph."""
        return self.scores if self.scores.dim() == 2 else self.scores.sum(0)

    @property
    def node_scores(self) -> torch.Tensor:
        """``[n_sources]``: each source's score, the sum of its outgoing edges (its node attribution, since every
        path from a source to the metric passes through a destination)."""
        return self.edge_matrix.sum(1)

    @property
    def destination_scores(self) -> torch.Tensor:
        """``[n_destinations]``: each destination's score, the sum of its incoming edges."""
        return self.edge_matrix.sum(0)

    def score(self, name: str) -> float:
        """The score of one edge by name (``a0.h1->m2``)."""
        s, d = self.graph.edge_index(name)
        return float(self.edge_matrix[s, d])

    def top_edges(self, k: int = 10, *, absolute: bool = True) -> list[tuple[str, float]]:
        """The ``k`` best edges by (absolute) score, best first, as ``(name, score)``."""
        m = self.edge_matrix
        ranked = torch.where(self.graph.valid, m.abs() if absolute else m, torch.tensor(-torch.inf))
        idx = torch.sort(ranked.flatten(), descending=True, stable=True).indices[:k]
        nd = m.shape[1]
        return [(self.graph.edge_name(int(i) // nd, int(i) % nd), float(m.flatten()[i])) for i in idx]

    def top_n(self, n: int, *, absolute: bool = True, prune: bool = True) -> selection.Circuit:
        return selection.top_n(self.scores, self.graph, n, absolute=absolute, prune=prune)

    def threshold(self, value: float, *, absolute: bool = True, prune: bool = True) -> selection.Circuit:
        return selection.threshold(self.scores, self.graph, value, absolute=absolute, prune=prune)

    def greedy(self, n: int, *, absolute: bool = True, prune: bool = True) -> selection.Circuit:
        return selection.greedy(self.edge_matrix, self.graph, n, absolute=absolute, prune=prune)


def metric_values(metric, logits: torch.Tensor, examples: torch.Tensor) -> torch.Tensor:
    """``metric`` on the logits of the examples ``examples`` (their indices in the whole set): a row-wise metric is
    handed the indices, a plain one only the logits; checked to give one value per example."""
    if isinstance(metric, RowwiseMetric):
        return check_output(metric(logits, examples), logits.shape[0])
    return check_output(metric(logits), logits.shape[0])


def _metric_sum(metric, logits: torch.Tensor, examples: torch.Tensor) -> float:
    with torch.no_grad():
        return float(metric_values(metric, logits, examples).double().sum())


def example_chunks(model, metric, n_examples: int, n_pos: int, per_example_bytes: int, budget) -> list[slice]:
    """Chunks of examples that fit ``budget``; one chunk for a plain (not row-wise) metric, or an error when it
    does not fit."""
    per = per_example_bytes + 4 * row_bytes(model, n_pos)
    size = max(1, parse_budget(budget) // max(per, 1))
    if size >= n_examples:
        return [slice(0, n_examples)]
    if not isinstance(metric, RowwiseMetric):
        raise InputError(
            f"{n_examples} examples need about {per * n_examples / 2**20:.0f} MiB, more than the memory budget "
            f"({parse_budget(budget) / 2**20:.0f} MiB): raise budget=, or declare the metric row-wise with "
            "codecircuits.core.metrics.rowwise(lambda logits, examples: ...) so that examples can be streamed."
        )
    return [slice(i, min(i + size, n_examples)) for i in range(0, n_examples, size)]


class _Pass:
    """State of one chunk of examples: the source differences and the accumulators the backward hooks fill."""

    def __init__(self, model, graph: Graph, n_rows: int, n_pos: int, scores, neurons, w_o):
        self.model = model
        self.graph = graph
        self.diff = torch.zeros(graph.n_sources, n_rows, n_pos, graph.d_model)
        self.scores = scores
        self.neurons = neurons
        self.w_o = w_o
        self.rows: slice | None = None  # restrict accumulation to these sources (IG over activations)
        self.ungroup = not graph.grouped and graph.group_size > 1
        self.saved: dict = {}
        self.pending: dict = {}
        self.summing: dict | None = None  # gradients summed over integration steps, by destination

    # -- accumulation -------------------------------------------------------------------------------------------

    def accumulate(self, cols: slice, prev: int, grad: torch.Tensor) -> None:
        """Add ``diff[:prev] . grad`` to ``scores[:prev, cols]``; ``grad`` is ``[batch, pos, k, d]``. While
        :attr:`summing` (several gradient runs against the same differences: the integration steps), the
        gradients are summed per destination and contracted once by :meth:`contract`, the score being linear in
        them."""
        if self.summing is not None:
            key = (cols.start, cols.stop, prev)
            if key in self.summing:
                self.summing[key] += grad.float()
            else:
                self.summing[key] = grad.float().clone()
            return
        self._contract(cols, prev, grad)

    def contract(self) -> None:
        """Contract the summed gradients (see :meth:`accumulate`) and start a new sum."""
        pending, self.summing = self.summing, None
        for (start, stop, prev), grad in (pending or {}).items():
            self._contract(slice(start, stop), prev, grad)
        self.summing = {} if pending is not None else None

    def _contract(self, cols: slice, prev: int, grad: torch.Tensor) -> None:
        lo, hi = (0, prev) if self.rows is None else (self.rows.start, min(self.rows.stop, prev))
        if hi <= lo:
            return
        d = self.diff[lo:hi]
        g = grad.float()
        if self.graph.n_pos:
            self.scores[:, lo:hi, cols] += einops.einsum(d, g, "s b p d, b p k d -> p s k")
        else:  # one matrix product: [sources, batch*pos*d] @ [batch*pos*d, k]
            self.scores[lo:hi, cols] += d.reshape(hi - lo, -1) @ einops.rearrange(g, "b p k d -> (b p d) k")
        if self.neurons is not None:
            self.neurons[lo:hi] += einops.einsum(d, g.sum(2), "s b p d, b p d -> s d")

    def destination_hooks(self) -> list:
        g = self.graph
        hooks = []
        for layer in range(g.n_layers):
            hooks += input_taps(self.model, g, layer, self._transform(layer, destination_slices(g, layer)))
            if self.ungroup:
                hooks += self._ungroup_hooks(layer)
        d = g.logits_destination
        logits = self._transform(None, {"logits": (slice(d, d + 1), g.n_sources)})
        hooks.append((g.logits_hook(), lambda act, hook=None: logits("logits", act)))
        return hooks

    def _transform(self, layer, slices):
        def fn(kind, act):
            if not act.requires_grad:
                return act
            # a copy of its own: the bridge may hand the hook the residual tensor itself (hook_mlp_in is
            # resid_mid on some architectures), whose gradient would include every later reader's
            fork = act.clone()
            if self.ungroup and kind in ("k", "v"):
                self.saved[(layer, kind)] = fork
                return fork
            cols, prev = slices[kind]
            if kind in ("mlp", "logits"):
                fork.register_hook(lambda grad: self.accumulate(cols, prev, grad[:, :, None]))
            elif self.ungroup:
                fork.register_hook(lambda grad: self.accumulate(cols, prev, grad))
            else:  # a layer's q, k and v columns are adjacent: one product once the three gradients are in
                fork.register_hook(lambda grad: self._attention_grad(layer, kind, grad, slices))
            return fork

        return fn

    def _attention_grad(self, layer, kind, grad, slices) -> None:
        box = self.pending.setdefault(layer, {})
        box[kind] = grad
        if len(box) == 3:
            self._flush(layer, slices)

    def _flush(self, layer, slices) -> None:
        box = self.pending.pop(layer, {})
        prev = slices["q"][1]
        if len(box) == 3:
            cols = slice(slices["q"][0].start, slices["v"][0].stop)
            self.accumulate(cols, prev, torch.cat([box["q"], box["k"], box["v"]], dim=2))
        else:  # a path was cut (a caller's hook froze the pattern, say): what arrived, one by one
            for kind, grad in box.items():
                self.accumulate(slices[kind][0], prev, grad)

    def flush_all(self) -> None:
        for layer in list(self.pending):
            self._flush(layer, destination_slices(self.graph, layer))

    # -- the ungrouped view: each query head's share of its group's key/value gradient -------------------------

    def _ungroup_hooks(self, layer: int) -> list:
        def keep(name):
            def fn(act, hook=None):
                self.saved[(layer, name)] = act
                if name == "z" and act.requires_grad:
                    act.register_hook(lambda grad: self.saved.__setitem__((layer, "gz"), grad))
                return act

            return fn

        return [
            (f"blocks.{layer}.attn.hook_pattern", keep("pattern")),
            (f"blocks.{layer}.attn.hook_v", keep("vv")),
            (f"blocks.{layer}.attn.hook_z", keep("z")),
        ]

    def ungrouped_scores(self) -> None:
        g = self.graph
        for layer in range(g.n_layers):
            k_in, v_in = self.saved[(layer, "k")], self.saved[(layer, "v")]
            pattern, vv, gz = self.saved[(layer, "pattern")], self.saved[(layer, "vv")], self.saved.get((layer, "gz"))
            if gz is None:
                continue
            sl = destination_slices(g, layer)
            for h in range(g.n_heads):
                slot = h // g.group_size
                z_h = einops.einsum(pattern[:, h], vv[:, :, slot], "b q k, b k e -> b q e")
                gk, gv = torch.autograd.grad(
                    z_h, (k_in, v_in), grad_outputs=gz[:, :, h], retain_graph=True, allow_unused=True
                )
                for kind, grad in (("k", gk), ("v", gv)):
                    if grad is None:
                        continue
                    cols, prev = sl[kind]
                    col = cols.start + h
                    self.accumulate(slice(col, col + 1), prev, grad[:, :, slot : slot + 1])
        self.saved.clear()

    # -- runs ---------------------------------------------------------------------------------------------------

    def record(self, tokens: torch.Tensor, sign: float, extra=(), keep_inputs: dict | None = None) -> torch.Tensor:
        """A forward without gradients adding ``sign *`` every source's output to ``diff``."""
        hooks = source_hooks(self.graph, self.diff, self.w_o, sign=sign) + list(extra)
        with torch.no_grad(), self.model.hooks(fwd_hooks=hooks):
            return self.model(tokens)

    def grad_run(self, tokens, metric, examples, *, input_value=None, replace=(), record_sign=None, extra=()):
        """A forward with the destination hooks, the metric summed over examples, and one backward; returns that sum."""
        model, g = self.model, self.graph
        leaf_box = {}

        def input_leaf(act, hook=None):
            base = act.detach() if input_value is None else input_value.to(act.dtype)
            leaf = base.clone().requires_grad_(True)
            leaf_box["leaf"] = leaf
            return leaf

        hooks = []
        if record_sign is not None:
            hooks += source_hooks(g, self.diff, self.w_o, sign=record_sign)
        hooks += [(g.input_hook(), input_leaf)] + list(replace) + self.destination_hooks() + list(extra)
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            logits = model(tokens)
            values = metric_values(metric, logits, examples)
            torch.autograd.grad(values.sum(), [leaf_box["leaf"]], retain_graph=self.ungroup)
            self.flush_all()
            if self.ungroup:
                self.ungrouped_scores()
        return float(values.detach().double().sum())


def edge_scores(
    model,
    clean,
    corrupted,
    metric,
    *,
    method: str = "EAP-IG-inputs",
    steps: int = 5,
    grouped: bool = True,
    per_position: bool = False,
    level: str = "edge",
    budget=None,
    fwd_hooks=(),
    direction: str = "auto",
    progress: bool = False,
) -> EdgeScores:
    """Score every edge of the model's graph for the effect of corrupting the prompts on ``metric``.

    Args:
        model: a TransformerBridge (:func:`codecircuits.load_model`).
        clean, corrupted: prompts (strings) or tokens ``[batch, pos]``, pairwise of equal token length.
        metric: ``logits -> [batch]``, one value per example in order (TransformerLens's contract), or a
            :func:`~codecircuits.core.metrics.rowwise` metric (then examples stream under ``budget``).
        method: one of :data:`METHODS` (see the module).
        steps: the integration steps of the EAP-IG methods (EAP-IG's recommendation, 5, by default).
        grouped: key/value destinations per key/value group (exact) or per query head (EAP-IG's and MIB's view).
        per_position: one edge per token position (scores ``[pos, source, destination]``).
        level: ``"edge"``, or ``"neuron"`` to also split each source's score over its ``d_model`` outputs.
        budget: memory for one chunk of examples (bytes or ``"2GB"``).
        fwd_hooks: extra forward hooks installed in every run (e.g. to freeze a norm's scale).
        direction: ``"higher"`` if the metric is higher on the clean behaviour (a logit difference: the metric
            contract of this toolkit and TransformerLens), ``"lower"`` for a loss, ``"auto"`` (default) to take
            it from the metric's mean on the clean and the corrupted runs (which the methods run anyway).
        progress: draw a progress bar over the runs.

    Returns:
        :class:`EdgeScores`, the mean over examples, oriented so that a positive score means the edge moves the
        model toward the clean behaviour: ``-(m(edge corrupted) - m(clean))`` for a metric that is higher on the
        clean behaviour, ``m(edge corrupted) - m(clean)`` (EAP-IG's sign) for a loss. So a metric and its
        negation give the same scores, and the signed top-n circuit (MIB's CPR) keeps the edges that help.
    """
    if method not in METHODS:
        raise InputError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if level not in LEVELS:
        raise InputError(f"Unknown level {level!r}; choose one of {', '.join(LEVELS)}.")
    if direction not in DIRECTIONS:
        raise InputError(f"Unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}.")
    steps = int(steps)
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}.")
    clean_t, corr_t = paired_tokens(model, clean, corrupted)
    n, n_pos = clean_t.shape
    graph = Graph.from_model(model, grouped=grouped, per_position=per_position, n_pos=n_pos)
    shape = (n_pos, graph.n_sources, graph.n_destinations) if per_position else graph.valid.shape
    scores = torch.zeros(shape)
    neurons = torch.zeros(graph.n_sources, graph.d_model) if level == "neuron" else None
    per_example = 4 * n_pos * graph.d_model * (2 * graph.n_sources + graph.n_destinations)  # diff, summed grads
    chunks = example_chunks(model, metric, n, n_pos, per_example, budget)
    n_groups = 2 * graph.n_layers + 1
    per_chunk = {"EAP": 2, "EAP-IG-inputs": 2 + steps, "clean-corrupted": 3, "EAP-IG-activations": 2 + steps * n_groups}
    bar = progress_bar(per_chunk[method] * len(chunks), f"{method} edge scores", progress)
    w_o = output_weights(model)
    device = clean_t.device
    m_sums = [0.0, 0.0]  # the metric summed over examples on the clean and the corrupted runs
    with destination_inputs(model):
        for chunk in chunks:
            ct, kt = clean_t[chunk], corr_t[chunk]
            examples = torch.arange(chunk.start, chunk.stop, device=device)
            run = _Pass(model, graph, ct.shape[0], n_pos, scores, neurons, w_o)
            if method != "EAP":
                run.summing = {}
            if method == "EAP-IG-activations":
                m_clean, m_corr = _activation_ig(run, ct, kt, metric, examples, steps, fwd_hooks, bar)
                m_sums[0] += m_clean
                m_sums[1] += m_corr
                continue
            m_sums[1] += _metric_sum(metric, run.record(kt, +1.0, fwd_hooks), examples)
            bar.update()
            if method == "EAP":
                m_sums[0] += run.grad_run(ct, metric, examples, record_sign=-1.0, extra=fwd_hooks)
            elif method == "clean-corrupted":
                m_sums[0] += run.grad_run(ct, metric, examples, record_sign=-1.0, extra=fwd_hooks)
                bar.update()
                run.grad_run(kt, metric, examples, extra=fwd_hooks)
            elif method == "EAP-IG-inputs":
                x_corr = run.diff[0].clone()
                m_sums[0] += _metric_sum(metric, run.record(ct, -1.0, fwd_hooks), examples)
                x_clean = x_corr - run.diff[0]
                for k in range(steps):
                    bar.update()
                    x = x_corr + (k / steps) * (x_clean - x_corr)
                    run.grad_run(ct, metric, examples, input_value=x, extra=fwd_hooks)
            run.contract()
            bar.update()
    bar.close()
    m_clean, m_corr = m_sums[0] / n, m_sums[1] / n
    resolved = resolve_direction(direction, m_clean, m_corr)
    divisor = {"EAP": 1, "EAP-IG-inputs": steps, "clean-corrupted": 2, "EAP-IG-activations": steps}[method]
    scores /= n * divisor * direction_sign(resolved)
    if per_position:
        scores *= graph.valid[None]
    else:
        scores *= graph.valid
    if neurons is not None:
        neurons /= n * divisor * direction_sign(resolved)
    meta = {"direction": resolved, "direction_given": direction, "metric_clean": m_clean, "metric_corrupted": m_corr}
    return EdgeScores(graph, scores, method, steps if "IG" in method else 1, n, neurons, meta=meta)


def _activation_ig(run: _Pass, clean_t, corr_t, metric, examples, steps: int, fwd_hooks, bar) -> tuple[float, float]:
    """EAP-IG over activations for one chunk of examples; returns the metric summed over them on the clean and the
    corrupted runs."""
    g = run.graph
    saved: dict[str, torch.Tensor] = {}

    def keep(name, sign):
        def fn(act, hook=None):
            saved[name] = saved.get(name, 0) + sign * act.detach()
            return act

        return fn

    names = [g.input_hook()] + [h for layer in range(g.n_layers) for h in (g.head_hook(layer), g.mlp_out_hook(layer))]
    # corrupted values of the hooked outputs (z for heads), then clean ones; diff becomes corrupted - clean
    m_corr = _metric_sum(metric, run.record(corr_t, +1.0, [(n_, keep(n_, 1.0)) for n_ in names] + list(fwd_hooks)), examples)
    bar.update()
    corr = dict(saved)
    saved.clear()
    m_clean = _metric_sum(metric, run.record(clean_t, -1.0, [(n_, keep(n_, 1.0)) for n_ in names] + list(fwd_hooks)), examples)
    clean = dict(saved)
    bar.update()
    groups = [(g.input_hook(), slice(0, 1))]
    for layer in range(g.n_layers):
        h0 = g.head_source(layer)
        groups += [
            (g.head_hook(layer), slice(h0, h0 + g.n_heads)),
            (g.mlp_out_hook(layer), slice(h0 + g.n_heads, h0 + g.n_heads + 1)),
        ]
    for name, rows in groups:
        run.rows = rows
        for k in range(1, steps + 1):
            bar.update()
            a = k / steps
            value = corr[name] + a * (clean[name] - corr[name])
            if name == g.input_hook():
                run.grad_run(clean_t, metric, examples, input_value=value, extra=fwd_hooks)
            else:
                replace = [(name, lambda act, hook=None, v=value: v.to(act.dtype))]
                run.grad_run(clean_t, metric, examples, replace=replace, extra=fwd_hooks)
        run.contract()
    run.rows = None
    return m_clean, m_corr
