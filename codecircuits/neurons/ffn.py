"""FFN neuron attribution (METHODS §3.1): the log-probability increase of every FFN neuron, the paper's method,
and the competing scores the paper compares against (:data:`FFN_SCORES`), on base ``resid_mid[l]``
(``resid_pre[l] + attn_out[l]`` for parallel attention+MLP blocks, which have no ``resid_mid``).

Because the readout is linear once the scale is frozen (:mod:`~codecircuits.neurons.readout`), the logits of
``base + m_k W_out[l][k]`` are the base logits plus ``m_k / scale`` times row ``k`` of ``W_out[l] @ W_U``. That
product is computed once per layer (in chunks of neurons, to bound memory) and shared by every prompt of a batch;
the only per-(prompt, neuron) work left is the log-sum-exp over the vocabulary. :func:`ffn_neurons_loop` is the
straightforward per-neuron loop, kept as the reference the tests and the benchmark compare against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from ..core.batching import budget_from_megabytes, n_prompts, prompt_batches
from ..errors import InputError
from .readout import DEFAULT_READOUT_BUDGET, SCORE_BUDGET, add_and_score, chunk_size, readout_logits, readout_rows
from .results import Attribution
from .runs import check_layers, check_position, clean_run, resolve_target, target_token_strings

#: Scores of FFN neurons, all "higher means more important for the target token".
FFN_SCORES = (
    "logprob_increase",  # log p(w | base + v) - log p(w | base)        (the paper's method)
    "logprob",  # log p(w | v): the neuron's sub-value alone, i.e. direct logit attribution through softmax
    "prob_increase",  # p(w | base + v) - p(w | base)
    "norm",  # ||W_out[l][k]||, the value vector's norm
    "coefficient",  # m_k, the neuron's activation
    "rank",  # 1 / (1 + rank of w) when the value vector W_out[l][k] is projected to the vocabulary
    "coef_norm",  # m_k * ||W_out[l][k]||
    "coef_rank",  # m_k * rank score (sign-aware: a negative m pushes the top tokens down)
)
#: The scores that need a pass over the vocabulary per (prompt, neuron).
_VOCAB_SCORES = {"logprob_increase", "logprob", "prob_increase", "rank", "coef_rank"}


def _param(model, name: str):
    try:
        return getattr(model, name)
    except AttributeError:
        return None


def _rank_score(rows, target) -> torch.Tensor:
    """Reciprocal rank (1 / (1 + #tokens scored above w)) of w in each row's projection: ``[B, c]``."""
    rw = rows[:, target].T  # [B, c]
    piece = chunk_size(1, 1, target.shape[0] * rows.shape[1], SCORE_BUDGET * 4)  # bool elements are a quarter the size
    above = torch.cat(
        [
            (rows[s : s + piece].unsqueeze(0) > rw[:, s : s + piece].unsqueeze(-1)).sum(-1)
            for s in range(0, len(rows), piece)
        ],
        dim=1,
    )  # [B, c]
    return 1.0 / (1.0 + above.float())


def _lens_bias(model, exact_authors_lens: bool):
    b = _param(model, "b_U")
    return None if (exact_authors_lens or b is None) else b.float()


def ffn_scores_batch(
    model,
    run: dict[str, torch.Tensor],
    target: Int[torch.Tensor, " batch"],
    scores: Sequence[str],
    *,
    exact_authors_lens: bool,
    memory_budget,
    layers: Sequence[int],
    scale: Float[torch.Tensor, "batch 1"] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """FFN neuron ``scores`` (names from :data:`FFN_SCORES`) of one batch, from a :func:`clean_run` dict (its
    ``post`` and ``ffn_base``) for the ``target`` token of each row: ``({score: [batch, len(layers), d_mlp]},
    base_logprob [batch, len(layers)])``. ``scale`` overrides the run's own final scale (CNA reads an ablated
    run through the clean run's scale); ``memory_budget`` bounds the readout rows computed at once."""
    scale = run["scale"] if scale is None else scale
    n_b = target.shape[0]
    d_mlp, d_vocab = model.cfg.d_mlp, model.cfg.d_vocab
    want = set(scores)
    res = {s: torch.zeros(n_b, len(layers), d_mlp) for s in scores}
    base_lp_all = torch.zeros(n_b, len(layers))
    bias = _lens_bias(model, exact_authors_lens)
    chunk = chunk_size(1, d_vocab, 1, memory_budget)  # readout rows per chunk; add_and_score scores them in pieces
    for li, layer in enumerate(layers):
        w_out = model.W_out[layer].float()  # [d_mlp, d_model]
        coef = run["post"][:, layer]  # [B, d_mlp]
        base_logits = readout_logits(model, run["ffn_base"][:, layer], scale, exact_authors_lens)
        base_lp = torch.log_softmax(base_logits, -1).gather(1, target[:, None])[:, 0]
        base_lp_all[:, li] = base_lp
        norms = w_out.norm(dim=-1)
        if "norm" in want:
            res["norm"][:, li] = norms
        if "coefficient" in want:
            res["coefficient"][:, li] = coef
        if "coef_norm" in want:
            res["coef_norm"][:, li] = coef * norms
        if not want & _VOCAB_SCORES:
            continue
        for s in range(0, d_mlp, chunk):
            e = min(d_mlp, s + chunk)
            rows = readout_rows(model, w_out[s:e])  # [c, V], shared by every prompt
            c = coef[:, s:e] / scale  # [B, c]
            part = add_and_score(base_logits, base_lp, c, rows, target, want, alone_bias=bias)
            for k, v in part.items():
                res[k][:, li, s:e] = v
            if want & {"rank", "coef_rank"}:
                rr = _rank_score(rows, target)
                if "rank" in want:
                    res["rank"][:, li, s:e] = rr
                if "coef_rank" in want:
                    res["coef_rank"][:, li, s:e] = coef[:, s:e] * rr
    return res, base_lp_all


def _check_scores(scores, allowed) -> tuple[str, ...]:
    if isinstance(scores, str):
        scores = (scores,)
    scores = tuple(scores)
    bad = [s for s in scores if s not in allowed]
    if bad or not scores:
        raise InputError(f"Unknown score(s) {bad}; choose from {', '.join(allowed)}.")
    return scores


def ffn_neurons(
    model,
    prompts,
    *,
    target=None,
    scores: Sequence[str] | str = ("logprob_increase",),
    exact_authors_lens: bool = False,
    pos: int = -1,
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    memory_budget=DEFAULT_READOUT_BUDGET,
    memory_mb: float | None = None,
    progress: bool = True,
) -> Attribution:
    """Scores of every FFN neuron of every layer (axes ``prompt, layer, neuron``) for the target at ``pos``.

    ``target``: None (the clean run's top-1 token), one token (id or single-token string) or one per prompt.
    ``scores``: any of :data:`FFN_SCORES` (``"all"`` for every one). Gated MLPs are scored through
    ``mlp.hook_post`` (= act(gate) * up), the coefficient that multiplies each row of ``W_out``.
    Prompts of different token lengths are grouped into equal-length batches automatically. One process;
    ``codecircuits.distributed.run(ffn_neurons, ..., workers=N)`` shards the prompts over workers.
    """
    memory_budget = budget_from_megabytes(memory_budget, memory_mb, "ffn_neurons")
    scores = FFN_SCORES if scores == "all" else _check_scores(scores, FFN_SCORES)
    layers = check_layers(model, layers)
    batches = prompt_batches(model, prompts, batch_size)
    n = n_prompts(batches)
    tgt = resolve_target(model, target, n)
    out = {s: torch.zeros(n, len(layers), model.cfg.d_mlp) for s in scores}
    coefs = torch.zeros(n, len(layers), model.cfg.d_mlp)
    base_lp = torch.zeros(n, len(layers))
    targets = torch.zeros(n, dtype=torch.long)
    for ix, toks in tqdm(batches, desc="FFN neuron scores", disable=not progress):
        check_position(pos, toks.shape[1])
        run = clean_run(model, toks, pos)
        t = run["logits"].argmax(-1) if tgt is None else tgt[ix]
        with torch.no_grad():
            res, blp = ffn_scores_batch(
                model, run, t, scores, exact_authors_lens=exact_authors_lens, memory_budget=memory_budget, layers=layers
            )
        for s in scores:
            out[s][ix] = res[s]
        coefs[ix] = run["post"][:, layers].cpu()
        base_lp[ix] = blp
        targets[ix] = t.cpu()
    return Attribution(scores=out, axes=("prompt", "layer", "neuron"), target=targets, base_logprob=base_lp,
                       coefficients=coefs, kind="ffn", exact_authors_lens=exact_authors_lens, pos=pos,
                       target_tokens=target_token_strings(model, targets), settings={"layers": layers})


def ffn_neurons_loop(
    model,
    prompts,
    *,
    neurons: dict[int, Sequence[int]] | None = None,
    target=None,
    exact_authors_lens: bool = False,
    pos: int = -1,
    progress: bool = False,
) -> dict[tuple[int, int, int], float]:
    """Reference: log-probability increase of FFN neurons one (prompt, neuron) at a time, in the authors' style
    (build ``base + m_k W_out[k]``, read it through the frozen-scale lens, take ``log_softmax[w]``).

    ``neurons`` maps layer -> neuron indices (default: all). Returns ``{(prompt, layer, neuron): score}``.
    Slow by design: the tests and the benchmark check :func:`ffn_neurons` against it.
    """
    batches = prompt_batches(model, prompts, 1)
    tgt = resolve_target(model, target, n_prompts(batches))
    if neurons is None:
        neurons = {layer: range(model.cfg.d_mlp) for layer in range(model.cfg.n_layers)}
    out = {}
    total = sum(len(v) for v in neurons.values()) * len(batches)
    bar = tqdm(total=total, desc="FFN neurons (loop)", disable=not progress)
    with torch.no_grad():
        for ix, toks in batches:
            run = clean_run(model, toks, pos)
            w = int(run["logits"].argmax(-1)[0]) if tgt is None else int(tgt[ix[0]])
            scale = run["scale"][0]
            for layer, ks in neurons.items():
                base = run["ffn_base"][0, layer]
                base_lp = torch.log_softmax(readout_logits(model, base, scale, exact_authors_lens), -1)[w]
                for k in ks:
                    x = base + run["post"][0, layer, k] * model.W_out[layer, k].float()
                    lp = torch.log_softmax(readout_logits(model, x, scale, exact_authors_lens), -1)[w]
                    out[(ix[0], layer, int(k))] = float(lp - base_lp)
                    bar.update(1)
    bar.close()
    return out
