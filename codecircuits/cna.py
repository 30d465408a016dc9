"""Arithmetic heads and Comparative Neuron Analysis (Yu & Ananiadou, EMNLP 2024; METHODS §3.3-3.4).

- :func:`head_sweep`: ablate each attention head alone (zero its ``attn.hook_z`` at every position) and measure
  accuracy and the log-probability of the label over a task, for every head. It is the head sweep of
  :func:`codecircuits.ablation.head_sweep` with those two metrics: each layer's heads are stacked along the batch
  and run from the cached ``resid_pre`` of that layer, with the earlier blocks skipped and only the scored
  position unembedded, so the sweep costs about half a forward pass per head instead of a full one.
- :func:`head_effects`: a few given heads ablated alone (:func:`codecircuits.ablation.ablate`), one full forward
  each (the held-out re-scoring of the heads a sweep selected).
- :func:`compare`: CNA. ``CNA(l, k) = Imp_M(l, k) - Imp_M'(l, k)`` where ``Imp`` is the log-probability increase
  of FFN neuron k of layer l (:mod:`codecircuits.neurons`), ``M`` the model and ``M'`` the model with one head
  ablated; both read through ``M``'s frozen final scale, for ``M``'s top-1 token.
- :func:`mask_keep`: the paper's verification table: zero each prompt's top-N CNA neurons ("mask"), or zero every
  other neuron of the layers from the head's layer on ("keep"), and report the accuracy decrease; plus the
  decrease of the top neurons' coefficients in ``M'`` and a random-mask control. :class:`MaskKeepTable` keeps each
  prompt's outcome, so its decreases come with bootstrap intervals (:meth:`MaskKeepTable.decrease`,
  :meth:`MaskKeepTable.intervals`).

The two head functions are the task-level views of :mod:`codecircuits.ablation`, the one route that zeroes or
mean-ablates heads: they score its named metrics (:func:`codecircuits.ablation.label_metrics`) over batches of
prompts; :func:`compare` ablates its head through :func:`codecircuits.ablation.ablation_hooks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import ablation, figures, intervals
from .core.batching import budget_from_megabytes, n_prompts, parse_budget, prompt_batches
from .core.merging import PER_PROMPT, concat_per_prompt
from .core.metrics import evaluate
from .core.runner import row_bytes
from .core.sites import Head, Neuron, check_heads, head_label
from .errors import InputError
from .intervals import Interval
from .neurons import (
    DEFAULT_READOUT_BUDGET,
    check_position,
    clean_run,
    ffn_scores_batch,
    neuron_mask_hooks,
    resolve_target,
    target_token_strings,
)

# ----------------------------------------------------------------------------------------------------------
# single-head ablation sweep


@dataclass(frozen=True)
class HeadSweep:
    """Each head ablated alone over a task. ``accuracy[layer, head]`` and ``logprob[layer, head]`` (mean log p of
    the label) after ablation; ``correct`` and ``prompt_logprob`` keep the per-prompt values
    (``[layer, head, prompt]``) so any subset (one template, one operation) can be re-scored."""

    accuracy: torch.Tensor
    logprob: torch.Tensor
    base_accuracy: float
    base_logprob: float
    correct: torch.Tensor
    prompt_logprob: torch.Tensor
    base_correct: torch.Tensor
    labels: torch.Tensor
    axes: tuple[str, ...] = ("layer", "head")

    @classmethod
    def merge(cls, parts: Sequence[HeadSweep]) -> HeadSweep:
        """Sweeps of the same heads on consecutive shards of the prompts, as one sweep: per-prompt values joined
        in order, the means taken again over all the prompts (the base log-probability, kept only as a mean,
        as the shards' means weighted by their prompts)."""
        parts = list(parts)
        if not parts:
            raise InputError("Nothing to merge: give at least one HeadSweep.")
        correct = torch.cat([p.correct for p in parts], dim=-1)
        plp = torch.cat([p.prompt_logprob for p in parts], dim=-1)
        base_correct = torch.cat([p.base_correct for p in parts])
        n = sum(int(p.base_correct.shape[0]) for p in parts)
        base_logprob = sum(p.base_logprob * int(p.base_correct.shape[0]) for p in parts) / n
        return replace(parts[0], accuracy=correct.float().mean(-1), logprob=plp.mean(-1),
                       base_accuracy=float(base_correct.float().mean()), base_logprob=float(base_logprob),
                       correct=correct, prompt_logprob=plp, base_correct=base_correct,
                       labels=torch.cat([p.labels for p in parts]))

    @property
    def accuracy_drop(self) -> torch.Tensor:
        """``base_accuracy - accuracy`` per head (positive = the head helps)."""
        return self.base_accuracy - self.accuracy

    def to_dataframe(self) -> pd.DataFrame:
        n_layers, n_heads = self.accuracy.shape
        rows = []
        for layer in range(n_layers):
            for head in range(n_heads):
                rows.append(
                    {
                        "layer": layer,
                        "head": head,
                        "name": str(Head(layer, head)),
                        "accuracy": float(self.accuracy[layer, head]),
                        "accuracy_drop": float(self.accuracy_drop[layer, head]),
                        "logprob": float(self.logprob[layer, head]),
                        "logprob_drop": self.base_logprob - float(self.logprob[layer, head]),
                    }
                )
        return pd.DataFrame(rows)

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` rows of :meth:`to_dataframe` whose ablation hurts most: the largest signed ``accuracy_drop``
        first, ties broken by the larger ``logprob_drop`` (a stable sort: then by layer and head)."""
        df = self.to_dataframe().sort_values(["accuracy_drop", "logprob_drop"], ascending=False, kind="stable")
        return df.head(k).reset_index(drop=True)

    def plot(self, of: str = "accuracy_drop") -> figures.Figure:
        """A layer × head heatmap of ``of``: ``"accuracy_drop"`` (default; positive = the head helps),
        ``"logprob_drop"``, ``"accuracy"`` or ``"logprob"``."""
        grids = {
            "accuracy_drop": self.accuracy_drop,
            "logprob_drop": self.base_logprob - self.logprob,
            "accuracy": self.accuracy,
            "logprob": self.logprob,
        }
        if of not in grids:
            raise InputError(f"plot(of={of!r}): choose one of {', '.join(map(repr, grids))}.")
        centred = of.endswith("_drop")
        return figures.heatmap(grids[of].float(), title=f"each head ablated alone: {of.replace('_', ' ')}",
                               y_title="layer", x_title="head", center=0.0 if centred else None, value_label=of)

    def top_head(self) -> tuple[int, int]:
        row = self.top(1).iloc[0]
        return int(row["layer"]), int(row["head"])

    def fraction_harmless(self, tolerance: float = 0.02) -> float:
        """Fraction of heads whose ablation changes accuracy by at most ``tolerance`` (absolute)."""
        return float((self.accuracy_drop.abs() <= tolerance).float().mean())



def _target_of(target, labels, where: str):
    """``target``, or the deprecated ``labels=`` keyword's value, with a warning naming the one name labels have
    across codecircuits (``target``, as in ``cna.compare`` and ``neurons.ffn_neurons``)."""
    if labels is None:
        return target
    if target is not None:
        raise InputError(f"{where}: give target (the correct token per prompt), not both target and labels.")
    import warnings

    warnings.warn(f"{where}(labels=...) is deprecated: pass target=, the one name of the correct tokens across "
                  "codecircuits.", DeprecationWarning, stacklevel=3)
    return labels


def _rows_budget(model, n_pos: int, rows: int) -> int:
    """Bytes of a memory budget that fits about ``rows`` rows of a head-ablation forward over ``n_pos`` tokens
    that unembeds one position (the per-row estimate of :func:`codecircuits.core.runner.row_bytes`)."""
    return int(rows) * row_bytes(model, n_pos, 0, 1)


def head_sweep(
    model,
    prompts,
    target=None,
    *,
    pos: int = -1,
    heads: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 32,
    max_rows: int | None = None,
    memory_budget=None,
    labels=None,
    progress: bool = True,
) -> HeadSweep:
    """Ablate every head (or the given ``(layer, head)`` list, pairs or ``"L3H7"`` labels) alone and score the task.

    ``target``: the correct next token per prompt (ids or single-token strings); None uses the clean run's top-1,
    so the base accuracy is 1. Heads not in ``heads`` keep the base values.

    The zero ablations run on :func:`codecircuits.ablation.head_sweep` (both scores from the same forwards, each
    layer's heads stacked along the batch and run from that layer on, only ``pos`` unembedded), once per batch of
    ``batch_size`` prompts of one token length. ``memory_budget`` (bytes or ``"2GB"``) bounds each batched
    forward; ``max_rows`` instead bounds it to about that many (head, prompt) rows. One process;
    ``codecircuits.distributed.run(cna.head_sweep, ..., workers=N)`` shards the prompts over workers.
    """
    target = _target_of(target, labels, "cna.head_sweep")
    if max_rows is not None:
        import warnings

        warnings.warn("cna.head_sweep(max_rows=...) is deprecated: pass memory_budget (bytes or a string like "
                      "'500MB'), the one name of a memory limit across codecircuits.", DeprecationWarning, stacklevel=2)
    if max_rows is not None and max_rows < 1:
        raise InputError(f"max_rows must be at least 1, got {max_rows}.")
    if max_rows is not None and memory_budget is not None:
        raise InputError("Give max_rows or memory_budget, not both.")
    if memory_budget is not None:
        parse_budget(memory_budget)  # an unreadable budget fails before any forward
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    batches = prompt_batches(model, prompts, batch_size)
    n = n_prompts(batches)
    lab = resolve_target(model, target, n)
    todo = (
        [Head(layer, h) for layer in range(n_layers) for h in range(n_heads)]
        if heads is None
        else check_heads(model, heads)
    )
    # layers that sweep the same heads share one call of the ablation engine
    by_layer: dict[int, set[int]] = {}
    for h in todo:
        by_layer.setdefault(h.layer, set()).add(h.head)
    groups: dict[tuple[int, ...], list[int]] = {}
    for layer, hs in sorted(by_layer.items()):
        groups.setdefault(tuple(sorted(hs)), []).append(layer)
    correct = torch.zeros(n_layers, n_heads, n, dtype=torch.bool)
    plp = torch.zeros(n_layers, n_heads, n)
    base_correct = torch.zeros(n, dtype=torch.bool)
    base_lp = torch.zeros(n)
    labels_out = torch.zeros(n, dtype=torch.long)
    for ix, toks in batches:
        check_position(pos, toks.shape[1])
        clean = None
        if lab is None:
            with torch.no_grad():
                clean = model(toks)
            t = clean[:, pos].float().argmax(-1)
        else:
            t = lab[ix]
        metrics = ablation.label_metrics(t, pos)
        budget = _rows_budget(model, toks.shape[1], max_rows) if max_rows is not None else memory_budget
        base = None
        for hs, layers in groups.items():
            res = ablation.head_sweep(model, toks, metrics, kind="zero", layers=layers, heads=list(hs),
                                      memory_budget=budget, progress=progress)
            if base is None:
                base = {k: r.base for k, r in res.items()}
            at = (torch.tensor(layers)[:, None, None], torch.tensor(hs)[None, :, None], torch.tensor(ix)[None, None, :])
            correct[at] = res["correct"].per_example.cpu() > 0.5
            plp[at] = res["logprob"].per_example.cpu().float()
        if base is None:  # no head to sweep: the base values of a clean run
            with torch.no_grad():
                base = evaluate(metrics, model(toks) if clean is None else clean, len(ix))
        labels_out[ix] = t.cpu()
        base_correct[ix] = base["correct"].cpu() > 0.5
        base_lp[ix] = base["logprob"].cpu().float()
    return _sweep_result(todo, correct, plp, base_correct, base_lp, labels_out)


def _sweep_result(todo, correct, plp, base_correct, base_lp, labels) -> HeadSweep:
    """The :class:`HeadSweep` of per-head, per-prompt values ``[layer, head, prompt]``; the heads not in ``todo`` (not
    swept) keep the base values."""
    swept = torch.zeros(correct.shape[:2], dtype=torch.bool)
    for h in todo:
        swept[h.layer, h.head] = True
    correct[~swept] = base_correct
    plp[~swept] = base_lp
    return HeadSweep(accuracy=correct.float().mean(-1), logprob=plp.mean(-1),
                     base_accuracy=float(base_correct.float().mean()), base_logprob=float(base_lp.mean()),
                     correct=correct, prompt_logprob=plp, base_correct=base_correct, labels=labels)


def head_effects(
    model,
    prompts,
    target,
    heads: Sequence[tuple[int, int]],
    *,
    pos: int = -1,
    batch_size: int = 32,
    progress: bool = True,
) -> HeadSweep:
    """A few heads (pairs or ``"L3H7"`` labels) ablated alone, each by one full forward with its ``attn.hook_z``
    zeroed at every position: the same numbers as :func:`head_sweep` with ``heads=``, cheaper when the heads lie in
    many different layers (the sweep engine runs one clean forward per layer it sweeps). ``target``: the correct
    token per prompt. Heads not listed keep the base values."""
    todo = check_heads(model, heads)
    batches = prompt_batches(model, prompts, batch_size)
    n = n_prompts(batches)
    lab = resolve_target(model, target, n)
    if lab is None:
        raise InputError("head_effects needs the correct token of every prompt (target).")
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    correct = torch.zeros(n_layers, n_heads, n, dtype=torch.bool)
    plp = torch.zeros(n_layers, n_heads, n)
    base_correct = torch.zeros(n, dtype=torch.bool)
    base_lp = torch.zeros(n)

    def score(logits, t):
        lg = logits[:, pos].float()
        return (lg.argmax(-1) == t).cpu(), torch.log_softmax(lg, -1).gather(1, t[:, None])[:, 0].cpu()

    bar = tqdm(total=len(batches) * (len(todo) + 1), desc="head effects", disable=not progress)
    with torch.no_grad():
        for ix, toks in batches:
            check_position(pos, toks.shape[1])
            t = lab[ix]
            base_correct[ix], base_lp[ix] = score(model(toks), t)
            bar.update(1)
            for h in todo:
                with ablation.ablate(model, heads=[h]):
                    correct[h.layer, h.head, ix], plp[h.layer, h.head, ix] = score(model(toks), t)
                bar.update(1)
    bar.close()
    return _sweep_result(todo, correct, plp, base_correct, base_lp, lab.cpu())


def select_heads(sweep: HeadSweep, ops: Sequence[str], n_top: int) -> list[tuple[int, int]]:
    """Heads chosen on a :func:`head_sweep`: the ``n_top`` heads with the largest accuracy drop, then the most
    harmful head of each group of prompts (``ops[prompt]`` names its group, e.g. its operation; ties broken by the
    log-probability drop on that group's prompts)."""
    chosen = [tuple(int(x) for x in r) for r in sweep.top(n_top)[["layer", "head"]].values]
    for op in dict.fromkeys(ops):
        rows = torch.tensor([i for i, o in enumerate(ops) if o == op])
        d = sweep.base_correct[rows].float().mean() - sweep.correct[:, :, rows].float().mean(-1)
        key = d * 1e3 - sweep.prompt_logprob[:, :, rows].mean(-1)
        flat = int(key.flatten().argmax())
        h = (flat // d.shape[1], flat % d.shape[1])
        if h not in chosen:
            chosen.append(h)
    return chosen


@dataclass(frozen=True)
class HeldOutHeads:
    """Chosen heads and a random-head control re-scored on held-out prompts (:func:`head_effects` of both):
    ``sweep`` holds every prompt's outcome for these heads (``correct[layer, head, prompt]``); ``ops[prompt]`` names
    each prompt's group (its operation). Accuracy drops per head and group with paired bootstrap intervals, the
    excess over the random heads, and the heads specific to one group."""

    heads: tuple[tuple[int, int], ...]
    random_heads: tuple[tuple[int, int], ...]
    sweep: HeadSweep
    ops: tuple[str, ...]

    @property
    def op_names(self) -> list[str]:
        return list(dict.fromkeys(self.ops))

    def _rows(self, op: str | None) -> torch.Tensor:
        rows = [i for i, o in enumerate(self.ops) if op is None or o == op]
        if not rows:
            raise InputError(f"No held-out prompt of operation {op!r}.")
        return torch.tensor(rows)

    def drops(self, head: tuple[int, int], op: str | None = None) -> torch.Tensor:
        """Per prompt: 1 where the head's ablation breaks a right answer, -1 where it mends a wrong one."""
        r = self._rows(op)
        return self.sweep.base_correct[r].float() - self.sweep.correct[head[0], head[1], r].float()

    def drop(self, head: tuple[int, int], op: str | None = None) -> Interval:
        """The head's accuracy drop (base minus ablated accuracy) with its paired bootstrap interval."""
        return intervals.mean(self.drops(head, op))

    def random_drops(self, op: str | None = None) -> torch.Tensor:
        """Per prompt, the drop averaged over the random control heads."""
        return torch.stack([self.drops(h, op) for h in self.random_heads]).mean(0)

    def random_drop(self, op: str | None = None) -> Interval:
        return intervals.mean(self.random_drops(op))

    def excess(self, head: tuple[int, int], op: str | None = None) -> Interval:
        """The head's drop minus the random heads' mean drop on the same prompts (paired)."""
        return intervals.mean(self.drops(head, op) - self.random_drops(op))

    def base_accuracy(self, op: str | None = None) -> Interval:
        return intervals.mean(self.sweep.base_correct[self._rows(op)].float())

    def specific(self) -> list[tuple[tuple[int, int], str]]:
        """``(head, op)`` pairs where the head's drop interval lies above zero on ``op`` and on no other op."""
        out = []
        for h in self.heads:
            above = [o for o in self.op_names if self.drop(h, o).above(0)]
            if len(above) == 1:
                out.append((h, above[0]))
        return out

    def _per_op(self, f) -> dict:
        """``{"all": f(None), op: f(op), ...}``."""
        return {"all": f(None), **{o: f(o) for o in self.op_names}}

    def table(self) -> pd.DataFrame:
        """One row per head (chosen, random, then the random heads' mean): its drop with interval per group."""
        rows = []
        for kind, hs in (("selected", self.heads), ("random", self.random_heads)):
            for h in hs:
                rows.append({"head": head_label(*h), "kind": kind,
                             **self._per_op(lambda o, h=h: self.drop(h, o).format(3))})
        rows.append({"head": "mean of random heads", "kind": "control",
                     **self._per_op(lambda o: self.random_drop(o).format(3))})
        return pd.DataFrame(rows)

    def to_json(self) -> dict:
        return {
            "heads": [head_label(*h) for h in self.heads],
            "random_heads": [head_label(*h) for h in self.random_heads],
            "n_prompts": len(self.ops),
            "n_prompts_per_op": {o: sum(1 for x in self.ops if x == o) for o in self.op_names},
            "base_accuracy": self._per_op(lambda o: self.base_accuracy(o).to_json()),
            "accuracy_drop": {
                head_label(*h): self._per_op(lambda o, h=h: self.drop(h, o).to_json())
                for h in (*self.heads, *self.random_heads)
            },
            "random_heads_mean_drop": self._per_op(lambda o: self.random_drop(o).to_json()),
            "specific_heads": [{"head": head_label(*h), "op": o} for h, o in self.specific()],
        }


# ----------------------------------------------------------------------------------------------------------
# comparative neuron analysis


@dataclass(frozen=True)
class CNAResult:
    """CNA against one ablated head. Tensors have axes ``prompt, layer, neuron``.

    ``cna = imp_original - imp_ablated``; the log-probability increases are computed for layers from the head's
    layer on (earlier layers are untouched by the ablation, so CNA is exactly 0 there and the importances are
    NaN = not computed unless ``all_layers=True``). ``coef_*`` are the neurons' activations in M and M'.
    ``prob_original`` / ``prob_ablated``: the target's probability in each model's own output.
    """

    cna: torch.Tensor = field(metadata=PER_PROMPT)
    imp_original: torch.Tensor = field(metadata=PER_PROMPT)
    imp_ablated: torch.Tensor = field(metadata=PER_PROMPT)
    coef_original: torch.Tensor = field(metadata=PER_PROMPT)
    coef_ablated: torch.Tensor = field(metadata=PER_PROMPT)
    target: torch.Tensor = field(metadata=PER_PROMPT)
    prob_original: torch.Tensor = field(metadata=PER_PROMPT)
    prob_ablated: torch.Tensor = field(metadata=PER_PROMPT)
    head: tuple[int, int]
    exact_authors_lens: bool = False
    pos: int = -1
    target_tokens: tuple[str, ...] = field(default=(), metadata=PER_PROMPT)
    axes: tuple[str, ...] = ("prompt", "layer", "neuron")
    settings: dict = field(default_factory=dict)

    @classmethod
    def merge(cls, parts: Sequence[CNAResult]) -> CNAResult:
        """Results of one comparison on consecutive shards of the prompts, as one result (prompt order kept)."""
        return concat_per_prompt(parts)

    @property
    def n_prompts(self) -> int:
        return int(self.target.shape[0])

    def top_indices(self, k: int = 10) -> torch.Tensor:
        """Per prompt, flat indices ``layer * d_mlp + neuron`` of the ``k`` highest CNA neurons: ``[prompt, k]``,
        chosen among the layers the ablation can reach (from the head's layer on)."""
        return self._reachable(self.cna).reshape(self.n_prompts, -1).topk(k, dim=1).indices

    def _reachable(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` with -inf on layers that were not scored or that the ablation cannot reach."""
        scored = [layer for layer in self.settings.get("layers", range(t.shape[-2])) if layer >= self.head[0]]
        out = torch.full_like(t, float("-inf"))
        out[..., scored, :] = t[..., scored, :]
        return out

    def top(self, k: int = 10, prompt: int | None = None) -> pd.DataFrame:
        """The ``k`` neurons with the largest signed CNA (the mean over prompts, or ``prompt``'s), largest first, one
        row per neuron (:meth:`to_dataframe` has one per prompt and neuron), among the layers the ablation
        reaches."""

        def pick(t):
            return t.nanmean(0) if prompt is None else t[prompt]

        cna = self._reachable(pick(self.cna))
        ranked = torch.sort(cna.flatten(), descending=True, stable=True)
        n = min(k, int(torch.isfinite(cna).sum()))
        values, order = ranked.values[:n], ranked.indices[:n]
        layer, neuron = torch.unravel_index(order, cna.shape)
        cols = {
            "imp_original": pick(self.imp_original),
            "imp_ablated": pick(self.imp_ablated),
            "coef_original": pick(self.coef_original),
            "coef_ablated": pick(self.coef_ablated),
        }
        rows = []
        for r, (li, ni, v) in enumerate(zip(layer.tolist(), neuron.tolist(), values.tolist())):
            row = {"rank": r + 1, "layer": li, "neuron": ni, "name": str(Neuron(li, ni)), "cna": v}
            row.update({c: float(t[li, ni]) for c, t in cols.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def to_dataframe(self) -> pd.DataFrame:
        b, n_layers, d_mlp = self.cna.shape
        grid = torch.stack(
            torch.meshgrid(torch.arange(b), torch.arange(n_layers), torch.arange(d_mlp), indexing="ij"), -1
        )
        df = pd.DataFrame(grid.reshape(-1, 3).numpy(), columns=list(self.axes))
        for name in ("cna", "imp_original", "imp_ablated", "coef_original", "coef_ablated"):
            df[name] = getattr(self, name).reshape(-1).numpy()
        return df

    def layer_totals(self) -> pd.DataFrame:
        """Per layer: mean over prompts of the summed positive CNA (where the head's effect lands)."""
        pos = self.cna.clamp(min=0).sum(-1).mean(0)
        return pd.DataFrame({"layer": range(len(pos)), "positive_cna": pos.tolist()})

    def plot(self, k: int = 20, prompt: int | None = None) -> figures.Figure:
        """The top ``k`` neurons by CNA (:meth:`top`) as bars."""
        return figures.top_bars(self.top(k, prompt), "cna", label="name",
                                title=f"CNA against head {Head(*self.head)}: top {k} neurons")


def compare(
    model,
    prompts,
    head: tuple[int, int],
    *,
    target=None,
    exact_authors_lens: bool = False,
    pos: int = -1,
    all_layers: bool = False,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    memory_budget=DEFAULT_READOUT_BUDGET,
    memory_mb: float | None = None,
    progress: bool = True,
) -> CNAResult:
    """Comparative neuron analysis of the model against the model with ``head = (layer, head)`` ablated.

    Scores the layers from the head's layer on (``all_layers=True``: every layer, to see the importances
    there too; ``layers``: only these, e.g. the last few, where value neurons concentrate, to save time).
    ``codecircuits.distributed.run(cna.compare, ..., workers=N)`` shards the prompts over workers."""
    memory_budget = budget_from_megabytes(memory_budget, memory_mb, "cna.compare")
    head = (int(head[0]), int(head[1]))
    hooks = ablation.ablation_hooks(model, [head])
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    if layers is not None:
        layers = sorted({int(x) for x in layers})
        if not layers or layers[0] < 0 or layers[-1] >= n_layers:
            raise InputError(f"layers must be a non-empty subset of 0..{n_layers - 1}, got {layers}.")
    elif all_layers:
        layers = list(range(n_layers))
    else:
        layers = list(range(head[0], n_layers))
    batches = prompt_batches(model, prompts, batch_size)
    n = n_prompts(batches)
    tgt = resolve_target(model, target, n)
    shape = (n, n_layers, d_mlp)
    imp_o = torch.full(shape, float("nan"))
    imp_a = torch.full(shape, float("nan"))
    coef_o, coef_a = torch.zeros(shape), torch.zeros(shape)
    targets = torch.zeros(n, dtype=torch.long)
    p_o, p_a = torch.zeros(n), torch.zeros(n)
    for ix, toks in tqdm(batches, desc=f"CNA vs head {Head(*head)}", disable=not progress):
        check_position(pos, toks.shape[1])
        run_o = clean_run(model, toks, pos)
        run_a = clean_run(model, toks, pos, fwd_hooks=hooks)
        t = run_o["logits"].argmax(-1) if tgt is None else tgt[ix]
        kw = dict(exact_authors_lens=exact_authors_lens, memory_budget=memory_budget, layers=layers)
        # both runs in one batch: the readout rows W_out @ W_U are computed once and shared by M and M'
        both = {k: torch.cat([run_o[k], run_a[k]]) for k in ("post", "ffn_base")}
        with torch.no_grad():
            res, _ = ffn_scores_batch(
                model, both, torch.cat([t, t]), ("logprob_increase",), scale=run_o["scale"].repeat(2, 1), **kw
            )
        imp = res["logprob_increase"].cpu()
        for j, layer in enumerate(layers):
            imp_o[ix, layer] = imp[: len(ix), j]
            imp_a[ix, layer] = imp[len(ix) :, j]
        coef_o[ix] = run_o["post"].cpu()
        coef_a[ix] = run_a["post"].cpu()
        targets[ix] = t.cpu()
        p_o[ix] = torch.softmax(run_o["logits"], -1).gather(1, t[:, None])[:, 0].cpu()
        p_a[ix] = torch.softmax(run_a["logits"], -1).gather(1, t[:, None])[:, 0].cpu()
    cna = torch.nan_to_num(imp_o - imp_a, nan=0.0)
    return CNAResult(cna=cna, imp_original=imp_o, imp_ablated=imp_a, coef_original=coef_o, coef_ablated=coef_a,
                     target=targets, prob_original=p_o, prob_ablated=p_a, head=head,
                     exact_authors_lens=exact_authors_lens, pos=pos, target_tokens=target_token_strings(model, targets),
                     settings={"layers": layers})


@dataclass(frozen=True)
class MaskKeepTable:
    """METHODS §3.4 verification. One row per N: accuracy decrease (%) when each prompt's top-N CNA neurons are
    zeroed (``mask``), when every other neuron of layers ``>= head layer`` is zeroed (``keep``), when N random
    neurons of those layers are zeroed (``random_mask``), and the decrease (%) of the top-N neurons' coefficients
    in the head-ablated model (``coef_decrease``: sum of sign(m)(m - m') over sum of |m|, averaged over prompts).
    Accuracies are measured on the ``n_prompts`` prompts the model gets right."""

    table: pd.DataFrame
    head: tuple[int, int]
    n_prompts: int
    base_accuracy: float
    #: ``"{kind}_{N}"`` (kind ``mask``, ``keep``, ``random_mask``) -> whether each counted prompt is still right
    #: (``[n_prompts]`` bools), and ``"base"``: whether it was right before; the rows behind the table's means
    per_prompt: dict = field(default_factory=dict)

    def to_dataframe(self) -> pd.DataFrame:
        return self.table.copy()

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` rows of :meth:`to_dataframe` where masking the top-N CNA neurons lowers accuracy most (the
        largest signed ``mask_acc_decrease_pct`` first; the table itself is in the order of N)."""
        return self.table.sort_values("mask_acc_decrease_pct", ascending=False, kind="stable").head(k).reset_index(
            drop=True
        )

    def plot(self) -> figures.Figure:
        """The accuracy decrease (%) over N when the top-N CNA neurons are masked, when every other neuron is
        (keep), and when N random neurons are (the control)."""
        t = self.table.sort_values("N", kind="stable")
        series = {kind.replace("_", " "): t[f"{kind}_acc_decrease_pct"].tolist() for kind in _MASK_KINDS}
        return figures.lines([int(n) for n in t["N"]], series, title=f"mask / keep: head {Head(*self.head)}",
                             x_title="N (neurons)", y_title="accuracy decrease (%)")

    @property
    def ns(self) -> list[int]:
        """The N with per-prompt outcomes, smallest first."""
        return sorted({int(k.rsplit("_", 1)[1]) for k in self.per_prompt if k != "base"})

    def decrease(self, kind: str, n: int) -> Interval:
        """The accuracy decrease of ``kind`` (``mask``, ``keep``, ``random_mask``) at ``n``: one minus the accuracy on
        the counted prompts (which were right before), with its bootstrap interval over them."""
        return intervals.mean(1.0 - self.per_prompt[f"{kind}_{n}"].float())

    def mask_minus_random(self, n: int) -> Interval:
        """How many more answers masking the top ``n`` removes than masking ``n`` random neurons (paired)."""
        return intervals.mean(self.per_prompt[f"random_mask_{n}"].float() - self.per_prompt[f"mask_{n}"].float())

    def intervals(self) -> dict:
        """Per N (as a string) and kind: :meth:`decrease` as JSON, and ``mask_minus_random``; ``{}`` without
        per-prompt outcomes."""
        return {
            str(n): {
                **{kind: self.decrease(kind, n).to_json() for kind in _MASK_KINDS},
                "mask_minus_random": self.mask_minus_random(n).to_json(),
            }
            for n in self.ns
        }


_MASK_KINDS = ("mask", "keep", "random_mask")


def _mask_keep_table(hit, base, ns, *, only_correct, head, coef_decrease=None) -> MaskKeepTable:
    """The :class:`MaskKeepTable` of the outcomes ``hit[(kind, N)]`` and ``base`` (``[prompt]`` bools), counted on
    the prompts that were right (``only_correct``) or on all; ``coef_decrease(N)``: the per-prompt coefficient
    decrease of the top N (NaN without it)."""
    keep_rows = base if only_correct else torch.ones(len(base), dtype=torch.bool)
    if only_correct and not keep_rows.any():
        raise InputError("The model gets none of these prompts right, so there is no accuracy to decrease.")
    base_acc = float(base[keep_rows].float().mean())
    rows = []
    for k in ns:
        row = {"N": k}
        for kind in _MASK_KINDS:
            acc = float(hit[(kind, k)][keep_rows].float().mean())
            row[f"{kind}_acc_decrease_pct"] = 100.0 * (1.0 - acc / base_acc) if base_acc > 0 else float("nan")
        dec = float("nan") if coef_decrease is None else 100.0 * float(coef_decrease(k)[keep_rows].mean())
        row["coef_decrease_pct"] = dec
        rows.append(row)
    per = {f"{kind}_{k}": hit[(kind, k)][keep_rows] for kind in _MASK_KINDS for k in ns}
    per["base"] = base[keep_rows]
    return MaskKeepTable(
        table=pd.DataFrame(rows), head=head, n_prompts=int(keep_rows.sum()), base_accuracy=base_acc, per_prompt=per
    )


def _mask_runs(model, batches, lab, pos, ns, first, chosen, rand_all, desc, progress):
    """``(hit, base)``: whether each prompt's top-1 at ``pos`` is its label ``lab`` with nothing masked (``base``) and
    (``hit[(kind, N)]``) with the first N neurons ``chosen(ix, N)`` (flat ``[rows, N]`` indices) zeroed (``mask``),
    with every neuron of layers ``>= first`` but those zeroed (``keep``), or with ``rand_all[ix, :N]`` zeroed."""
    n, n_layers, d_mlp = n_prompts(batches), model.cfg.n_layers, model.cfg.d_mlp
    base = torch.zeros(n, dtype=torch.bool)
    hit = {(kind, k): torch.zeros(n, dtype=torch.bool) for kind in _MASK_KINDS for k in ns}
    bar = tqdm(total=len(batches) * len(ns), desc=desc, disable=not progress)
    with torch.no_grad():
        for ix, toks in batches:
            t = lab[ix]
            base[ix] = (model(toks)[:, pos].argmax(-1) == t).cpu()
            for k in ns:
                for kind in _MASK_KINDS:
                    idx = rand_all[ix, :k] if kind == "random_mask" else chosen(ix, k)
                    if kind == "keep":
                        mask = torch.zeros(len(ix), n_layers * d_mlp)
                        mask[:, : first * d_mlp] = 1.0
                        mask.scatter_(1, idx, 1.0)
                    else:
                        mask = torch.ones(len(ix), n_layers * d_mlp)
                        mask.scatter_(1, idx, 0.0)
                    mask = mask.reshape(len(ix), n_layers, d_mlp).to(model.cfg.device)
                    with model.hooks(fwd_hooks=neuron_mask_hooks(model, mask)):
                        hit[(kind, k)][ix] = (model(toks)[:, pos].argmax(-1) == t).cpu()
                bar.update(1)
    bar.close()
    return hit, base


def mask_keep(
    model,
    prompts,
    cna: CNAResult,
    *,
    ns: Sequence[int] = (10, 20, 30, 50, 99),
    target=None,
    only_correct: bool = True,
    seed: int = 0,
    batch_size: int = 32,
    labels=None,
    progress: bool = True,
) -> MaskKeepTable:
    """The mask-versus-keep table for ``cna`` (see :class:`MaskKeepTable`). ``target``: the correct token per
    prompt (default: the CNA target, i.e. the model's top-1)."""
    target = _target_of(target, labels, "cna.mask_keep")
    batches = prompt_batches(model, prompts, batch_size)
    n = n_prompts(batches)
    if n != cna.n_prompts:
        raise InputError(f"{n} prompts but the CNA result was computed on {cna.n_prompts}.")
    lab = resolve_target(model, target, n)
    lab = cna.target.to(model.cfg.device) if lab is None else lab
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    first = cna.head[0]
    ns = sorted(int(x) for x in ns)
    if ns[-1] > (n_layers - first) * d_mlp:
        raise InputError(
            f"N={ns[-1]} exceeds the {(n_layers - first) * d_mlp} neurons in layers {first}..{n_layers - 1}."
        )
    g = torch.Generator().manual_seed(seed)
    top_all = cna.top_indices(ns[-1])
    rand_all = torch.stack([torch.randperm((n_layers - first) * d_mlp, generator=g)[: ns[-1]] for _ in range(n)])
    rand_all = rand_all + first * d_mlp
    hit, base = _mask_runs(model, batches, lab, cna.pos, ns, first, lambda ix, k: top_all[ix, :k], rand_all,
                           "mask vs keep", progress)
    flat_o = cna.coef_original.reshape(n, -1)
    flat_a = cna.coef_ablated.reshape(n, -1)

    def coef_decrease(k):
        m, m2 = flat_o.gather(1, top_all[:, :k]), flat_a.gather(1, top_all[:, :k])
        return (torch.sign(m) * (m - m2)).sum(1) / m.abs().sum(1).clamp(min=1e-12)

    return _mask_keep_table(hit, base, ns, only_correct=only_correct, head=cna.head, coef_decrease=coef_decrease)


def ranked_neurons(cna: CNAResult, k: int) -> torch.Tensor:
    """The ``k`` neurons (flat indices ``layer * d_mlp + neuron``) with the highest CNA averaged over the result's
    prompts, highest first, among the layers the ablation reaches: one set chosen on these prompts, to be tested
    on others with :func:`mask_keep_heldout`."""
    mean = cna._reachable(cna.cna.mean(0, keepdim=True))[0].reshape(-1)
    if k > int(torch.isfinite(mean).sum()):
        raise InputError(f"k={k} exceeds the {int(torch.isfinite(mean).sum())} neurons CNA scored.")
    return mean.topk(k).indices


def mask_keep_heldout(
    model,
    prompts,
    target,
    neurons: torch.Tensor,
    *,
    first_layer: int,
    ns: Sequence[int] = (10, 20, 30, 50, 99),
    random_layers: Sequence[int] | None = None,
    only_correct: bool = True,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
    head: tuple[int, int] | None = None,
) -> MaskKeepTable:
    """The mask-versus-keep table for one ranked neuron set (e.g. :func:`ranked_neurons` of a CNA on other
    prompts) on ``prompts`` with correct tokens ``target``: zero the first N neurons of ``neurons`` ("mask"), or
    every neuron of layers ``>= first_layer`` but those ("keep"), or N random neurons of ``random_layers``
    (default: layers ``>= first_layer``; drawn per prompt) as the control. Accuracies are counted on the prompts
    the model gets right (``only_correct``); ``per_prompt`` keeps each counted prompt's outcome so intervals can
    be drawn. ``coef_decrease_pct`` is not measured here (NaN): it needs the head-ablated run of each prompt."""
    batches = prompt_batches(model, prompts, batch_size)
    n = n_prompts(batches)
    lab = resolve_target(model, target, n)
    if lab is None:
        raise InputError("mask_keep_heldout needs the correct token of every prompt (target).")
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    neurons = torch.as_tensor(neurons).long().reshape(-1)
    ns = sorted(int(x) for x in ns)
    if not 0 <= first_layer < n_layers:
        raise InputError(f"first_layer must lie in 0..{n_layers - 1}, got {first_layer}.")
    if ns[-1] > len(neurons):
        raise InputError(f"N={ns[-1]} exceeds the {len(neurons)} ranked neurons given.")
    if bool((neurons < first_layer * d_mlp).any()) or bool((neurons >= n_layers * d_mlp).any()):
        raise InputError(f"neurons must be flat indices layer * d_mlp + k of layers {first_layer}..{n_layers - 1}.")
    rl = list(range(first_layer, n_layers)) if random_layers is None else sorted({int(x) for x in random_layers})
    pool = torch.cat([torch.arange(layer * d_mlp, (layer + 1) * d_mlp) for layer in rl])
    if ns[-1] > len(pool):
        raise InputError(f"N={ns[-1]} exceeds the {len(pool)} neurons of the random control's layers.")
    g = torch.Generator().manual_seed(seed)
    rand_all = torch.stack([pool[torch.randperm(len(pool), generator=g)[: ns[-1]]] for _ in range(n)])
    hit, base = _mask_runs(model, batches, lab, -1, ns, first_layer, lambda ix, k: neurons[:k].expand(len(ix), k),
                           rand_all, "mask vs keep (held out)", progress)
    head = head if head is not None else (first_layer, -1)
    return _mask_keep_table(hit, base, ns, only_correct=only_correct, head=head)
