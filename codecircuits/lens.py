"""Reading vectors of the residual stream through the unembedding, with the final norm's scale frozen.

In compatibility mode the final norm's weight is folded into ``W_U``, so for a residual vector ``x`` the model's
logits are ``norm(x) @ W_U + b_U`` with ``norm(x) = x / scale`` (RMSNorm) or ``(x - mean(x)) / scale``
(LayerNorm), where ``scale = ln_final.hook_scale``. Freezing ``scale`` at its value on the clean run makes the
readout linear in ``x``: the logits of a sum of components are the sum of their logits (plus ``b_U`` once).
That is the lens of Yu & Ananiadou, Miller et al. and Geva et al.'s agreement (METHODS §7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float

from . import figures
from .core.inputs import token_texts
from .core.sites import LN_FINAL_SCALE, head_label, hook_name


def is_layernorm(model) -> bool:
    """True for LayerNorm models (the readout centres vectors), False for RMSNorm."""
    return str(getattr(model.cfg, "normalization_type", "LN")).upper().startswith("LN")


def final_scale(cache, pos: int | None = -1) -> torch.Tensor:
    """The final norm's scale from a cache: ``[batch, 1]`` at ``pos`` or ``[batch, pos, 1]`` for ``pos=None``."""
    scale = cache[LN_FINAL_SCALE]
    return scale if pos is None else scale[:, pos]


def apply_final_norm(model, x: Float[torch.Tensor, "... d_model"], scale: torch.Tensor) -> torch.Tensor:
    """Normalise ``x`` as the final norm would, with its scale frozen to ``scale`` (broadcast against ``x``)."""
    if is_layernorm(model):
        x = x - x.mean(-1, keepdim=True)
    return x / scale


def to_logits(
    model,
    x: Float[torch.Tensor, "... d_model"],
    scale: torch.Tensor,
    *,
    include_bias: bool = True,
) -> Float[torch.Tensor, "... d_vocab"]:
    """Logits of residual-stream vector(s) ``x`` with the final scale frozen (``include_bias`` adds ``b_U``)."""
    out = apply_final_norm(model, x, scale) @ model.W_U
    if include_bias and getattr(model, "b_U", None) is not None:
        out = out + model.b_U
    return out


# ----------------------------------------------------------------------------------------------------------------
# Logit lens of a logit difference, and direct contributions of sublayers and heads (Miller et al., METHODS §2)


def _as_ids(ids, batch: int, device) -> torch.Tensor:
    from .errors import InputError

    t = torch.as_tensor(ids, device=device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise InputError(f"Got {t.numel()} token ids for {batch} prompts: pass one id per prompt (or a single id).")
    return t


def _check_ids_in_vocab(model, *ids: torch.Tensor) -> None:
    from .errors import InputError

    for t in ids:
        if t.numel() and (t.min() < 0 or t.max() >= model.cfg.d_vocab):
            raise InputError(f"Token ids must lie in [0, {model.cfg.d_vocab}); got {t.min().item()}..{t.max().item()}.")


#: the hook-name suffixes the lens methods read, which :func:`run_cache` keeps by default
LENS_HOOKS = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "attn.hook_z", "ln1_post.hook_scale")


def cache_names(model, *, names=LENS_HOOKS, extra: tuple[str, ...] = ()) -> list[str]:
    """The hook names of ``model`` that :func:`run_cache` keeps (with ``extra`` suffixes), for a cache run another
    way (e.g. :class:`codecircuits.core.runner.Receiver`'s ``extra_names``) that the lens methods then read."""
    want = tuple(names) + tuple(extra)
    fixed = (LN_FINAL_SCALE, "hook_embed", "hook_pos_embed")
    return [n for n in model.hook_dict if n in fixed or n.endswith(want)]


def run_cache(model, tokens, *, names=LENS_HOOKS, extra: tuple[str, ...] = ()):
    """Logits and a cache with the hooks the lens methods read (plus ``extra`` hook-name suffixes), no grad."""
    from .core.batching import to_tokens

    tokens = to_tokens(model, tokens)
    want = tuple(names) + tuple(extra)

    def keep(name: str) -> bool:
        return name == LN_FINAL_SCALE or name in ("hook_embed", "hook_pos_embed") or name.endswith(want)

    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=keep)
    return logits, cache


def _direction(model, correct: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """``[batch, d_model]``: ``W_U[:, correct] - W_U[:, wrong]`` (the logit-difference direction)."""
    return (model.W_U[:, correct] - model.W_U[:, wrong]).T


@dataclass(frozen=True)
class LogitDiffLens:
    """Logit difference (correct minus wrong token) read from the residual stream at every layer.

    ``values[site, batch]`` with ``sites[i] = (layer, "pre" | "post")``: the residual at ``hook_resid_pre`` /
    ``hook_resid_post`` of that layer, read with the final norm's scale frozen from the clean run (``b_U``
    included). ``final[batch]`` is the model's own logit difference (equal to the last ``post`` site).
    """

    values: torch.Tensor
    sites: tuple[tuple[int, str], ...]
    final: torch.Tensor
    pos: int
    axes: tuple[str, ...] = ("site", "batch")

    @property
    def labels(self) -> list[str]:
        return [f"{layer} {kind}" for layer, kind in self.sites]

    def mean(self) -> torch.Tensor:
        return self.values.mean(-1)

    def post(self) -> torch.Tensor:
        """``[layer, batch]``: the values at ``hook_resid_post`` only."""
        idx = [i for i, (_, k) in enumerate(self.sites) if k == "post"]
        return self.values[idx]

    def emergence_layer(self, fraction: float = 0.5) -> int | None:
        """First layer from whose ``resid_post`` on the mean logit difference stays >= ``fraction`` × its final
        value (None if the final mean is not positive)."""
        curve = self.post().mean(-1)
        final = float(self.final.mean())
        if final <= 0:
            return None
        ok = (curve >= fraction * final).tolist()
        for layer in range(len(ok)):
            if all(ok[layer:]):
                return layer
        return None

    def to_dataframe(self):
        import pandas as pd

        m, s = self.values.mean(-1), self.values.std(-1) if self.values.shape[-1] > 1 else self.values[:, 0] * 0
        return pd.DataFrame(
            dict(layer=[x for x, _ in self.sites], site=[k for _, k in self.sites], logit_diff=m.tolist(),
                 std=s.tolist())
        )

    def top(self, k: int = 10):
        """The ``k`` sites with the largest mean logit difference."""
        return self.to_dataframe().sort_values("logit_diff", ascending=False, kind="stable").head(k)

    def plot(self) -> figures.Figure:
        """The mean logit difference at every site, in depth order."""
        df = self.to_dataframe()
        return figures.lines([f"{a} {b}" for a, b in zip(df.layer, df.site)], {"logit difference": df.logit_diff},
                             title="logit lens: logit difference by depth", x_title="site", y_title="logit diff")


def logit_diff_lens(model, tokens, correct, wrong, *, pos: int = -1, cache=None, logits=None) -> LogitDiffLens:
    """Logit lens of ``logit[correct] - logit[wrong]`` at every ``resid_pre`` and ``resid_post`` (METHODS §2.1).

    ``correct``/``wrong``: one token id per prompt (or one for all). The final norm's scale is frozen from this
    clean run at ``pos``. Pass ``cache``/``logits`` from :func:`run_cache` to reuse a forward pass.
    """
    if cache is None:
        logits, cache = run_cache(model, tokens)
    batch = cache["blocks.0.hook_resid_pre"].shape[0]
    dev = cache["blocks.0.hook_resid_pre"].device
    c, w = _as_ids(correct, batch, dev), _as_ids(wrong, batch, dev)
    _check_ids_in_vocab(model, c, w)
    scale = final_scale(cache, pos)
    direction = _direction(model, c, w)
    b = (model.b_U[c] - model.b_U[w]) if getattr(model, "b_U", None) is not None else 0.0
    vals, sites = [], []
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            for kind in ("pre", "post"):
                x = apply_final_norm(model, cache[hook_name(f"resid_{kind}", layer)][:, pos], scale)
                vals.append((x * direction).sum(-1) + b)
                sites.append((layer, kind))
        if logits is None:
            final = vals[-1]
        else:
            ar = torch.arange(batch, device=dev)
            final = logits[ar, pos, c] - logits[ar, pos, w]
    return LogitDiffLens(torch.stack(vals).detach(), tuple(sites), final.detach(), pos)


@dataclass(frozen=True)
class SublayerContributions:
    """Direct contribution of each sublayer to the logit difference, through the frozen final norm.

    ``attn[layer, batch]`` and ``mlp[layer, batch]`` (``hook_attn_out`` / ``hook_mlp_out``), ``embed[batch]``
    (token plus positional embeddings) and ``bias[batch]`` (the ``b_U`` difference); they sum exactly to the
    model's logit difference ``total[batch]``.
    """

    attn: torch.Tensor
    mlp: torch.Tensor
    embed: torch.Tensor
    bias: torch.Tensor
    total: torch.Tensor
    pos: int
    axes: tuple[str, ...] = ("layer", "batch")

    def attn_share(self) -> float:
        """Share of |direct effect| that attention sublayers carry: sum|attn| / (sum|attn| + sum|mlp|) of means."""
        a = self.attn.mean(-1).abs().sum()
        m = self.mlp.mean(-1).abs().sum()
        return float(a / (a + m)) if float(a + m) > 0 else float("nan")

    def to_dataframe(self):
        import pandas as pd

        rows = []
        for layer in range(self.attn.shape[0]):
            rows.append(
                dict(component=f"L{layer} attn", layer=layer, kind="attn", value=float(self.attn[layer].mean()))
            )
            rows.append(dict(component=f"L{layer} mlp", layer=layer, kind="mlp", value=float(self.mlp[layer].mean())))
        return pd.DataFrame(rows)

    def top(self, k: int = 10):
        """The ``k`` sublayers with the largest ``|direct effect|``."""
        df = self.to_dataframe()
        return df.reindex(df.value.abs().sort_values(ascending=False, kind="stable").index).head(k)

    def plot(self) -> figures.Figure:
        """Every sublayer's direct effect, in depth order."""
        df = self.to_dataframe()
        return figures.bars(df.component, df.value, title="direct effect of each sublayer", value_title="logit diff")


def sublayer_contributions(model, tokens, correct, wrong, *, pos: int = -1, cache=None) -> SublayerContributions:
    """Each attention and MLP sublayer's direct effect on ``logit[correct] - logit[wrong]`` (METHODS §2.2)."""
    if cache is None:
        _, cache = run_cache(model, tokens)
    resid0 = cache["blocks.0.hook_resid_pre"]
    batch, dev = resid0.shape[0], resid0.device
    c, w = _as_ids(correct, batch, dev), _as_ids(wrong, batch, dev)
    _check_ids_in_vocab(model, c, w)
    scale = final_scale(cache, pos)
    direction = _direction(model, c, w)

    def read(x):
        return (apply_final_norm(model, x[:, pos], scale) * direction).sum(-1)

    with torch.no_grad():
        attn = torch.stack([read(cache[hook_name("attn_out", i)]) for i in range(model.cfg.n_layers)])
        mlp = torch.stack([read(cache[hook_name("mlp_out", i)]) for i in range(model.cfg.n_layers)])
        embed = read(resid0)
        bias = (model.b_U[c] - model.b_U[w]) if getattr(model, "b_U", None) is not None else torch.zeros_like(embed)
        total = read(cache[hook_name("resid_post", model.cfg.n_layers - 1)]) + bias
    return SublayerContributions(attn.detach(), mlp.detach(), embed.detach(), bias.detach(), total.detach(), pos)


def has_post_attention_norm(model) -> bool:
    """True when each attention output passes a norm before the residual (Gemma 2/3's ``ln1_post``): a head's
    direct write is then ``z @ W_O`` divided by that norm's scale and multiplied by its gain (see
    :func:`post_attention_gain`), which :func:`head_logits` applies with the scale frozen from the run."""
    blocks = getattr(model, "blocks", None)
    return bool(blocks is not None and len(blocks) and hasattr(blocks[0], "ln1_post"))


def post_attention_gain(model, layer: int) -> torch.Tensor:
    """``[d_model]``: the elementwise gain of layer ``layer``'s post-attention RMS norm, so that
    ``attn_out = (z @ W_O) / hook_scale * gain`` (Gemma's norm multiplies by ``1 + weight``; read off the module
    by normalising a vector of ones, whose RMS is known)."""
    norm = model.blocks[layer].ln1_post
    module = getattr(norm, "_original_component", norm)
    eps = float(getattr(module, "eps", getattr(module, "variance_epsilon", 0.0)))
    w = next(module.parameters())
    ones = torch.ones(1, w.shape[-1], dtype=w.dtype, device=w.device)
    with torch.no_grad():
        return (module(ones)[0] * (1.0 + eps) ** 0.5).detach()


@dataclass(frozen=True)
class HeadLogits:
    """Direct logits of every attention head onto a few tokens: ``values[batch, layer, head, token]``.

    A head's output ``z @ W_O`` at ``pos`` is read through the unembedding, with the final norm's scale frozen
    (``frozen_scale=True``) or raw as in the paper's code (``result @ W_U``); no bias.
    """

    values: torch.Tensor
    token_ids: tuple[int, ...]
    token_labels: tuple[str, ...]
    frozen_scale: bool
    pos: int
    axes: tuple[str, ...] = ("batch", "layer", "head", "token")

    def logit_diff(self, correct_index: torch.Tensor, wrong_index: torch.Tensor) -> torch.Tensor:
        """``[batch, layer, head]``: each head's direct logit difference between two of its tokens (indices into
        ``token_ids``), one pair per prompt."""
        ar = torch.arange(self.values.shape[0])
        return self.values[ar, :, :, correct_index] - self.values[ar, :, :, wrong_index]

    def to_dataframe(self):
        import pandas as pd

        m = self.values.mean(0)
        rows = []
        for layer in range(m.shape[0]):
            for h in range(m.shape[1]):
                row = dict(head=head_label(layer, h), layer=layer, head_index=h)
                row.update({lab: float(m[layer, h, i]) for i, lab in enumerate(self.token_labels)})
                rows.append(row)
        return pd.DataFrame(rows)

    def top(self, k: int = 10, token: int = 0):
        """The ``k`` heads with the largest mean direct logit on the ``token``-th token."""
        return self.to_dataframe().sort_values(self.token_labels[token], ascending=False, kind="stable").head(k)

    def plot(self, token: int = 0) -> figures.Figure:
        """Each head's mean direct logit on the ``token``-th token, layer by head."""
        m = self.values.mean(0)[..., token]
        return figures.heatmap(m, title=f"direct logit of each head on {self.token_labels[token]}", y_title="layer",
                               x_title="head", center=0.0, value_label="direct logit")


def head_logits(model, tokens, token_ids, *, pos: int = -1, frozen_scale: bool = True, cache=None) -> HeadLogits:
    """Per-head direct logit attribution at ``pos`` onto ``token_ids`` (METHODS §2.3), from ``attn.hook_z``.

    For models with a norm after attention (see :func:`has_post_attention_norm`) each head's output is passed
    through that norm with its scale frozen from the run (``ln1_post.hook_scale``), so the heads of a layer sum
    to the layer's ``hook_attn_out``, as they do in models without it.
    """
    if cache is None:
        _, cache = run_cache(model, tokens)
    ids = torch.as_tensor(list(token_ids)).long()
    _check_ids_in_vocab(model, ids)
    scale = final_scale(cache, pos) if frozen_scale else None
    w_u = model.W_U[:, ids.to(model.W_U.device)]  # [d_model, token]
    out = []
    post_norm = has_post_attention_norm(model)
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            z = cache[hook_name("z", layer)][:, pos]  # [batch, head, d_head]
            res = torch.einsum("bhd,hdm->bhm", z, model.W_O[layer])
            if post_norm:  # the norm after attention, linear once its scale is frozen
                scale_l = cache[hook_name("ln1_post_scale", layer)][:, pos]  # [batch, 1]
                res = res / scale_l[:, None] * post_attention_gain(model, layer).to(res.dtype)
            if frozen_scale:
                res = apply_final_norm(model, res, scale[:, None])
            out.append(res @ w_u)
    labels = tuple(token_texts(model.tokenizer, ids.tolist()))
    return HeadLogits(torch.stack(out, 1).detach(), tuple(ids.tolist()), labels, frozen_scale, pos)
