"""Knockouts: zeroing FFN neurons and attention neurons, and the top-k zero-ablation evaluation of their
attributions (METHODS Table 2: the MRR and probability of the target). Heads are zeroed by
:mod:`codecircuits.ablation`.

:func:`neuron_mask_hooks` and :func:`attention_neuron_mask_hooks` are forward hooks on the intervention core
(:mod:`codecircuits.core.interventions`); :func:`evaluate_top_neurons` zeroes each score's top-``k`` neurons per
prompt and compares the target against the original model and a random control (:class:`TopNeuronEval`, whose
:meth:`~TopNeuronEval.drop` gives each method's relative drop with its bootstrap interval over prompts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from .. import figures, intervals
from ..core.batching import n_prompts, prompt_batches
from ..core.interventions import Zero, hook
from ..core.sites import hook_name
from ..errors import InputError
from ..intervals import Interval
from .results import Attribution


@dataclass(frozen=True)
class TopNeuronEval:
    """Zero the top-``k`` FFN neurons chosen by each score, per prompt, and measure the target (METHODS Table 2).

    ``table`` has one row per method (``original``, each score, ``random``) with the mean reciprocal rank and the
    mean probability of the target at the scored position, and their relative drops from the original.
    """

    table: pd.DataFrame
    k: int
    n_prompts: int
    per_prompt: dict[str, torch.Tensor]  # method -> [prompt, 2] (reciprocal rank, probability)

    def to_dataframe(self) -> pd.DataFrame:
        return self.table.copy()

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` rows of :meth:`to_dataframe` whose neurons lower the MRR most (the best attribution methods):
        the largest signed ``mrr_drop_pct`` first (the lowest MRR, as before); the ``original`` row, the model
        untouched, is left out."""
        t = self.table[~self.table["method"].isin(["original"])]
        return t.sort_values("mrr_drop_pct", ascending=False, kind="stable").head(k).reset_index(drop=True)

    def plot(self, metric: str = "mrr") -> figures.Figure:
        """The relative drop (%) of the target's ``metric`` (``"mrr"`` or ``"prob"``) when each method's top neurons
        are zeroed, one bar per method (the random control included), in table order."""
        if metric not in ("mrr", "prob"):
            raise InputError(f"plot(metric={metric!r}): choose 'mrr' or 'prob'.")
        t = self.table[~self.table["method"].isin(["original"])]
        return figures.bars(t["method"], t[f"{metric}_drop_pct"], title=f"zeroing the top {self.k} neurons per prompt",
                            value_title=f"{metric} drop (%)")

    def drop(self, method: str, metric: str = "prob") -> Interval:
        """The relative drop of the target's mean ``metric`` (``"prob"`` or ``"mrr"``) when ``method``'s neurons are
        zeroed, ``1 - mean(method) / mean(original)``, with its paired bootstrap interval over prompts."""
        o, x = self._column("original", metric), self._column(method, metric)
        return intervals.paired(lambda o, x: 1.0 - x.mean() / o.mean(), o, x)

    def extra_drop(self, method: str, than: str, metric: str = "prob") -> Interval:
        """How much more ``method`` lowers the mean ``metric`` than ``than`` on the same prompts, relative to the
        original: ``(mean(than) - mean(method)) / mean(original)``, paired."""
        cols = (self._column(m, metric) for m in ("original", method, than))
        return intervals.paired(lambda o, x, y: (y.mean() - x.mean()) / o.mean(), *cols)

    def intervals(self) -> dict:
        """Per method: the mean probability and MRR and their relative drops (:meth:`drop`), each as interval JSON."""
        return {
            m: {
                "prob": intervals.mean(self._column(m, "prob")).to_json(),
                "mrr": intervals.mean(self._column(m, "mrr")).to_json(),
                "prob_drop": self.drop(m, "prob").to_json(),
                "mrr_drop": self.drop(m, "mrr").to_json(),
            }
            for m in self.per_prompt
        }

    def _column(self, method: str, metric: str) -> torch.Tensor:
        if metric not in ("mrr", "prob"):
            raise InputError(f"metric must be 'mrr' or 'prob', got {metric!r}.")
        return self.per_prompt[method][:, 0 if metric == "mrr" else 1]


def neuron_mask_hooks(model, mask: Float[torch.Tensor, "batch layer d_mlp"], layers: Sequence[int] | None = None):
    """Forward hooks that zero ``mlp.hook_post`` wherever ``mask [batch, layer, d_mlp]`` is 0 (1 keeps the
    neuron; a bool mask: False zeros it), at every position; ``layers`` names the model layers of ``mask``'s
    layer axis (default: all)."""
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    if mask.dim() != 3 or mask.shape[1] != len(layers):
        raise InputError(
            f"mask must be [batch, layer, d_mlp] with one layer entry per layer in {layers}; got shape "
            f"{tuple(mask.shape)}."
        )
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError("mask holds values other than 0 and 1: use 1 to keep a neuron and 0 to zero it.")
    zero = (mask == 0).to(model.cfg.device)
    return [hook(hook_name("post", layer), Zero(), zero[:, i][:, None, :]) for i, layer in enumerate(layers)]


def attention_neuron_mask_hooks(model, mask: Float[torch.Tensor, "batch layer head d_head"], layers: Sequence[int]):
    """Forward hooks that zero ``attn.hook_z[..., h, j]`` (every position) wherever ``mask [batch, layer, head,
    d_head]`` is 0: attention neuron (h, j) summed over its source positions, i.e. the row ``W_O[l, h, j]``
    removed (METHODS §3.1). ``layers`` names the model layers of ``mask``'s layer axis."""
    layers = list(layers)
    shape = (len(layers), int(model.cfg.n_heads), int(model.cfg.d_head))
    if mask.dim() != 4 or tuple(mask.shape[1:]) != shape:
        raise InputError(f"mask must be [batch, {shape[0]}, {shape[1]}, {shape[2]}]; got {tuple(mask.shape)}.")
    zero = (mask == 0).to(model.cfg.device)
    return [hook(hook_name("z", layer), Zero(), zero[:, i][:, None]) for i, layer in enumerate(layers)]


def _zero_and_score(model, batches, target, pos, picks: dict, hooks_of, progress: bool, desc: str):
    """``{"original": [n, 2], method: [n, 2]}``: reciprocal rank and probability of ``target`` with nothing zeroed
    and with each method's components ``picks[method] [n, k]`` zeroed through ``hooks_of(idx [b, k])``."""
    n = n_prompts(batches)
    per = {m: torch.zeros(n, 2) for m in ["original", *picks]}
    with torch.no_grad():
        for ix, toks in tqdm(batches, desc=desc, disable=not progress):
            t = target[ix].to(model.cfg.device)
            per["original"][ix] = _rr_and_prob(model(toks)[:, pos], t).cpu()
            for m, idx in picks.items():
                with model.hooks(fwd_hooks=hooks_of(idx[ix])):
                    per[m][ix] = _rr_and_prob(model(toks)[:, pos], t).cpu()
    return per


def _table(per: dict) -> pd.DataFrame:
    orig = per["original"].mean(0)
    rows = []
    for m, v in per.items():
        mrr, prob = v.mean(0).tolist()
        rows.append(
            {
                "method": m,
                "mrr": mrr,
                "prob": prob,
                "mrr_drop_pct": 100 * (1 - mrr / float(orig[0])) if orig[0] > 0 else math.nan,
                "prob_drop_pct": 100 * (1 - prob / float(orig[1])) if orig[1] > 0 else math.nan,
            }
        )
    return pd.DataFrame(rows)


def evaluate_top_attention_neurons(
    model,
    prompts,
    attribution: Attribution,
    *,
    k: int = 10,
    random_control: bool = True,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> TopNeuronEval:
    """Zero each prompt's top-``k`` attention neurons (head h, dimension j of a layer; the score of (h, j) is its
    log-probability increase summed over source positions, since zeroing ``hook_z[..., h, j]`` removes every
    source) and measure the MRR and probability of the target, beside ``k`` random attention neurons of the same
    layers (the control). ``attribution``: from :func:`~codecircuits.neurons.attention_neurons`."""
    if attribution.kind != "attention_neuron":
        raise InputError("evaluate_top_attention_neurons takes an attribution from neurons.attention_neurons().")
    layers = attribution.settings.get("layers", list(range(model.cfg.n_layers)))
    batches = prompt_batches(model, prompts, batch_size)
    n = n_prompts(batches)
    if n != attribution.n_prompts:
        raise InputError(f"{n} prompts but the attribution was computed on {attribution.n_prompts}.")
    n_l, n_h, d_h = len(layers), int(model.cfg.n_heads), int(model.cfg.d_head)
    flat = attribution["logprob_increase"].sum(-1).reshape(n, -1)
    if k > flat.shape[1]:
        raise InputError(f"k={k} but there are only {flat.shape[1]} attention neurons in the scored layers.")
    picks = {"logprob_increase": flat.topk(k, dim=1).indices}
    if random_control:
        g = torch.Generator().manual_seed(seed)
        picks["random"] = torch.stack([torch.randperm(flat.shape[1], generator=g)[:k] for _ in range(n)])

    def hooks_of(idx):
        mask = torch.ones(idx.shape[0], n_l * n_h * d_h)
        mask.scatter_(1, idx, 0.0)
        return attention_neuron_mask_hooks(model, mask.reshape(-1, n_l, n_h, d_h), layers)

    per = _zero_and_score(model, batches, attribution.target, attribution.pos, picks, hooks_of, progress,
                          f"zero top-{k} attention neurons")
    return TopNeuronEval(table=_table(per), k=k, n_prompts=n, per_prompt=per)


def _rr_and_prob(logits_pos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B, 2]: reciprocal rank (1 for top-1) and probability of the target."""
    lw = logits_pos.gather(1, target[:, None])
    rank = (logits_pos > lw).sum(-1).float()
    prob = torch.softmax(logits_pos.float(), -1).gather(1, target[:, None])[:, 0]
    return torch.stack([1.0 / (1.0 + rank), prob], 1)


def evaluate_top_neurons(
    model,
    prompts,
    attribution: Attribution,
    *,
    k: int = 10,
    scores: Sequence[str] | None = None,
    random_control: bool = True,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> TopNeuronEval:
    """METHODS Table 2: per prompt, zero the top-``k`` FFN neurons by each score (at every position) and report the
    MRR and probability of the attribution's target token at its position; plus the original model and a random
    control (``k`` neurons drawn uniformly per prompt). Lower is better for an attribution method."""
    if attribution.kind != "ffn":
        raise InputError("evaluate_top_neurons takes an FFN attribution from neurons.ffn_neurons().")
    scores = list(scores or attribution.scores)
    layers = attribution.settings.get("layers", list(range(model.cfg.n_layers)))
    batches = prompt_batches(model, prompts, batch_size)
    n = n_prompts(batches)
    if n != attribution.n_prompts:
        raise InputError(f"{n} prompts but the attribution was computed on {attribution.n_prompts}.")
    d_mlp, n_l = model.cfg.d_mlp, len(layers)
    picks = {s: attribution.top_indices(k, s) for s in scores}
    if random_control:
        g = torch.Generator().manual_seed(seed)
        picks["random"] = torch.stack([torch.randperm(n_l * d_mlp, generator=g)[:k] for _ in range(n)])

    def hooks_of(idx):
        mask = torch.ones(idx.shape[0], n_l * d_mlp)
        mask.scatter_(1, idx, 0.0)
        return neuron_mask_hooks(model, mask.reshape(-1, n_l, d_mlp).to(model.cfg.device), layers)

    per = _zero_and_score(model, batches, attribution.target, attribution.pos, picks, hooks_of, progress,
                          f"zero top-{k} neurons")
    return TopNeuronEval(table=_table(per), k=k, n_prompts=n, per_prompt=per)
