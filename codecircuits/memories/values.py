"""Value vectors through the unembedding: the tokens each key promotes, and key-value agreement (Geva et al.)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import figures
from ..core.inputs import token_texts
from ..errors import InputError
from .chunks import ChunkedCorpus
from .triggers import TriggerScan, layer_set


@dataclass(frozen=True)
class ValueTokens:
    """The tokens each key's value vector promotes: ``W_out[l][k] @ W_U`` (top) and its negation (bottom).

    A positive coefficient adds ``W_out[l][k]``, promoting ``top_ids``; a negative one (common in gated MLPs)
    subtracts it, promoting ``bottom_ids``. For LayerNorm models the value is centred first (the final norm
    would); the final scale is positive and does not change the ranking, and ``b_U`` is left out.
    """

    top_ids: torch.Tensor  # [layer, neuron, k]
    top_logits: torch.Tensor
    bottom_ids: torch.Tensor  # [layer, neuron, k] most negative logits (promoted by a negative coefficient)
    bottom_logits: torch.Tensor
    layers: tuple[int, ...]
    neurons: tuple[int, ...] = ()  # the keys projected (axis "neuron" indexes this list)
    token_strs: tuple[str, ...] = field(repr=False, default=())
    axes: tuple[str, ...] = ("layer", "neuron", "k")

    def _index(self, layer: int, neuron: int) -> tuple[int, int]:
        if layer not in self.layers or neuron not in self.neurons:
            raise InputError(f"Key L{layer}N{neuron} was not projected; value_tokens(layers=..., neurons=...) it.")
        return self.layers.index(layer), self.neurons.index(neuron)

    def tokens(self, layer: int, neuron: int, *, sign: int = 1) -> list[str]:
        """The tokens key (``layer``, ``neuron``) promotes with a positive (``sign=1``) or negative coefficient."""
        li, ni = self._index(layer, neuron)
        ids = self.top_ids if sign >= 0 else self.bottom_ids
        return [self.token_strs[int(i)] for i in ids[li, ni]]

    def to_dataframe(self, layer: int | None = None) -> pd.DataFrame:
        rows = []
        for li, lay in enumerate(self.layers):
            if layer is not None and lay != layer:
                continue
            for n, neuron in enumerate(self.neurons):
                rows.append(
                    {
                        "layer": lay,
                        "neuron": neuron,
                        "promotes": " ".join(repr(self.token_strs[int(i)]) for i in self.top_ids[li, n]),
                        "top_logit": float(self.top_logits[li, n, 0]),
                        "promotes_if_negative": " ".join(repr(self.token_strs[int(i)]) for i in self.bottom_ids[li, n]),
                    }
                )
        return pd.DataFrame(rows)

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` keys whose value vector gives the largest single-token logit (signed: the most promoted token's
        ``top_logit`` of :meth:`to_dataframe`), largest first, with the tokens each promotes."""
        s = self.top_logits[..., 0]
        idx = torch.sort(s.flatten(), descending=True, stable=True).indices[: min(k, s.numel())]
        li, ni = idx // s.shape[1], idx % s.shape[1]
        return pd.DataFrame(
            {
                "layer": [self.layers[int(i)] for i in li],
                "neuron": [self.neurons[int(i)] for i in ni],
                "logit": s[li, ni].tolist(),
                "promotes": [self.tokens(self.layers[int(a)], self.neurons[int(b)]) for a, b in zip(li, ni)],
            }
        )

    def plot(self, k: int = 20) -> figures.Figure:
        """The top ``k`` keys (:meth:`top`) as bars of their largest token logit, each labelled with that token."""
        df = self.top(k)
        df["key"] = [f"L{a}N{b} {p[0]!r}" if p else f"L{a}N{b}" for a, b, p in zip(df.layer, df.neuron, df.promotes)]
        return figures.top_bars(df, "logit", label="key", title=f"value vectors: top {k} token logits")


def value_tokens(
    model,
    *,
    k: int = 10,
    layers: Sequence[int] | None = None,
    neurons: Sequence[int] | None = None,
    batch: int = 512,
    progress: bool = True,
) -> ValueTokens:
    """Project value vectors ``W_out[l][n]`` through the unembedding and keep their top / bottom ``k`` tokens.

    All keys of ``layers`` (default: every layer), or only ``neurons`` (the same indices in every layer): a full
    projection costs ``d_mlp × d_model × d_vocab`` multiply-adds per layer.
    """
    from ..lens import is_layernorm

    lays = layer_set(model, layers)
    d_mlp = int(model.cfg.d_mlp)
    if neurons is None:
        nidx = torch.arange(d_mlp)
    else:
        nidx = torch.as_tensor(sorted({int(n) for n in neurons}), dtype=torch.long)
        if len(nidx) == 0 or nidx.min() < 0 or nidx.max() >= d_mlp:
            raise InputError(f"neurons must be a non-empty subset of 0..{d_mlp - 1}.")
    W_U = model.W_U.detach().float()
    k = min(k, W_U.shape[1])
    tops, topl, bots, botl = [], [], [], []
    with torch.no_grad():
        for layer in tqdm(lays, desc="values", disable=not progress):
            W = model.W_out[layer].detach().float()[nidx.to(model.W_out.device)]  # [neuron, d_model]
            if is_layernorm(model):
                W = W - W.mean(-1, keepdim=True)
            ti, tl, bi, bl = [], [], [], []
            for a in range(0, W.shape[0], batch):
                logits = W[a : a + batch] @ W_U
                t = logits.topk(k, dim=-1)
                b = logits.topk(k, dim=-1, largest=False)
                ti.append(t.indices), tl.append(t.values), bi.append(b.indices), bl.append(b.values)
            (
                tops.append(torch.cat(ti)),
                topl.append(torch.cat(tl)),
                bots.append(torch.cat(bi)),
                botl.append(torch.cat(bl)),
            )
    strs = tuple(token_texts(model.tokenizer, range(W_U.shape[1])))
    return ValueTokens(top_ids=torch.stack(tops).cpu(), top_logits=torch.stack(topl).cpu(),
                       bottom_ids=torch.stack(bots).cpu(), bottom_logits=torch.stack(botl).cpu(), layers=lays,
                       neurons=tuple(nidx.tolist()), token_strs=strs)


def key_value_agreement(
    scan: TriggerScan, values: ValueTokens, chunked: ChunkedCorpus, *, rank: int = 0
) -> pd.DataFrame:
    """Per layer, the share of keys whose value promotes the token that follows their trigger example.

    Geva et al.'s key-value agreement: for each key's ``rank``-th trigger, is the document's next token among the
    value's top-k tokens (its bottom-k when the coefficient is negative)? ``chance`` is k / vocabulary size.
    """
    nxt = scan.next_token_ids(chunked)[..., rank][:, list(values.neurons)]  # [layer, projected neuron]
    sv = scan.values[:, list(values.neurons), rank]
    rows = []
    for li, layer in enumerate(scan.layers):
        if layer not in values.layers:
            continue
        vi = values.layers.index(layer)
        neg = sv[li] < 0
        ids = torch.where(neg.unsqueeze(-1), values.bottom_ids[vi], values.top_ids[vi])
        ok = nxt[li] >= 0
        hit = (ids == nxt[li].unsqueeze(-1)).any(-1) & ok
        rows.append(
            {
                "layer": layer,
                "agreement": float(hit.sum()) / max(int(ok.sum()), 1),
                "keys": int(ok.sum()),
                "chance": values.top_ids.shape[-1] / len(values.token_strs),
            }
        )
    return pd.DataFrame(rows)


__all__ = ["ValueTokens", "key_value_agreement", "value_tokens"]
