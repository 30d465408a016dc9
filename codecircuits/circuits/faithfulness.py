"""Running a model with everything outside a circuit intervened on, many circuits per batched forward; exact
edge patching; the faithfulness curve with MIB's CPR and CMD, beside random circuits of the same sizes.

An edge ``u -> v`` outside the circuit carries the reference value of ``u`` instead of the run's own: the input
of ``v`` becomes ``x_v + sum over removed edges (ref_u - a_u)``, where ``a_u`` is ``u``'s output in the same
(intervened) run and ``ref_u`` is its output on the corrupted prompt (``ablation="patch"``), zero (``"zero"``) or
its mean over the corrupted prompts at that position (``"mean"``). This is EAP-IG's and MIB's evaluation. Each
batch row carries its own circuit (rows are ``(circuit, example)`` pairs, circuit-major), so the ten circuit
sizes of a faithfulness curve, the empty and full circuits and the random baselines run together.

Key and value inputs are shared by the heads of a key/value group, so circuits are evaluated on the grouped
graph; an ungrouped circuit of a grouped-query model is refused (its per-head key/value edges are not separate
inputs of the model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import einops
import torch

from .. import figures, intervals
from ..core.batching import paired_tokens, parse_budget, progress_bar
from ..core.metrics import RowwiseMetric, per_cell
from ..core.runner import row_bytes
from ..errors import InputError
from . import selection
from .attribution import EdgeScores, direction_sign, metric_values, resolve_direction
from .graph import Graph
from .hooks import destination_inputs, destination_slices, input_taps, output_weights, source_hooks

#: MIB's circuit sizes, in percent of the graph's edges
MIB_PERCENTAGES = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
ABLATIONS = ("patch", "zero", "mean")


def _as_masks(circuits, graph: Graph) -> torch.Tensor:
    if isinstance(circuits, selection.Circuit):
        circuits = [circuits]
    if isinstance(circuits, torch.Tensor):
        masks = circuits.bool()
        if masks.dim() == len(graph.valid.shape) + (1 if graph.n_pos else 0):
            masks = masks[None]
    else:
        masks = torch.stack([c.edges.bool() for c in circuits])
    if masks.shape[-2:] != graph.valid.shape:
        raise InputError(
            f"Circuit masks of shape {tuple(masks.shape)} do not fit this graph {tuple(graph.valid.shape)}."
        )
    return masks


def reference_sources(model, graph: Graph, clean_t, corr_t, ablation: str, fwd_hooks=()) -> torch.Tensor:
    """``[n_sources, examples or 1, pos, d_model]``: what a removed edge carries from each source."""
    if ablation not in ABLATIONS:
        raise InputError(f"Unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}.")
    n, n_pos = corr_t.shape
    if ablation == "zero":
        return torch.zeros(graph.n_sources, 1, n_pos, graph.d_model)
    acts = torch.zeros(graph.n_sources, n, n_pos, graph.d_model)
    hooks = source_hooks(graph, acts, output_weights(model)) + list(fwd_hooks)
    with torch.no_grad(), destination_inputs(model), model.hooks(fwd_hooks=hooks):
        model(corr_t)
    return acts.mean(1, keepdim=True) if ablation == "mean" else acts


class _MaskedRun:
    """One forward of ``n_c`` circuits x ``n_e`` examples: the run's own source outputs ``cur[circuit, source,
    example, pos, d]`` and, at each destination, the patch ``sum over removed edges (ref_u - cur_u)``.

    Per circuit and destination the patch is computed from whichever edge set is smaller: the removed edges
    directly, or the kept ones subtracted from the sum over all upstream sources (running totals, so that part
    costs nothing per destination). A small circuit and a circuit missing one edge are then both cheap."""

    def __init__(self, graph: Graph, ref: torch.Tensor, cut: torch.Tensor, n_c: int, n_e: int, n_pos: int, w_o):
        self.graph, self.cut, self.n_c, self.n_e, self.n_pos = graph, cut, n_c, n_e, n_pos
        self.ref_e = ref.shape[1]
        self.ref = ref.reshape(graph.n_sources, -1)  # [source, (examples or 1) * pos * d]
        self.ref_cum = torch.cat([torch.zeros(1, self.ref.shape[1]), self.ref.cumsum(0)])
        self.cur = torch.zeros(n_c, graph.n_sources, n_e, n_pos, graph.d_model)
        self.total = torch.zeros(n_c, n_e * n_pos * graph.d_model)  # sum of cur over the sources seen so far
        self.seen = 0  # sources 0 .. seen-1 are in cur
        self.w_o = w_o
        self.positional = cut.dim() == 4

    def _ref_rows(self, idx: torch.Tensor) -> torch.Tensor:
        r = self.ref[idx]
        if self.ref_e == self.n_e:
            return r
        return r.view(len(idx), 1, -1).expand(-1, self.n_e, -1).reshape(len(idx), -1)

    def _ref_total(self, prev: int) -> torch.Tensor:
        r = self.ref_cum[prev]
        return r if self.ref_e == self.n_e else r.view(1, -1).expand(self.n_e, -1).reshape(-1)

    def delta(self, cols: slice, prev: int) -> torch.Tensor | None:
        m = self.cut[..., :prev, cols]
        if not bool(m.any()):
            return None
        c, e, p, d = self.n_c, self.n_e, self.n_pos, self.graph.d_model
        if self.positional:
            cur = self.cur[:, :prev]
            ref = self.ref[:prev].view(prev, self.ref_e, p, d)
            out = einops.einsum(ref, m, "s e p d, c p s k -> c e p k d") - einops.einsum(
                cur, m, "c s e p d, c p s k -> c e p k d"
            )
            return einops.rearrange(out, "c e p k d -> (c e) p k d")
        k, n = m.shape[2], e * p * d
        n_cut = m.sum((1, 2))
        out = torch.zeros(c, k, n)
        for ci in range(c):
            if n_cut[ci] == 0:
                continue
            if n_cut[ci] <= prev * k - n_cut[ci]:  # few removed edges: sum them
                out[ci] = self._masked_sum(ci, m[ci], prev)
            else:  # few kept edges: everything upstream minus them
                total = self.total[ci]
                if self.seen > prev:  # a parallel block's MLP does not read its own layer's heads
                    total = total - self.cur[ci, prev : self.seen].reshape(self.seen - prev, n).sum(0)
                out[ci] = (self._ref_total(prev) - total)[None]
                keep = 1.0 - m[ci]
                if bool(keep.any()):
                    out[ci] -= self._masked_sum(ci, keep, prev)
        return einops.rearrange(out, "c k (e p d) -> (c e) p k d", e=e, p=p)

    def _masked_sum(self, ci: int, mask: torch.Tensor, prev: int) -> torch.Tensor:
        """``[k, e*p*d]``: ``sum_s mask[s, k] (ref_s - cur_s)`` over the upstream sources of circuit ``ci``: rows
        gathered when few sources take part, else two products over the contiguous prefix."""
        n = self.n_e * self.n_pos * self.graph.d_model
        idx = mask.any(1).nonzero().flatten()
        if len(idx) * 3 < prev:
            return mask[idx].T @ (self._ref_rows(idx) - self.cur[ci, idx].reshape(len(idx), n))
        own = mask.T @ self.cur[ci, :prev].reshape(prev, n)
        ref = mask.T @ self.ref[:prev]
        if self.ref_e != self.n_e:
            ref = ref.view(ref.shape[0], 1, -1).expand(-1, self.n_e, -1).reshape(ref.shape[0], n)
        return ref - own

    def _tally(self, start: int, stop: int):
        def fn(act, hook=None):
            self.total += self.cur[:, start:stop].reshape(self.n_c, stop - start, -1).sum(1)
            self.seen = max(self.seen, stop)
            return act

        return fn

    def hooks(self, model) -> list:
        g = self.graph
        hooks = source_hooks(g, self.cur, self.w_o, n_c=self.n_c)
        hooks.append((g.input_hook(), self._tally(0, 1)))
        for layer in range(g.n_layers):
            h0 = g.head_source(layer)
            hooks.append((g.head_hook(layer), self._tally(h0, h0 + g.n_heads)))
            hooks.append((g.mlp_out_hook(layer), self._tally(h0 + g.n_heads, h0 + g.n_heads + 1)))

        def patcher(slices):
            attn = {}

            def fn(kind, act):
                if kind in ("q", "k", "v"):  # adjacent columns: one patch for the three, kept until each is read
                    if not attn:
                        q, v = slices["q"][0], slices["v"][0]
                        d = self.delta(slice(q.start, v.stop), slices["q"][1])
                        attn.update(
                            {
                                x: None if d is None else d[:, :, sl.start - q.start : sl.stop - q.start]
                                for x, sl in ((x, slices[x][0]) for x in "qkv")
                            }
                        )
                    d = attn.pop(kind)
                else:
                    cols, prev = slices[kind]
                    d = self.delta(cols, prev)
                    d = None if d is None else d[:, :, 0]
                return act if d is None else act + d.to(act.dtype)

            return fn

        for layer in range(g.n_layers):
            hooks += input_taps(model, g, layer, patcher(destination_slices(g, layer)))
        d = g.logits_destination
        logits = patcher({"logits": (slice(d, d + 1), g.n_sources)})
        hooks.append((g.logits_hook(), lambda act, hook=None: logits("logits", act)))
        return hooks


def circuit_metric(
    model,
    clean,
    corrupted,
    metric,
    circuits,
    *,
    graph: Graph | None = None,
    ablation: str = "patch",
    budget=None,
    fwd_hooks=(),
    progress: bool = False,
) -> torch.Tensor:
    """``[n_circuits, n_examples]``: the metric of each example with everything outside each circuit intervened
    on (see the module). ``circuits`` is a :class:`~codecircuits.circuits.selection.Circuit`, a list of them, or
    boolean masks ``[n_circuits, n_sources, n_destinations]`` of the edges kept."""
    clean_t, corr_t = paired_tokens(model, clean, corrupted)
    n, n_pos = clean_t.shape
    if graph is None:
        graph = (
            circuits.graph
            if isinstance(circuits, selection.Circuit)
            else (circuits[0].graph if isinstance(circuits, Sequence) and circuits else Graph.from_model(model))
        )
    if not graph.grouped and graph.group_size > 1:
        raise InputError(
            "Circuits of a grouped-query model are evaluated on the grouped graph (heads of a group share one key "
            "and value input): score with grouped=True, or map the ungrouped circuit onto the grouped graph."
        )
    masks = _as_masks(circuits, graph)
    cut = (~masks & (graph.valid if masks.dim() == 3 else graph.valid[None, None])).float()
    ref = reference_sources(model, graph, clean_t, corr_t, ablation, fwd_hooks)
    per_row = 4 * n_pos * graph.n_sources * graph.d_model * 3 + 2 * row_bytes(model, n_pos)
    rows = max(1, parse_budget(budget) // per_row)
    if isinstance(metric, RowwiseMetric) and rows < n:
        e_chunks = [slice(i, min(i + rows, n)) for i in range(0, n, rows)]
    else:
        e_chunks = [slice(0, n)]
    n_c = len(cut)
    out = torch.zeros(n_c, n)
    w_o = output_weights(model)
    per_chunk = max(1, rows // (e_chunks[0].stop - e_chunks[0].start))
    c_chunks = [slice(i, min(i + per_chunk, n_c)) for i in range(0, n_c, per_chunk)]
    bar = progress_bar(len(c_chunks) * len(e_chunks), "circuits", progress)
    with torch.no_grad(), destination_inputs(model):
        for es in e_chunks:
            n_e = es.stop - es.start
            r = ref if ref.shape[1] == 1 else ref[:, es]
            for cs in c_chunks:
                k = cs.stop - cs.start
                run = _MaskedRun(graph, r, cut[cs], k, n_e, n_pos, w_o)
                tokens = einops.repeat(clean_t[es], "e p -> (c e) p", c=k)
                with model.hooks(fwd_hooks=run.hooks(model) + list(fwd_hooks)):
                    logits = model(tokens)
                out[cs, es] = _per_cell(metric, logits, k, n_e, es).float().cpu()
                bar.update()
    bar.close()
    return out


def _per_cell(metric, logits, n_cells, n_e, es: slice):
    if isinstance(metric, RowwiseMetric):
        examples = torch.arange(es.start, es.stop, device=logits.device).repeat(n_cells)
        return metric(logits, examples).view(n_cells, n_e)
    return per_cell(metric, logits, n_cells, n_e)


def exact_edge_scores(
    model,
    clean,
    corrupted,
    metric,
    *,
    grouped: bool = True,
    edges: Sequence | None = None,
    ablation: str = "patch",
    budget=None,
    fwd_hooks=(),
    direction: str = "auto",
    progress: bool = False,
) -> EdgeScores:
    """The exact effect of every edge (or of ``edges``, names or ``(source, destination)`` pairs): the mean over
    examples of ``m(clean with that edge alone patched) - m(clean)``, one intervened forward per edge (batched),
    oriented as :func:`~codecircuits.circuits.edge_scores` orients its scores (``direction``; positive = the edge
    moves the model toward the clean behaviour). Unmeasured edges are NaN."""
    clean_t, corr_t = paired_tokens(model, clean, corrupted)
    graph = Graph.from_model(model, grouped=grouped)
    if edges is None:
        pairs = [tuple(x) for x in graph.valid.nonzero().tolist()]
    else:
        pairs = [graph.edge_index(e) if isinstance(e, str) else (int(e[0]), int(e[1])) for e in edges]
    masks = graph.valid[None].repeat(len(pairs) + 1, 1, 1)
    for i, (s, d) in enumerate(pairs):
        masks[i + 1, s, d] = False
    values = circuit_metric(model, clean_t, corr_t, metric, masks, graph=graph, ablation=ablation, budget=budget,
                            fwd_hooks=fwd_hooks, progress=progress)
    m_clean, m_corr = float(values[0].double().mean()), _mean_metric(model, corr_t, metric, fwd_hooks)
    resolved = resolve_direction(direction, m_clean, m_corr)
    effect = (values[1:] - values[:1]).mean(1) * direction_sign(resolved)
    scores = torch.full(graph.valid.shape, float("nan"))
    for (s, d), v in zip(pairs, effect.tolist()):
        scores[s, d] = v
    meta = {
        "ablation": ablation,
        "direction": resolved,
        "direction_given": direction,
        "metric_clean": m_clean,
        "metric_corrupted": m_corr,
    }
    return EdgeScores(graph, scores, "exact", 1, clean_t.shape[0], meta=meta)


def _mean_metric(model, tokens: torch.Tensor, metric, fwd_hooks=()) -> float:
    """The metric's mean over the prompts ``tokens`` (one forward without gradients)."""
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        logits = model(tokens)
        values = metric_values(metric, logits, torch.arange(tokens.shape[0], device=logits.device))
    return float(values.double().mean())


# ----------------------------------------------------------------------------------------------------------------
# faithfulness


@dataclass
class FaithfulnessCurve:
    """MIB's faithfulness curve of one selection rule.

    Attributes:
        percentages: circuit sizes in percent of the graph's edges (before pruning, as MIB counts them).
        n_edges: edges in each circuit after pruning.
        faithfulness: ``(m(C_k) - m(empty)) / (m(full) - m(empty))`` per size, ``m`` the mean metric.
        metric: ``m(C_k)`` per size.
        full, empty: ``m`` of the full model and of the empty circuit.
        random: ``[n_random, sizes]`` faithfulness of random circuits of the same sizes.
        absolute: whether edges were ranked by ``|score|`` (CMD's curve) or by signed score (CPR's).
        area: MIB's area under the curve (CPR for a signed curve) and ``area_from_1`` (CMD for |score|).
    """

    percentages: list[float]
    n_edges: list[int]
    faithfulness: list[float]
    metric: list[float]
    full: float
    empty: float
    random: list[list[float]]
    absolute: bool
    selection: str
    ablation: str
    area: float = 0.0
    area_from_1: float = 0.0
    random_area: list[float] = field(default_factory=list)
    random_area_from_1: list[float] = field(default_factory=list)
    per_example: list[list[float]] = field(default_factory=list)  # [size][example] metric, for intervals
    full_per_example: list[float] = field(default_factory=list)
    empty_per_example: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_dataframe(self):
        """One row per circuit size: its percentage of the edges, edges after pruning, faithfulness, the mean metric,
        and the mean faithfulness of the random circuits of that size."""
        import pandas as pd

        rnd = [sum(r[i] for r in self.random) / len(self.random) if self.random else math.nan
               for i in range(len(self.percentages))]
        return pd.DataFrame(
            {
                "percentage": self.percentages,
                "n_edges": self.n_edges,
                "faithfulness": self.faithfulness,
                "metric": self.metric,
                "random_faithfulness": rnd,
            }
        )

    def area_interval(self, from_1: bool = False, *, n_resamples: int = 1000, seed: int = 0) -> intervals.Interval:
        """The curve's area (``area``, CPR for a signed curve; ``from_1``: ``area_from_1``, CMD for ``|score|``)
        with a percentile-bootstrap interval over the examples, the circuits fixed."""
        values = torch.tensor([self.full_per_example, self.empty_per_example, *self.per_example]).T
        x = torch.tensor(self.percentages, dtype=torch.float64) / 100

        def stat(v):  # [resamples, examples, 2 + sizes] -> [resamples]
            means = v.mean(-2)
            f = (means[..., 2:] - means[..., 1:2]) / (means[..., :1] - means[..., 1:2])
            y = (1 - f).abs() if from_1 else f
            return ((x[1:] - x[:-1]) * (y[..., 1:] + y[..., :-1]) / 2).sum(-1)

        iv = intervals.statistic(stat, values, n_resamples=n_resamples, seed=seed)
        return replace(iv, estimate=self.area_from_1 if from_1 else self.area)

    def top(self, k: int = 10):
        """The ``k`` circuit sizes with the largest signed faithfulness: the rows of :meth:`to_dataframe`, largest
        first."""
        return self.to_dataframe().sort_values("faithfulness", ascending=False, kind="stable").head(k)

    def plot(self) -> figures.Figure:
        """Faithfulness over circuit size, with the random circuits' range of the same sizes shaded."""
        series = {"circuit": list(self.faithfulness)}
        bands = None
        if self.random:
            cols = list(zip(*self.random))
            bands = {"random circuits": ([min(c) for c in cols], [max(c) for c in cols])}
        kind = "|score|" if self.absolute else "signed score"
        return figures.lines(list(self.percentages), series, bands=bands, x_title="edges (%)", y_title="faithfulness",
                             title=f"faithfulness of {self.selection} circuits by {kind}")


def faithfulness_stat(values: torch.Tensor) -> torch.Tensor:
    """``values [..., examples, circuits]`` (per-example metric of the full circuit first, the empty one second, then
    the others) -> ``[..., circuits - 2]``: each other circuit's faithfulness, NaN where full and empty give the same
    mean; a statistic for :func:`codecircuits.intervals.statistic` (``dtype=None`` keeps the metric's precision)."""
    means = values.movedim(-1, 0).contiguous().mean(-1)  # [circuits, ...]
    full, empty = means[0], means[1]
    span = full - empty
    out = torch.where(span.abs() > 0, (means[2:] - empty) / span, torch.full_like(means[2:], float("nan")))
    return out.movedim(0, -1)


def areas(percentages: Sequence[float], faithfulness: Sequence[float]) -> tuple[float, float]:
    """MIB's circuit-track areas: trapezoids over the edge fractions of ``faithfulness`` and of ``|1 - f|``."""
    x = [p / 100 for p in percentages]
    under = sum((x[i + 1] - x[i]) * (faithfulness[i] + faithfulness[i + 1]) / 2 for i in range(len(x) - 1))
    from_1 = sum(
        (x[i + 1] - x[i]) * (abs(1 - faithfulness[i]) + abs(1 - faithfulness[i + 1])) / 2 for i in range(len(x) - 1)
    )
    return float(under), float(from_1)


def _select(scores: EdgeScores, n: int, absolute: bool, rule: str) -> selection.Circuit:
    if rule == "greedy":
        return scores.greedy(n, absolute=absolute)
    return scores.top_n(n, absolute=absolute)


def faithfulness_curves(
    model,
    scores: EdgeScores,
    clean,
    corrupted,
    metric,
    *,
    percentages: Sequence[float] = MIB_PERCENTAGES,
    selection_rule: str = "topn",
    ablation: str = "patch",
    n_random: int = 3,
    seed: int = 0,
    budget=None,
    fwd_hooks=(),
    progress: bool = False,
) -> dict[str, FaithfulnessCurve]:
    """``{"signed": curve, "absolute": curve}``: MIB's two faithfulness curves of ``scores``, from one batched
    evaluation of every circuit (both rules' sizes, the empty and full circuits, ``n_random`` random circuits of
    each size). CPR is the signed curve's ``area``, CMD the absolute curve's ``area_from_1``."""
    if selection_rule not in ("topn", "greedy"):
        raise InputError(f"selection_rule must be 'topn' or 'greedy', not {selection_rule!r}.")
    graph = scores.graph
    if graph.n_pos:
        raise InputError("Faithfulness curves are computed on edges summed over positions (per_position=False).")
    total = int(graph.valid.sum())
    sizes = [int(p / 100 * total) for p in percentages]
    circuits: list[selection.Circuit] = [
        selection.Circuit(graph, graph.valid.clone()),
        selection.Circuit(graph, torch.zeros_like(graph.valid)),
    ]
    for absolute in (False, True):
        circuits += [_select(scores, n, absolute, selection_rule) for n in sizes]
    for r in range(n_random):
        rnd = EdgeScores(graph, selection.random_scores(graph, seed + r), "random", 1, 0)
        circuits += [_select(rnd, n, True, selection_rule) for n in sizes]
    per_example = circuit_metric(model, clean, corrupted, metric, circuits, graph=graph, ablation=ablation,
                                 budget=budget, fwd_hooks=fwd_hooks, progress=progress)
    values = per_example.mean(1)
    full, empty = float(values[0]), float(values[1])
    span = full - empty

    def faith(v):
        return (float(v) - empty) / span if span != 0 else math.nan

    k = len(sizes)
    rand = [[faith(values[2 + 2 * k + r * k + i]) for i in range(k)] for r in range(n_random)]
    out = {}
    for j, (name, absolute) in enumerate((("signed", False), ("absolute", True))):
        vals = values[2 + j * k : 2 + (j + 1) * k]
        f = [faith(v) for v in vals]
        curve = FaithfulnessCurve(percentages=[float(p) for p in percentages],
                                  n_edges=[circuits[2 + j * k + i].n_edges for i in range(k)], faithfulness=f,
                                  metric=[float(v) for v in vals], full=full, empty=empty, random=rand,
                                  absolute=absolute, selection=selection_rule, ablation=ablation,
                                  per_example=per_example[2 + j * k : 2 + (j + 1) * k].tolist(),
                                  full_per_example=per_example[0].tolist(), empty_per_example=per_example[1].tolist())
        curve.area, curve.area_from_1 = areas(percentages, f)
        ra = [areas(percentages, rf) for rf in rand]
        curve.random_area = [a for a, _ in ra]
        curve.random_area_from_1 = [b for _, b in ra]
        out[name] = curve
    return out


def cpr(curves: dict[str, FaithfulnessCurve]) -> float:
    """MIB's CPR: the area under the faithfulness curve of signed scores (higher is better)."""
    return curves["signed"].area


def cmd(curves: dict[str, FaithfulnessCurve]) -> float:
    """MIB's CMD: the area under ``|1 - f|`` of absolute scores (lower is better)."""
    return curves["absolute"].area_from_1


def edge_auroc(scores: EdgeScores, true_edges, *, absolute: bool = True) -> float:
    """The AUROC of ranking every edge by (absolute) score against the set of ``true_edges`` (EAP-IG names), the
    measure InterpBench and MIB use for models with known circuits (ties share their rank)."""
    graph = scores.graph
    names = graph.edge_names()
    truth = set(true_edges)
    unknown = truth - set(names)
    if unknown:
        raise InputError(f"True edges {sorted(unknown)[:5]} are not edges of this graph.")
    idx = graph.valid.nonzero()
    vals = scores.edge_matrix[idx[:, 0], idx[:, 1]]
    vals = vals.abs() if absolute else vals
    labels = torch.tensor([n in truth for n in names])
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        raise InputError("AUROC needs both true and false edges.")
    order = torch.argsort(vals.double())
    ranks = torch.empty(len(vals), dtype=torch.float64)
    sorted_vals = vals.double()[order]
    i = 0
    while i < len(vals):  # average ranks over ties
        j = i
        while j + 1 < len(vals) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = float(ranks[labels].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)
