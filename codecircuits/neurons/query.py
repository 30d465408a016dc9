"""Query neurons (METHODS §3.2): how much each upstream vector at the scored position (the embedding, the
attention layers' outputs and the FFN sub-values of earlier layers) activates the top value FFN neurons of an
attribution from :func:`~codecircuits.neurons.ffn_neurons`."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import figures, intervals, lens
from ..core.batching import n_prompts, prompt_batches
from ..core.sites import Neuron
from ..errors import InputError
from .results import Attribution
from .runs import clean_run, has_resid_mid


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
        """The ``k`` FFN neurons with the largest signed query score (the mean over prompts, or ``prompt``'s),
        largest first, one row per neuron (:meth:`to_dataframe` has one per prompt and neuron)."""
        values = self.ffn.mean(0) if prompt is None else self.ffn[prompt]
        top = torch.sort(values.flatten(), descending=True, stable=True)
        order, scores = top.indices[: min(k, values.numel())], top.values[: min(k, values.numel())]
        layer, neuron = torch.unravel_index(order, values.shape)
        return pd.DataFrame(
            {
                "rank": range(1, len(layer) + 1),
                "layer": layer.tolist(),
                "neuron": neuron.tolist(),
                "name": [str(Neuron(a, b)) for a, b in zip(layer.tolist(), neuron.tolist())],
                "query_score": scores.tolist(),
            }
        )

    def plot(self, k: int = 20, prompt: int | None = None) -> figures.Figure:
        """The top ``k`` query neurons (:meth:`top`) as bars."""
        return figures.top_bars(self.top(k, prompt), "query_score", label="name", title=f"query neurons: top {k}")

    def to_dataframe(self) -> pd.DataFrame:
        b, n_layers, d_mlp = self.ffn.shape
        grid = torch.stack(
            torch.meshgrid(torch.arange(b), torch.arange(n_layers), torch.arange(d_mlp), indexing="ij"), -1
        )
        df = pd.DataFrame(grid.reshape(-1, 3).numpy(), columns=list(self.axes))
        df["query_score"] = self.ffn.reshape(-1).numpy()
        return df

    def mean_layers(self, k: int) -> dict[str, intervals.Interval]:
        """Per prompt, the mean layer of its value neurons and of its ``k`` top FFN query neurons, as bootstrap
        intervals over prompts: ``"value_mean_layer"``, ``"query_mean_layer"`` and ``"value_minus_query"`` (above
        0: the query neurons lie in shallower layers)."""
        v = self.value_neurons[..., 0].float().mean(1)
        q = (self.ffn.reshape(self.ffn.shape[0], -1).topk(k, dim=1).indices // self.ffn.shape[-1]).float().mean(1)
        return {"value_mean_layer": intervals.mean(v), "query_mean_layer": intervals.mean(q),
                "value_minus_query": intervals.mean(v - q)}

    def to_attribution(self, value: Attribution) -> Attribution:
        """The FFN query scores as an FFN :class:`Attribution` (score ``"query_score"``, every layer) for the
        target of ``value`` (the value attribution they were computed from), e.g. to zero each prompt's top query
        neurons with :func:`~codecircuits.neurons.evaluate_top_neurons`."""
        if value.n_prompts != self.ffn.shape[0]:
            raise InputError(f"{value.n_prompts} prompts in the value attribution, {self.ffn.shape[0]} here.")
        return Attribution(scores={"query_score": self.ffn}, axes=("prompt", "layer", "neuron"), target=value.target,
                           base_logprob=torch.zeros(self.ffn.shape[:2]), kind="ffn",
                           exact_authors_lens=value.exact_authors_lens, pos=value.pos,
                           target_tokens=value.target_tokens, settings={"layers": list(range(self.ffn.shape[1]))})

    def layer_totals(self) -> pd.DataFrame:
        """Per layer, the mean over prompts of the summed FFN query scores and the attention layer's score."""
        return pd.DataFrame(
            {
                "layer": range(self.ffn.shape[1]),
                "ffn": self.ffn.sum(-1).mean(0).tolist(),
                "attn": self.attn.mean(0).tolist(),
            }
        )


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
    batches = prompt_batches(model, prompts, batch_size)
    n = n_prompts(batches)
    if n != value.n_prompts:
        raise InputError(f"{n} prompts but the value attribution was computed on {value.n_prompts}.")
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    sequential = has_resid_mid(model)
    top_idx = value.top_indices(top, score)  # [n, top] over (layer-index, neuron)
    vl = torch.tensor(layers)[top_idx // d_mlp]
    vk = top_idx % d_mlp
    ffn = torch.zeros(n, n_layers, d_mlp)
    attn = torch.zeros(n, n_layers)
    emb = torch.zeros(n)
    ln = lens.is_layernorm(model)
    center = (lambda x: x - x.mean(-1, keepdim=True)) if ln else (lambda x: x)  # noqa: E731
    for ix, toks in tqdm(batches, desc="query neurons", disable=not progress):
        run = clean_run(model, toks, value.pos, want=("ffn", "query"))
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
