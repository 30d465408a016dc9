"""Head-level attribution and attention neurons (METHODS §3.1), on base ``resid_pre[l]``: :func:`heads` scores each
head's output ``z[l][pos, h] @ W_O[l, h]``, :func:`attention_neurons` each of its terms
``pattern[l][h, pos, p] * v[l][p, kv(h), j] * W_O[l][h, j]`` (one per head, dimension and source position).
Grouped-/multi-query models are scored per query head; ``kv_groups`` in the result says which share a key/value
head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..core.batching import budget_from_megabytes, n_prompts, prompt_batches
from ..errors import InputError
from ..models.summary import kv_groups, kv_head_of
from .readout import DEFAULT_READOUT_BUDGET, add_and_score, chunk_size, readout_logits, readout_rows
from .results import Attribution
from .runs import check_layers, check_position, clean_run, resolve_target, target_token_strings


def heads(
    model,
    prompts,
    *,
    target=None,
    exact_authors_lens: bool = False,
    pos: int = -1,
    batch_size: int = 16,
    progress: bool = True,
) -> Attribution:
    """Log-probability (and probability) increase of every attention head (axes ``prompt, layer, head``):
    ``v = z[l][pos, h] @ W_O[l, h]`` on base ``resid_pre[l]``. Grouped-query heads are scored per query head;
    ``kv_groups`` in the result says which share a key/value head."""
    batches = prompt_batches(model, prompts, batch_size)
    n = n_prompts(batches)
    tgt = resolve_target(model, target, n)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    lpi = torch.zeros(n, n_layers, n_heads)
    pi = torch.zeros(n, n_layers, n_heads)
    base_lp = torch.zeros(n, n_layers)
    targets = torch.zeros(n, dtype=torch.long)
    for ix, toks in tqdm(batches, desc="head scores", disable=not progress):
        check_position(pos, toks.shape[1])
        run = clean_run(model, toks, pos, want=("attn",))
        t = run["logits"].argmax(-1) if tgt is None else tgt[ix]
        with torch.no_grad():
            for layer in range(n_layers):
                base_logits = readout_logits(model, run["resid_pre"][:, layer], run["scale"], exact_authors_lens)
                blp = torch.log_softmax(base_logits, -1).gather(1, t[:, None])[:, 0]
                result = torch.einsum("bhd,hdm->bhm", run["z"][:, layer], model.W_O[layer].float())
                logits = base_logits[:, None] + readout_rows(model, result) / run["scale"][:, None]
                lp = torch.log_softmax(logits, -1).gather(2, t[:, None, None].expand(-1, n_heads, 1))[..., 0]
                lpi[ix, layer] = lp - blp[:, None]
                pi[ix, layer] = lp.exp() - blp.exp()[:, None]
                base_lp[ix, layer] = blp
        targets[ix] = t.cpu()
    return Attribution(scores={"logprob_increase": lpi, "prob_increase": pi}, axes=("prompt", "layer", "head"),
                       target=targets, base_logprob=base_lp, kind="head", exact_authors_lens=exact_authors_lens,
                       pos=pos, target_tokens=target_token_strings(model, targets), kv_groups=kv_groups(model))


def attention_neurons(
    model,
    prompts,
    *,
    target=None,
    layers: Sequence[int] | None = None,
    exact_authors_lens: bool = False,
    pos: int = -1,
    batch_size: int = 8,
    memory_budget=DEFAULT_READOUT_BUDGET,
    memory_mb: float | None = None,
    progress: bool = True,
) -> Attribution:
    """Log-probability increase of every attention neuron (axes ``prompt, layer, head, dim, source``): the vector
    ``pattern[l][h, pos, p] * v[l][p, kv(h), j] * W_O[l][h, j]`` on base ``resid_pre[l]``, source positions
    kept separate. ``coefficients`` holds ``pattern * v``; summed over ``dim`` and ``source`` the vectors give the
    head's output. Grouped-/multi-query models read ``v`` of the key/value head each query head shares."""
    memory_budget = budget_from_megabytes(memory_budget, memory_mb, "attention_neurons")
    layers = check_layers(model, layers)
    batches = prompt_batches(model, prompts, batch_size)
    n = n_prompts(batches)
    if len({t.shape[1] for _, t in batches}) > 1:
        raise InputError("attention_neurons scores source positions, so every prompt must have the same token length.")
    tgt = resolve_target(model, target, n)
    n_heads, d_head = model.cfg.n_heads, model.cfg.d_head
    seq = batches[0][1].shape[1]
    lpi = torch.zeros(n, len(layers), n_heads, d_head, seq)
    coefs = torch.zeros_like(lpi)
    base_lp = torch.zeros(n, len(layers))
    targets = torch.zeros(n, dtype=torch.long)
    owner = torch.tensor(kv_head_of(model))
    for ix, toks in tqdm(batches, desc="attention neuron scores", disable=not progress):
        check_position(pos, toks.shape[1])
        run = clean_run(model, toks, pos, want=("attn",))
        t = run["logits"].argmax(-1) if tgt is None else tgt[ix]
        with torch.no_grad():
            for li, layer in enumerate(layers):
                v = run["v"][:, layer][:, :, owner.to(run["v"].device)]  # [B, src, H, d_head]
                coef = torch.einsum("bhp,bphd->bhdp", run["pattern"][:, layer], v)  # [B, H, d_head, src]
                coef = coef.reshape(len(ix), n_heads * d_head, seq)
                base_logits = readout_logits(model, run["resid_pre"][:, layer], run["scale"], exact_authors_lens)
                blp = torch.log_softmax(base_logits, -1).gather(1, t[:, None])[:, 0]
                w_o = model.W_O[layer].float().reshape(n_heads * d_head, -1)
                chunk = chunk_size(1, model.cfg.d_vocab, 1, memory_budget)  # rows; add_and_score scores in pieces
                vals = torch.zeros_like(coef)
                for s in range(0, n_heads * d_head, chunk):
                    e = min(n_heads * d_head, s + chunk)
                    rows = readout_rows(model, w_o[s:e])
                    c = coef[:, s:e] / run["scale"][:, :, None]
                    vals[:, s:e] = add_and_score(base_logits, blp, c, rows, t, {"logprob_increase"})["logprob_increase"]
                lpi[ix, li] = vals.reshape(len(ix), n_heads, d_head, seq).cpu()
                coefs[ix, li] = coef.reshape(len(ix), n_heads, d_head, seq).cpu()
                base_lp[ix, li] = blp
        targets[ix] = t.cpu()
    return Attribution(scores={"logprob_increase": lpi}, axes=("prompt", "layer", "head", "dim", "source"),
                       target=targets, base_logprob=base_lp, coefficients=coefs, kind="attention_neuron",
                       exact_authors_lens=exact_authors_lens, pos=pos,
                       target_tokens=target_token_strings(model, targets), kv_groups=kv_groups(model),
                       settings={"layers": layers})
