"""Zeroing FFN neurons and attention heads, and the top-k zero-ablation evaluation of FFN attributions (METHODS
Table 2: the MRR and probability of the target).

:func:`neuron_mask_hooks` and :func:`head_zero_hooks` are forward hooks on the intervention core
(:mod:`codecircuits.core.interventions`); :func:`evaluate_top_neurons` zeroes each score's top-``k`` neurons per
prompt and compares the target against the original model and a random control (:class:`TopNeuronEval`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ..core.batching import n_prompts, prompt_batches
from ..core.interventions import Zero, hook, unit_mask
from ..core.sites import check_heads, hook_name
from ..errors import InputError
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

    def top(self, k: int = 3) -> pd.DataFrame:
        """The ``k`` scores whose top neurons lower the MRR most (the best attribution methods)."""
        t = self.table[~self.table["method"].isin(["original"])]
        return t.sort_values("mrr").head(k).reset_index(drop=True)


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


def head_zero_hooks(model, heads: Sequence[tuple[int, int]]):
    """Forward hooks that zero ``attn.hook_z`` of the given ``(layer, head)`` query heads (pairs, ``"L3H7"``
    labels or :class:`~codecircuits.core.sites.Head`) at every position."""
    by_layer: dict[int, list[int]] = {}
    for h in check_heads(model, heads):
        by_layer.setdefault(h.layer, []).append(h.head)
    n_heads = int(model.cfg.n_heads)
    # [1, 1, head, 1]: the one position axis broadcasts over every position
    return [
        hook(hook_name("z", layer), Zero(), unit_mask(1, None, hs, n_heads, with_d=True, device=model.cfg.device))
        for layer, hs in by_layer.items()
    ]


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
    methods = ["original", *picks]
    per = {m: torch.zeros(n, 2) for m in methods}
    pos = attribution.pos
    with torch.no_grad():
        for ix, toks in tqdm(batches, desc=f"zero top-{k} neurons", disable=not progress):
            t = attribution.target[ix].to(model.cfg.device)
            per["original"][ix] = _rr_and_prob(model(toks)[:, pos], t).cpu()
            for m, idx in picks.items():
                mask = torch.ones(len(ix), n_l * d_mlp)
                mask.scatter_(1, idx[ix], 0.0)
                mask = mask.reshape(len(ix), n_l, d_mlp).to(model.cfg.device)
                with model.hooks(fwd_hooks=neuron_mask_hooks(model, mask, layers)):
                    per[m][ix] = _rr_and_prob(model(toks)[:, pos], t).cpu()
    orig = per["original"].mean(0)
    rows = []
    for m in methods:
        mrr, prob = per[m].mean(0).tolist()
        rows.append(
            {
                "method": m,
                "mrr": mrr,
                "prob": prob,
                "mrr_drop_pct": 100 * (1 - mrr / float(orig[0])) if orig[0] > 0 else math.nan,
                "prob_drop_pct": 100 * (1 - prob / float(orig[1])) if orig[1] > 0 else math.nan,
            }
        )
    return TopNeuronEval(table=pd.DataFrame(rows), k=k, n_prompts=n, per_prompt=per)
