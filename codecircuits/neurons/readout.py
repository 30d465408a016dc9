"""The frozen-scale readout every score shares. A vector ``v`` is read through the unembedding with the final
norm's scale frozen from the clean run (:mod:`codecircuits.lens`), at one position, for a target token ``w``::

    Imp(v) = log p(w | base + v) - log p(w | base)

Because the readout is linear once the scale is frozen, the logits of ``base + c * u`` are the base logits plus
``c / scale`` times the row ``u @ W_U`` (:func:`readout_rows`). Those rows are computed once per layer (in chunks
of components, :func:`chunk_size`, to bound memory) and shared by every prompt of a batch; the only
per-(prompt, component) work left is the log-sum-exp over the vocabulary (:func:`add_and_score`).

``exact_authors_lens=True`` reproduces the authors' readout exactly: no unembedding bias (their notebooks
multiply by ``lm_head`` only; with folded layer norms in TransformerLens that means dropping ``b_U``).
"""

from __future__ import annotations

import torch

from .. import lens
from ..core.batching import parse_budget

#: the default ``memory_budget`` of the scoring functions: float32 readout rows (``[components, d_vocab]``)
#: computed at once; each chunk of rows streams the whole unembedding once, so larger chunks read it fewer times
DEFAULT_READOUT_BUDGET = "256MB"
#: float32 ``[prompt, component, d_vocab]`` logits scored at once inside a chunk of rows (bytes). Kept small so the
#: allocator reuses its buffers: glibc maps every allocation above 32 MiB fresh from the kernel, and zeroing those
#: pages cost as much system time as the scoring itself (Table 2 of the CNA study: 107 s system beside 100 s user
#: with 256 MiB pieces, 0.1 s with 16 MiB)
SCORE_BUDGET = 16 * 1024**2


def readout_rows(model, vectors: torch.Tensor) -> torch.Tensor:
    """The linear part of the frozen-scale readout of ``vectors [n, d_model]``: ``[n, d_vocab]`` (without the
    ``1/scale`` factor and without ``b_U``). Logits of ``base + c * vectors[i]`` = base logits + ``c / scale`` * row i."""
    if lens.is_layernorm(model):
        vectors = vectors - vectors.mean(-1, keepdim=True)
    return vectors.float() @ model.W_U.float()


def chunk_size(n_rows: int, d_vocab: int, per_row: int, memory_budget) -> int:
    """How many neurons (or other components) to score at once so that ``n_rows`` prompts x ``per_row`` logit
    vectors of ``d_vocab`` float32 values per component fit in ``memory_budget`` (bytes or ``"256MB"``; at least
    one)."""
    budget = parse_budget(memory_budget) / 4  # float32 elements
    return max(1, int(budget // max(1, n_rows * per_row * d_vocab)))


def add_and_score(base_logits, base_lp, coef, rows, target, want: set[str], alone_bias=None, score_budget=SCORE_BUDGET):
    """Scores for adding ``coef[b, c, *rest] * rows[c]`` to ``base_logits[b]``. Returns dict of ``[b, c, *rest]``.

    ``base_logits [B, V]`` include the 1/scale factor; ``coef`` already carries 1/scale. The components are scored
    in pieces of at most ``score_budget`` bytes of logits (:data:`SCORE_BUDGET`); the numbers do not depend on it.
    """
    per_component = coef.shape[0] * max(1, coef[0, 0].numel()) * rows.shape[1]
    piece = chunk_size(1, 1, per_component, score_budget)
    if piece >= coef.shape[1]:
        return _add_and_score(base_logits, base_lp, coef, rows, target, want, alone_bias)
    parts = [
        _add_and_score(base_logits, base_lp, coef[:, s : s + piece], rows[s : s + piece], target, want, alone_bias)
        for s in range(0, coef.shape[1], piece)
    ]
    return {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}


def _add_and_score(base_logits, base_lp, coef, rows, target, want: set[str], alone_bias=None):
    extra = coef.dim() - 2
    r = rows.reshape(rows.shape[0], *([1] * extra), rows.shape[1])  # [c, 1.., V]
    rw = rows[:, target].T.reshape(coef.shape[0], coef.shape[1], *([1] * extra))  # [B, c, 1..]
    out = {}
    if want & {"logprob_increase", "prob_increase"}:
        b = base_logits.reshape(base_logits.shape[0], 1, *([1] * extra), base_logits.shape[1])
        z = torch.addcmul(b, coef.unsqueeze(-1), r.unsqueeze(0))  # [B, c, .., V]
        lse = torch.logsumexp(z, dim=-1)
        del z
        bw = base_logits.gather(1, target[:, None]).reshape(-1, 1, *([1] * extra))
        lp = bw + coef * rw - lse
        blp = base_lp.reshape(-1, 1, *([1] * extra))
        if "logprob_increase" in want:
            out["logprob_increase"] = lp - blp
        if "prob_increase" in want:
            out["prob_increase"] = lp.exp() - blp.exp()
    if "logprob" in want:
        z = coef.unsqueeze(-1) * r.unsqueeze(0)
        if alone_bias is not None:
            z = z + alone_bias
        lse = torch.logsumexp(z, dim=-1)
        del z
        aw = 0.0 if alone_bias is None else alone_bias[target].reshape(-1, 1, *([1] * extra))
        out["logprob"] = coef * rw + aw - lse
    return out


def readout_logits(model, x, scale, exact_authors_lens: bool):
    """Float32 logits of ``x [..., d_model]`` through the lens with the final norm's ``scale`` frozen; with
    ``b_U`` unless ``exact_authors_lens``."""
    return lens.to_logits(model, x, scale, include_bias=not exact_authors_lens).float()
