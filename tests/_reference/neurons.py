"""Neuron-level attribution (Yu & Ananiadou, EMNLP 2024): which FFN neurons, heads and attention neurons raise
the log-probability of the predicted token, the competing scores the paper compares against, the top-k
zero-ablation evaluation (MRR and probability), and query neurons.

Every score reads a vector ``v`` through the unembedding with the final norm's scale frozen from the clean run
(:mod:`codecircuits.lens`), at one position (the last by default), for a target token ``w`` (the clean run's
top-1 unless given)::

    Imp(v) = log p(w | base + v) - log p(w | base)

with ``base = resid_mid[l]`` for FFN neurons (``resid_pre[l] + attn_out[l]`` for parallel attention+MLP blocks,
which have no ``resid_mid``) and ``base = resid_pre[l]`` for heads and attention neurons (METHODS §3.1).

Because the readout is linear once the scale is frozen, the logits of ``base + m_k W_out[l][k]`` are the base
logits plus ``m_k / scale`` times row ``k`` of ``W_out[l] @ W_U``. That product is computed once per layer (in
chunks of neurons, to bound memory) and shared by every prompt of a batch; the only per-(prompt, neuron) work
left is the log-sum-exp over the vocabulary. :func:`ffn_neurons_loop` is the straightforward per-neuron loop,
kept as the reference the tests and the benchmark compare against.

``exact_authors_lens=True`` reproduces the authors' readout exactly: no unembedding bias (their notebooks
multiply by ``lm_head`` only; with folded layer norms in TransformerLens that means dropping ``b_U``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from tqdm.auto import tqdm

from codecircuits import lens
from codecircuits.errors import InputError
from codecircuits.core.inputs import single_token_id
from codecircuits.models.summary import kv_groups, kv_head_of

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

_DEFAULT_MEMORY_MB = 256


# ----------------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class Attribution:
    """Scores of model components for one target token per prompt.

    ``scores[name]`` is a tensor with axes ``axes`` (first axis ``prompt``); every score is "higher = more
    important". ``coefficients`` holds the activation behind each component where that makes sense (FFN
    neuron activations ``m``, attention-neuron coefficients ``pattern * v``), ``base_logprob[prompt, layer]`` the
    log-probability of the target from the base vector alone, ``target`` the token ids scored.
    """

    scores: dict[str, torch.Tensor]
    axes: tuple[str, ...]
    target: torch.Tensor
    base_logprob: torch.Tensor
    coefficients: torch.Tensor | None = None
    kind: str = "ffn"
    exact_authors_lens: bool = False
    pos: int = -1
    target_tokens: tuple[str, ...] = ()
    kv_groups: tuple[tuple[int, ...], ...] | None = None
    settings: dict = field(default_factory=dict)

    def __getitem__(self, score: str) -> torch.Tensor:
        if score not in self.scores:
            raise InputError(f"No score {score!r} in this result; it has {', '.join(self.scores)}.")
        return self.scores[score]

    @property
    def n_prompts(self) -> int:
        return int(self.target.shape[0])

    def mean(self, score: str = "logprob_increase") -> torch.Tensor:
        """The score averaged over prompts (axes ``self.axes[1:]``)."""
        return self[score].mean(0)

    def top_indices(self, k: int = 10, score: str = "logprob_increase") -> torch.Tensor:
        """Per prompt, the flat indices (over ``axes[1:]``) of the ``k`` highest-scoring components: ``[prompt, k]``."""
        flat = self[score].reshape(self.n_prompts, -1)
        if k > flat.shape[1]:
            raise InputError(f"k={k} but there are only {flat.shape[1]} components to choose from.")
        return flat.topk(k, dim=1).indices

    def top(self, k: int = 10, score: str = "logprob_increase", prompt: int | None = None) -> pd.DataFrame:
        """The ``k`` highest components for one prompt, or by their mean over prompts (``prompt=None``)."""
        values = self[score].mean(0) if prompt is None else self[score][prompt]
        k = min(k, values.numel())
        top = values.flatten().topk(k)
        idx = torch.stack(torch.unravel_index(top.indices, values.shape), dim=1)
        rows = []
        for rank, (vals, flat) in enumerate(zip(idx.tolist(), top.indices.tolist())):
            vals = self._model_layers(vals)
            row = {"rank": rank + 1, **dict(zip(self.axes[1:], vals))}
            row["name"] = "_".join(str(v) for v in vals)
            for name, t in self.scores.items():
                t = t.mean(0) if prompt is None else t[prompt]
                row[name] = float(t.flatten()[flat])
            if self.coefficients is not None:
                c = self.coefficients.mean(0) if prompt is None else self.coefficients[prompt]
                row["coefficient_m"] = float(c.flatten()[flat])
            rows.append(row)
        return pd.DataFrame(rows)

    def _model_layers(self, vals: list[int]) -> list[int]:
        """Map the ``layer`` index of ``axes[1:]`` to the model's layer number when only some layers were scored."""
        layers = self.settings.get("layers")
        if layers is not None and "layer" in self.axes[1:]:
            i = self.axes[1:].index("layer")
            vals = list(vals)
            vals[i] = int(layers[vals[i]])
        return vals

    def to_dataframe(self, scores: Sequence[str] | None = None) -> pd.DataFrame:
        """Long format: one row per (prompt, component) with one column per score (``layer`` = model layer)."""
        names = list(scores or self.scores)
        shape = self[names[0]].shape
        grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, len(shape))
        df = pd.DataFrame(grid.numpy(), columns=list(self.axes))
        if self.settings.get("layers") is not None and "layer" in df:
            df["layer"] = [int(self.settings["layers"][i]) for i in df["layer"]]
        for n in names:
            df[n] = self[n].reshape(-1).float().numpy()
        if self.coefficients is not None and self.coefficients.shape == shape:
            df["coefficient_m"] = self.coefficients.reshape(-1).float().numpy()
        return df


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


@dataclass(frozen=True)
class QueryNeurons:
    """Query scores (METHODS §3.2): how much each upstream vector at the scored position activates the top value
    neurons, ``score(u) = sum over value neurons (l, k) of (u . key_lk) / (x_l . key_lk) * Imp(l, k)``.

    ``ffn[prompt, layer, neuron]`` for FFN neurons' sub-values, ``attn[prompt, layer]`` for attention layer
    outputs, ``embedding[prompt]`` for the token embedding (plus positional embedding where the model has one).
    """

    ffn: torch.Tensor
    attn: torch.Tensor
    embedding: torch.Tensor
    value_neurons: torch.Tensor  # [prompt, n_value, 2] (layer, neuron) of the value neurons used
    axes: tuple[str, ...] = ("prompt", "layer", "neuron")

    def top(self, k: int = 10, prompt: int | None = None) -> pd.DataFrame:
        values = self.ffn.mean(0) if prompt is None else self.ffn[prompt]
        top = values.flatten().topk(min(k, values.numel()))
        layer, neuron = torch.unravel_index(top.indices, values.shape)
        return pd.DataFrame(
            {
                "rank": range(1, len(layer) + 1),
                "layer": layer.tolist(),
                "neuron": neuron.tolist(),
                "name": [f"{a}_{b}" for a, b in zip(layer.tolist(), neuron.tolist())],
                "query_score": top.values.tolist(),
            }
        )

    def to_dataframe(self) -> pd.DataFrame:
        b, n_layers, d_mlp = self.ffn.shape
        grid = torch.stack(
            torch.meshgrid(torch.arange(b), torch.arange(n_layers), torch.arange(d_mlp), indexing="ij"), -1
        )
        df = pd.DataFrame(grid.reshape(-1, 3).numpy(), columns=list(self.axes))
        df["query_score"] = self.ffn.reshape(-1).numpy()
        return df

    def layer_totals(self) -> pd.DataFrame:
        """Per layer, the mean over prompts of the summed FFN query scores and the attention layer's score."""
        return pd.DataFrame(
            {
                "layer": range(self.ffn.shape[1]),
                "ffn": self.ffn.sum(-1).mean(0).tolist(),
                "attn": self.attn.mean(0).tolist(),
            }
        )


# ----------------------------------------------------------------------------------------------------------
# inputs and the clean run


def _prompt_batches(model, prompts, batch_size: int) -> list[tuple[list[int], torch.Tensor]]:
    """Tokenise prompts (strings or a token tensor) and group them into equal-length batches with their indices."""
    if isinstance(prompts, torch.Tensor):
        toks = prompts if prompts.dim() == 2 else prompts.unsqueeze(0)
        rows = list(toks.to(model.cfg.device))
    else:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise InputError("No prompts given: pass at least one prompt.")
        rows = [model.to_tokens(p)[0] for p in prompts]
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_len.setdefault(len(r), []).append(i)
    out = []
    for _, ix in sorted(by_len.items()):
        for s in range(0, len(ix), batch_size):
            sel = ix[s : s + batch_size]
            out.append((sel, torch.stack([rows[i] for i in sel])))
    return out


def _n_prompts(batches) -> int:
    return sum(len(ix) for ix, _ in batches)


def _resolve_target(model, target, n: int) -> torch.Tensor | None:
    """None (use top-1), or a LongTensor [n] from ids, single-token strings or a tensor."""
    if target is None:
        return None
    if isinstance(target, (int, str)):
        target = [target] * n
    if isinstance(target, torch.Tensor):
        t = target.reshape(-1).long()
    else:
        t = torch.tensor(
            [single_token_id(model, x) if isinstance(x, str) else int(x) for x in target], dtype=torch.long
        )
    if t.numel() != n:
        raise InputError(f"{t.numel()} targets for {n} prompts: pass one target token per prompt.")
    if (t < 0).any() or (t >= model.cfg.d_vocab).any():
        raise InputError(f"Target ids must lie in [0, {model.cfg.d_vocab}); got {t.min().item()}..{t.max().item()}.")
    return t.to(model.cfg.device)


def _check_pos(pos: int, seq_len: int) -> None:
    if not -seq_len <= pos < seq_len:
        raise InputError(f"pos={pos} is outside prompts of {seq_len} tokens.")


def _has_resid_mid(model) -> bool:
    return "blocks.0.hook_resid_mid" in model.hook_dict and not getattr(model.cfg, "parallel_attn_mlp", False)


def _param(model, name: str):
    try:
        return getattr(model, name)
    except AttributeError:
        return None


def _clean_run(model, tokens, pos: int, fwd_hooks=(), want=("ffn",)):
    """One run (with optional hooks) keeping, at ``pos``: final scale, logits, FFN bases and coefficients, and the
    attention quantities if wanted. Returns a dict of tensors on the model's device."""
    n_layers = model.cfg.n_layers
    names = {"ln_final.hook_scale"}
    for layer in range(n_layers):
        names.add(f"blocks.{layer}.hook_resid_pre")
        if "ffn" in want:
            names.add(f"blocks.{layer}.mlp.hook_post")
            names.add(f"blocks.{layer}.hook_resid_mid" if _has_resid_mid(model) else f"blocks.{layer}.hook_attn_out")
        if "attn" in want:
            names |= {f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.attn.hook_v", f"blocks.{layer}.attn.hook_pattern"}
        if "query" in want:
            names |= {f"blocks.{layer}.hook_attn_out"}
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    out = {"logits": logits[:, pos].float(), "scale": cache["ln_final.hook_scale"][:, pos].float()}
    stack = lambda fmt: torch.stack([cache[fmt.format(layer)][:, pos] for layer in range(n_layers)], 1).float()  # noqa: E731
    out["resid_pre"] = stack("blocks.{}.hook_resid_pre")
    if "ffn" in want:
        out["post"] = stack("blocks.{}.mlp.hook_post")
        if _has_resid_mid(model):
            out["ffn_base"] = stack("blocks.{}.hook_resid_mid")
        else:
            out["ffn_base"] = out["resid_pre"] + stack("blocks.{}.hook_attn_out")
    if "attn" in want:
        out["z"] = stack("blocks.{}.attn.hook_z")  # [B, L, H, d_head]
        out["v"] = torch.stack([cache[f"blocks.{layer}.attn.hook_v"] for layer in range(n_layers)], 1).float()
        out["pattern"] = torch.stack(
            [cache[f"blocks.{layer}.attn.hook_pattern"][:, :, pos] for layer in range(n_layers)], 1
        ).float()  # [B, L, H, src]
    if "query" in want:
        out["attn_out"] = stack("blocks.{}.hook_attn_out")
        out["embedding"] = cache["blocks.0.hook_resid_pre"][:, pos].float()
    return out


# ----------------------------------------------------------------------------------------------------------
# the vectorised kernel


def readout_rows(model, vectors: torch.Tensor) -> torch.Tensor:
    """The linear part of the frozen-scale readout of ``vectors [n, d_model]``: ``[n, d_vocab]`` (without the
    ``1/scale`` factor and without ``b_U``). Logits of ``base + c * vectors[i]`` = base logits + ``c / scale`` * row i."""
    if lens.is_layernorm(model):
        vectors = vectors - vectors.mean(-1, keepdim=True)
    return vectors.float() @ model.W_U.float()


def _chunk_size(n_prompts: int, d_vocab: int, per_row: int, memory_mb: float) -> int:
    budget = memory_mb * 2**20 / 4  # float32 elements
    return max(1, int(budget // max(1, n_prompts * per_row * d_vocab)))


def _add_and_score(base_logits, base_lp, coef, rows, target, want: set[str], alone_bias=None):
    """Scores for adding ``coef[b, c, *rest] * rows[c]`` to ``base_logits[b]``. Returns dict of ``[b, c, *rest]``.

    ``base_logits [B, V]`` include the 1/scale factor; ``coef`` already carries 1/scale.
    """
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


def _rank_score(rows, target) -> torch.Tensor:
    """Reciprocal rank (1 / (1 + #tokens scored above w)) of w in each row's projection: ``[B, c]``."""
    rw = rows[:, target].T  # [B, c]
    above = (rows.unsqueeze(0) > rw.unsqueeze(-1)).sum(-1)  # [B, c]
    return 1.0 / (1.0 + above.float())


def _lens_bias(model, exact_authors_lens: bool):
    b = _param(model, "b_U")
    return None if (exact_authors_lens or b is None) else b.float()


def _base_logits(model, x, scale, exact_authors_lens: bool):
    return lens.to_logits(model, x, scale, include_bias=not exact_authors_lens).float()


def _ffn_batch(model, run, target, scores, *, exact_authors_lens, memory_mb, layers, scale=None):
    """FFN neuron scores for one batch from a run dict; ``scale`` overrides the run's own final scale."""
    scale = run["scale"] if scale is None else scale
    n_b = target.shape[0]
    d_mlp, d_vocab = model.cfg.d_mlp, model.cfg.d_vocab
    want = set(scores)
    res = {s: torch.zeros(n_b, len(layers), d_mlp) for s in scores}
    base_lp_all = torch.zeros(n_b, len(layers))
    bias = _lens_bias(model, exact_authors_lens)
    chunk = _chunk_size(n_b, d_vocab, 2 if "logprob" in want else 1, memory_mb)
    for li, layer in enumerate(layers):
        w_out = model.W_out[layer].float()  # [d_mlp, d_model]
        coef = run["post"][:, layer]  # [B, d_mlp]
        base_logits = _base_logits(model, run["ffn_base"][:, layer], scale, exact_authors_lens)
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
            part = _add_and_score(base_logits, base_lp, c, rows, target, want, alone_bias=bias)
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


def _check_layers(model, layers) -> list[int]:
    n = model.cfg.n_layers
    if layers is None:
        return list(range(n))
    layers = [layers] if isinstance(layers, int) else list(layers)
    bad = [layer for layer in layers if not -n <= layer < n]
    if bad:
        raise InputError(f"Layers {bad} do not exist: the model has layers 0..{n - 1}.")
    return [layer % n for layer in layers]


def _target_tokens(model, target: torch.Tensor) -> tuple[str, ...]:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return ()
    return tuple(tok.convert_ids_to_tokens(target.tolist()))


# ----------------------------------------------------------------------------------------------------------
# public scoring functions


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
    memory_mb: float = _DEFAULT_MEMORY_MB,
    progress: bool = True,
) -> Attribution:
    """Scores of every FFN neuron of every layer (axes ``prompt, layer, neuron``) for the target at ``pos``.

    ``target``: None (the clean run's top-1 token), one token (id or single-token string) or one per prompt.
    ``scores``: any of :data:`FFN_SCORES` (``"all"`` for every one). Gated MLPs are scored through
    ``mlp.hook_post`` (= act(gate) * up), the coefficient that multiplies each row of ``W_out``.
    Prompts of different token lengths are grouped into equal-length batches automatically.
    """
    scores = FFN_SCORES if scores == "all" else _check_scores(scores, FFN_SCORES)
    layers = _check_layers(model, layers)
    batches = _prompt_batches(model, prompts, batch_size)
    n = _n_prompts(batches)
    tgt = _resolve_target(model, target, n)
    out = {s: torch.zeros(n, len(layers), model.cfg.d_mlp) for s in scores}
    coefs = torch.zeros(n, len(layers), model.cfg.d_mlp)
    base_lp = torch.zeros(n, len(layers))
    targets = torch.zeros(n, dtype=torch.long)
    for ix, toks in tqdm(batches, desc="FFN neuron scores", disable=not progress):
        _check_pos(pos, toks.shape[1])
        run = _clean_run(model, toks, pos)
        t = run["logits"].argmax(-1) if tgt is None else tgt[ix]
        with torch.no_grad():
            res, blp = _ffn_batch(
                model, run, t, scores, exact_authors_lens=exact_authors_lens, memory_mb=memory_mb, layers=layers
            )
        for s in scores:
            out[s][ix] = res[s]
        coefs[ix] = run["post"][:, layers].cpu()
        base_lp[ix] = blp
        targets[ix] = t.cpu()
    return Attribution(
        scores=out,
        axes=("prompt", "layer", "neuron"),
        target=targets,
        base_logprob=base_lp,
        coefficients=coefs,
        kind="ffn",
        exact_authors_lens=exact_authors_lens,
        pos=pos,
        target_tokens=_target_tokens(model, targets),
        settings={"layers": layers},
    )


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
    batches = _prompt_batches(model, prompts, 1)
    tgt = _resolve_target(model, target, _n_prompts(batches))
    if neurons is None:
        neurons = {layer: range(model.cfg.d_mlp) for layer in range(model.cfg.n_layers)}
    out = {}
    total = sum(len(v) for v in neurons.values()) * len(batches)
    bar = tqdm(total=total, desc="FFN neurons (loop)", disable=not progress)
    with torch.no_grad():
        for ix, toks in batches:
            run = _clean_run(model, toks, pos)
            w = int(run["logits"].argmax(-1)[0]) if tgt is None else int(tgt[ix[0]])
            scale = run["scale"][0]
            for layer, ks in neurons.items():
                base = run["ffn_base"][0, layer]
                base_lp = torch.log_softmax(_base_logits(model, base, scale, exact_authors_lens), -1)[w]
                for k in ks:
                    x = base + run["post"][0, layer, k] * model.W_out[layer, k].float()
                    lp = torch.log_softmax(_base_logits(model, x, scale, exact_authors_lens), -1)[w]
                    out[(ix[0], layer, int(k))] = float(lp - base_lp)
                    bar.update(1)
    bar.close()
    return out


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
    batches = _prompt_batches(model, prompts, batch_size)
    n = _n_prompts(batches)
    tgt = _resolve_target(model, target, n)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    lpi = torch.zeros(n, n_layers, n_heads)
    pi = torch.zeros(n, n_layers, n_heads)
    base_lp = torch.zeros(n, n_layers)
    targets = torch.zeros(n, dtype=torch.long)
    for ix, toks in tqdm(batches, desc="head scores", disable=not progress):
        _check_pos(pos, toks.shape[1])
        run = _clean_run(model, toks, pos, want=("attn",))
        t = run["logits"].argmax(-1) if tgt is None else tgt[ix]
        with torch.no_grad():
            for layer in range(n_layers):
                base_logits = _base_logits(model, run["resid_pre"][:, layer], run["scale"], exact_authors_lens)
                blp = torch.log_softmax(base_logits, -1).gather(1, t[:, None])[:, 0]
                result = torch.einsum("bhd,hdm->bhm", run["z"][:, layer], model.W_O[layer].float())
                logits = base_logits[:, None] + readout_rows(model, result) / run["scale"][:, None]
                lp = torch.log_softmax(logits, -1).gather(2, t[:, None, None].expand(-1, n_heads, 1))[..., 0]
                lpi[ix, layer] = lp - blp[:, None]
                pi[ix, layer] = lp.exp() - blp.exp()[:, None]
                base_lp[ix, layer] = blp
        targets[ix] = t.cpu()
    return Attribution(
        scores={"logprob_increase": lpi, "prob_increase": pi},
        axes=("prompt", "layer", "head"),
        target=targets,
        base_logprob=base_lp,
        kind="head",
        exact_authors_lens=exact_authors_lens,
        pos=pos,
        target_tokens=_target_tokens(model, targets),
        kv_groups=kv_groups(model),
    )


def attention_neurons(
    model,
    prompts,
    *,
    target=None,
    layers: Sequence[int] | None = None,
    exact_authors_lens: bool = False,
    pos: int = -1,
    batch_size: int = 8,
    memory_mb: float = _DEFAULT_MEMORY_MB,
    progress: bool = True,
) -> Attribution:
    """Log-probability increase of every attention neuron (axes ``prompt, layer, head, dim, source``): the vector
    ``pattern[l][h, pos, p] * v[l][p, kv(h), j] * W_O[l][h, j]`` on base ``resid_pre[l]``, source positions
    kept separate. ``coefficients`` holds ``pattern * v``; summed over ``dim`` and ``source`` the vectors give the
    head's output. Grouped-/multi-query models read ``v`` of the key/value head each query head shares."""
    layers = _check_layers(model, layers)
    batches = _prompt_batches(model, prompts, batch_size)
    n = _n_prompts(batches)
    if len({t.shape[1] for _, t in batches}) > 1:
        raise InputError("attention_neurons scores source positions, so every prompt must have the same token length.")
    tgt = _resolve_target(model, target, n)
    n_heads, d_head = model.cfg.n_heads, model.cfg.d_head
    seq = batches[0][1].shape[1]
    lpi = torch.zeros(n, len(layers), n_heads, d_head, seq)
    coefs = torch.zeros_like(lpi)
    base_lp = torch.zeros(n, len(layers))
    targets = torch.zeros(n, dtype=torch.long)
    owner = torch.tensor(kv_head_of(model))
    for ix, toks in tqdm(batches, desc="attention neuron scores", disable=not progress):
        _check_pos(pos, toks.shape[1])
        run = _clean_run(model, toks, pos, want=("attn",))
        t = run["logits"].argmax(-1) if tgt is None else tgt[ix]
        with torch.no_grad():
            for li, layer in enumerate(layers):
                v = run["v"][:, layer][:, :, owner.to(run["v"].device)]  # [B, src, H, d_head]
                coef = torch.einsum("bhp,bphd->bhdp", run["pattern"][:, layer], v)  # [B, H, d_head, src]
                coef = coef.reshape(len(ix), n_heads * d_head, seq)
                base_logits = _base_logits(model, run["resid_pre"][:, layer], run["scale"], exact_authors_lens)
                blp = torch.log_softmax(base_logits, -1).gather(1, t[:, None])[:, 0]
                w_o = model.W_O[layer].float().reshape(n_heads * d_head, -1)
                chunk = _chunk_size(len(ix), model.cfg.d_vocab, seq, memory_mb)
                vals = torch.zeros_like(coef)
                for s in range(0, n_heads * d_head, chunk):
                    e = min(n_heads * d_head, s + chunk)
                    rows = readout_rows(model, w_o[s:e])
                    c = coef[:, s:e] / run["scale"][:, :, None]
                    vals[:, s:e] = _add_and_score(base_logits, blp, c, rows, t, {"logprob_increase"})[
                        "logprob_increase"
                    ]
                lpi[ix, li] = vals.reshape(len(ix), n_heads, d_head, seq).cpu()
                coefs[ix, li] = coef.reshape(len(ix), n_heads, d_head, seq).cpu()
                base_lp[ix, li] = blp
        targets[ix] = t.cpu()
    return Attribution(
        scores={"logprob_increase": lpi},
        axes=("prompt", "layer", "head", "dim", "source"),
        target=targets,
        base_logprob=base_lp,
        coefficients=coefs,
        kind="attention_neuron",
        exact_authors_lens=exact_authors_lens,
        pos=pos,
        target_tokens=_target_tokens(model, targets),
        kv_groups=kv_groups(model),
        settings={"layers": layers},
    )


# ----------------------------------------------------------------------------------------------------------
# interventions


def neuron_mask_hooks(model, mask: torch.Tensor, layers: Sequence[int] | None = None):
    """Forward hooks that multiply ``mlp.hook_post`` by ``mask [batch, layer, d_mlp]`` (0 = zero the neuron) at
    every position; ``layers`` names the model layers of ``mask``'s layer axis (default: all)."""
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)

    def make(m):
        def hook(act, hook):
            return act * m[:, None, :].to(act.dtype)

        return hook

    return [(f"blocks.{layer}.mlp.hook_post", make(mask[:, i])) for i, layer in enumerate(layers)]


def head_zero_hooks(model, heads: Sequence[tuple[int, int]]):
    """Forward hooks that zero ``attn.hook_z`` of the given ``(layer, head)`` query heads at every position."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
            raise InputError(
                f"Head ({layer}, {head}) does not exist: the model has {model.cfg.n_layers} layers of "
                f"{model.cfg.n_heads} heads."
            )
        by_layer.setdefault(layer, []).append(head)

    def make(hs):
        def hook(z, hook):
            z = z.clone()
            z[:, :, hs] = 0.0
            return z

        return hook

    return [(f"blocks.{layer}.attn.hook_z", make(hs)) for layer, hs in by_layer.items()]


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
    batches = _prompt_batches(model, prompts, batch_size)
    n = _n_prompts(batches)
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


# ----------------------------------------------------------------------------------------------------------
# query neurons


def _ffn_keys(model, layer: int) -> list[torch.Tensor]:
    """The key matrices ``[d_model, d_mlp]`` of an FFN layer (gated: the up and the gate keys)."""
    keys = [model.W_in[layer].float()]
    if getattr(model.cfg, "gated_mlp", False):
        keys.append(model.W_gate[layer].float())
    return keys


def query_neurons(
    model,
    prompts,
    value: Attribution,
    *,
    top: int = 100,
    score: str = "logprob_increase",
    batch_size: int = 16,
    progress: bool = True,
) -> QueryNeurons:
    """Query scores of every upstream vector for each prompt's ``top`` value FFN neurons (METHODS §3.2).

    For a value neuron (l, k) with key ``key`` (the LN weight is folded into ``W_in``), an upstream vector ``u`` at
    the same position scores ``(u . key) / (x . key) * Imp(l, k)`` with ``x`` the input of layer l's MLP
    (``resid_mid[l]``; centred for LayerNorm models). Gated MLPs have two keys (up and gate); the score averages
    the two ratios. Upstream vectors: the embedding, attention outputs of layers ``< l`` (``<= l`` when attention
    and MLP are sequential) and FFN sub-values ``m_j W_out[l'][j]`` of layers ``l' < l``.

    Vectorised: for each upstream layer the sum over value neurons collapses into one ``d_model`` vector, so
    every neuron of a layer is scored by one matrix-vector product.
    """
    if value.kind != "ffn":
        raise InputError("query_neurons takes an FFN attribution from neurons.ffn_neurons().")
    layers = value.settings.get("layers", list(range(model.cfg.n_layers)))
    batches = _prompt_batches(model, prompts, batch_size)
    n = _n_prompts(batches)
    if n != value.n_prompts:
        raise InputError(f"{n} prompts but the value attribution was computed on {value.n_prompts}.")
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    sequential = _has_resid_mid(model)
    top_idx = value.top_indices(top, score)  # [n, top] over (layer-index, neuron)
    vl = torch.tensor(layers)[top_idx // d_mlp]
    vk = top_idx % d_mlp
    ffn = torch.zeros(n, n_layers, d_mlp)
    attn = torch.zeros(n, n_layers)
    emb = torch.zeros(n)
    ln = lens.is_layernorm(model)
    center = (lambda x: x - x.mean(-1, keepdim=True)) if ln else (lambda x: x)  # noqa: E731
    for ix, toks in tqdm(batches, desc="query neurons", disable=not progress):
        run = _clean_run(model, toks, value.pos, want=("ffn", "query"))
        with torch.no_grad():
            for bi, i in enumerate(ix):
                imp = value[score][i].reshape(-1)[top_idx[i]]  # [top]
                # q[l] = sum over value neurons in layer l of key * Imp / (x . key), per key kind
                q = torch.zeros(n_layers, model.cfg.d_model)
                for layer in vl[i].unique().tolist():
                    sel = vl[i] == layer
                    ks = vk[i][sel]
                    x = center(run["ffn_base"][bi, layer] if sequential else run["resid_pre"][bi, layer])
                    keys = _ffn_keys(model, layer)
                    acc = torch.zeros(model.cfg.d_model)
                    for key in keys:
                        kk = key[:, ks]  # [d_model, n_sel]
                        denom = x @ kk
                        denom = torch.where(denom.abs() < 1e-8, torch.full_like(denom, 1e-8), denom)
                        acc += (kk * (imp[sel] / denom)).sum(1) / len(keys)
                    q[layer] = acc.cpu()
                # upstream FFN layer l' feeds value neurons in layers > l'
                later = q.flip(0).cumsum(0).flip(0)  # later[l] = sum of q over layers >= l
                for lp in range(n_layers - 1):
                    qv = later[lp + 1].to(model.W_out.device)
                    ffn[i, lp] = (run["post"][bi, lp] * (center(model.W_out[lp].float()) @ qv)).cpu()
                for la in range(n_layers):
                    qv = later[la] if sequential else (later[la + 1] if la + 1 < n_layers else torch.zeros_like(q[0]))
                    attn[i, la] = float(center(run["attn_out"][bi, la]) @ qv.to(run["attn_out"].device))
                emb[i] = float(center(run["embedding"][bi]) @ later[0].to(run["embedding"].device))
    return QueryNeurons(ffn=ffn, attn=attn, embedding=emb, value_neurons=torch.stack([vl, vk], -1))
