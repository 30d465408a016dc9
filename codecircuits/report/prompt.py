"""A report on one prompt: what the model predicts next, where in depth that prediction appears (logit lens),
which heads write it (direct logit attribution, with their attention patterns), and which MLP neurons fire most
at the last position (over the code). Used by ``codecircuits report``; any model of the test matrix works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..core.batching import to_tokens
from ..core.inputs import token_texts
from ..core.sites import LN_FINAL_SCALE, head_label, hook_name
from ..errors import InputError
from ..lens import final_scale, head_logits, to_logits
from ._util import position_labels, show_token
from .builder import Report
from .views import parse_heads, parse_neurons, str_tokens


@dataclass(frozen=True)
class PromptSummary:
    """What :func:`prompt_report` measured (all JSON-able through :meth:`to_dict`).

    ``lens_logprob[layer]`` is the log-probability of the model's final top token read from the residual stream
    after each layer (final-norm scale frozen); ``head_direct_logit[layer][head]`` is each head's direct logit
    onto that token at the last position (its output read through the unembedding, final scale frozen).
    """

    model: str
    prompt: str
    tokens: list[str]
    top_token: str
    top_prob: float
    top_tokens: list[tuple[str, float]]
    lens_logprob: list[float]
    first_top1_layer: int | None
    head_direct_logit: list[list[float]]
    heads: list[str]
    neurons: list[str]
    neuron_last: list[float]
    settings: dict = field(default_factory=dict)

    def metrics(self) -> dict:
        """The key numbers the report shows (the browser test compares them with the page)."""
        return {
            "n_tokens": len(self.tokens),
            "top_token": show_token(self.top_token),
            "top_prob": self.top_prob,
            "first_top1_layer": self.first_top1_layer if self.first_top1_layer is not None else "never",
            "top_head": self.top_head,
        }

    @property
    def top_head(self) -> str:
        """The head with the largest direct logit onto the predicted token."""
        flat = [(v, layer, h) for layer, row in enumerate(self.head_direct_logit) for h, v in enumerate(row)]
        _, layer, h = max(flat)
        return head_label(layer, h)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "prompt": self.prompt,
            "tokens": self.tokens,
            "metrics": self.metrics(),
            "top_tokens": [[t, p] for t, p in self.top_tokens],
            "lens_logprob": self.lens_logprob,
            "head_direct_logit": self.head_direct_logit,
            "heads": self.heads,
            "neurons": self.neurons,
            "neuron_last": self.neuron_last,
            "settings": self.settings,
        }


@torch.no_grad()
def prompt_report(
    model,
    prompt: str,
    *,
    heads: Sequence | str | None = None,
    neurons: Sequence | str | None = None,
    k_heads: int = 6,
    k_neurons: int = 8,
    model_name: str | None = None,
) -> tuple[Report, PromptSummary]:
    """Build the report on ``prompt``; ``heads`` / ``neurons`` default to the ``k_heads`` heads with the largest
    direct logit onto the predicted token and the ``k_neurons`` neurons with the largest activation at the last
    position."""
    if not isinstance(prompt, str) or not prompt:
        raise InputError("prompt_report needs a non-empty prompt string.")
    if k_heads < 1 or k_neurons < 1:
        raise InputError("k_heads and k_neurons must be at least 1.")
    toks = to_tokens(model, prompt)
    if toks.shape[1] < 2:
        raise InputError(f"prompt {prompt!r} is a single token; give at least one token after the first.")
    logits, cache = _run(model, toks)
    tokens = str_tokens(model, toks)
    top_id, top_tokens = _top_tokens(model, logits)
    lens_logprob, first_top1 = _logit_lens(model, cache, top_id)
    direct, pats, head_labels = _chosen_heads(model, toks, cache, top_id, heads, k_heads)
    acts, neuron_labels = _chosen_neurons(model, cache, neurons, k_neurons)

    name = model_name or str(getattr(model.cfg, "model_name", "model"))
    summary = PromptSummary(
        model=name,
        prompt=prompt,
        tokens=tokens,
        top_token=top_tokens[0][0],
        top_prob=top_tokens[0][1],
        top_tokens=top_tokens,
        lens_logprob=[round(float(v), 6) for v in lens_logprob],
        first_top1_layer=first_top1,
        head_direct_logit=[[round(float(v), 6) for v in row] for row in direct],
        heads=head_labels,
        neurons=neuron_labels,
        neuron_last=[round(float(v), 6) for v in acts[-1]],
        settings={
            "k_heads": k_heads,
            "k_neurons": k_neurons,
            "heads_given": heads is not None,
            "neurons_given": neurons is not None,
        },
    )

    bos = getattr(model.tokenizer, "bos_token_id", None)
    r = Report(
        f"What {name} does on one prompt", subtitle="Next-token prediction, attention and MLP neurons",
        meta={"model": name},
    )
    _prediction_section(r, summary, has_bos=bos is not None and int(toks[0, 0]) == int(bos))
    _attention_section(r, summary, direct, pats, heads_given=heads is not None)
    _neurons_section(r, summary, acts)
    r.data(summary.to_dict())
    return r, summary


# ---------------------------------------------------------------------------------------------- measuring
def _run(model, toks):
    """``(logits, cache)`` of one forward pass, caching only what the report reads: the attention patterns, the
    residual stream and the MLP activations of every layer, and what :func:`head_logits` reads (``attn.hook_z``,
    ``ln_final.hook_scale`` and, in models with a norm after attention, its scale)."""
    n_layers = model.cfg.n_layers
    names = {LN_FINAL_SCALE}
    for layer in range(n_layers):
        names |= {hook_name("pattern", layer), hook_name("resid_post", layer), hook_name("post", layer)}
    names |= {hook_name("z", layer) for layer in range(n_layers)}
    names |= {hook_name("ln1_post_scale", layer) for layer in range(n_layers)}
    return model.run_with_cache(toks, names_filter=lambda n: n in names)


def _top_tokens(model, logits) -> tuple[int, list[tuple[str, float]]]:
    """The id of the predicted next token, and the five most likely next tokens with their probabilities."""
    probs = logits[0, -1].float().softmax(-1)
    top_p, top_i = probs.topk(5)
    return int(top_i[0]), list(zip(token_texts(model.tokenizer, top_i.tolist()), top_p.tolist()))


def _logit_lens(model, cache, top_id: int):
    """The log-probability of token ``top_id`` read from the residual stream after each layer at the last
    position (final-norm scale frozen), and the first layer from which it stays top-1 (None if it never does)."""
    n_layers = model.cfg.n_layers
    scale = final_scale(cache, pos=-1)
    resid = torch.stack([cache[hook_name("resid_post", layer)][0, -1] for layer in range(n_layers)])
    lens_logits = to_logits(model, resid, scale[0]).float()
    lens_logprob = lens_logits.log_softmax(-1)[:, top_id]
    is_top = lens_logits.argmax(-1) == top_id
    first_top1 = next((layer for layer in range(n_layers) if bool(is_top[layer:].all())), None)
    return lens_logprob, first_top1


def _chosen_heads(model, toks, cache, top_id: int, heads, k_heads: int):
    """``(direct, patterns, labels)``: every head's direct logit onto ``top_id`` at the last position
    (``[layer, head]``), and the attention patterns and labels of ``heads`` (by default the ``k_heads`` heads with
    the largest direct logit, in layer order)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    direct = head_logits(model, toks, [top_id], cache=cache).values[0, :, :, 0].float()  # [layer, head]
    if heads is None:
        order = direct.flatten().argsort(descending=True)[: min(k_heads, n_layers * n_heads)].tolist()
        head_pairs = sorted((i // n_heads, i % n_heads) for i in order)
    else:
        head_pairs = parse_heads(model, heads)
    pats = torch.stack([cache[hook_name("pattern", layer)][0, h] for layer, h in head_pairs]).float()
    return direct, pats, [head_label(layer, h) for layer, h in head_pairs]


def _chosen_neurons(model, cache, neurons, k_neurons: int):
    """``(acts, labels)``: the activations ``[position, neuron]`` and labels of ``neurons`` (by default the
    ``k_neurons`` neurons with the largest activation at the last position, largest first)."""
    n_layers = model.cfg.n_layers
    acts_last = torch.stack([cache[hook_name("post", layer)][0, -1] for layer in range(n_layers)]).float()
    if neurons is None:
        d_mlp = acts_last.shape[1]
        order = acts_last.flatten().argsort(descending=True)[: min(k_neurons, acts_last.numel())].tolist()
        neuron_pairs = [(i // d_mlp, i % d_mlp) for i in order]
    else:
        neuron_pairs = parse_neurons(model, neurons)
    acts = torch.stack([cache[hook_name("post", layer)][0, :, n] for layer, n in neuron_pairs], -1).float()
    return acts, [f"L{layer}N{n}" for layer, n in neuron_pairs]


# ---------------------------------------------------------------------------------------------- the report
def _prediction_section(r: Report, summary: PromptSummary, *, has_bos: bool) -> None:
    """The prompt, the key numbers, the top five next tokens and the logit lens of the predicted one."""
    top_shown = show_token(summary.top_token)
    r.section("Prediction", text="The prompt, and the token the model puts first after it.")
    r.code(summary.prompt, title="Prompt")
    r.metrics(
        summary.metrics(),
        labels={
            "n_tokens": "tokens in the prompt" + (" (with BOS)" if has_bos else ""),
            "top_token": "predicted next token",
            "top_prob": f"probability of {top_shown!r}",
            "first_top1_layer": "first layer from which it stays top-1 (logit lens)",
            "top_head": f"head writing most toward {top_shown!r}",
        },
    )
    r.table(
        [{"rank": i + 1, "token": show_token(t), "probability": p} for i, (t, p) in enumerate(summary.top_tokens)],
        caption="Top five next tokens",
    )
    r.line_chart(
        list(range(len(summary.lens_logprob))),
        {f"log-prob of {top_shown!r}": summary.lens_logprob},
        title="Where the prediction emerges",
        x_title="layer (residual stream after it)",
        y_title="log-probability",
        caption="Logit lens: each layer's residual stream at the last position read through the unembedding, "
        "with the final norm's scale frozen at its clean value.",
    )


def _attention_section(r: Report, summary: PromptSummary, direct, pats, *, heads_given: bool) -> None:
    """Every head's direct logit onto the prediction, and the attention patterns of the chosen heads."""
    top_shown = show_token(summary.top_token)
    n_layers, n_heads = direct.shape
    r.section(
        "Attention",
        text=f"Which heads write the prediction: each head's output at the last position read through the "
        f"unembedding (its direct logit onto {top_shown!r}). The heads with the largest direct logit are shown "
        "below with their attention patterns: what they read to write it.",
    )
    r.heatmap(
        direct.cpu(), x_labels=[str(h) for h in range(n_heads)], y_labels=[str(layer) for layer in range(n_layers)],
        x_title="head", y_title="layer", title=f"Direct logit of each head onto {top_shown!r}",
        value_label="direct logit", center=0.0,
    )
    r.attention(
        summary.tokens,
        pats.cpu(),
        summary.heads,
        title="Attention patterns of the chosen heads"
        if heads_given
        else "Attention patterns of the heads writing most toward the prediction",
    )


def _neurons_section(r: Report, summary: PromptSummary, acts) -> None:
    """The chosen neurons' activations over the prompt: a heatmap, the pick-one view and the first one's token
    values."""
    tokens, neuron_labels = summary.tokens, summary.neurons
    r.section(
        "Neurons", text="MLP neurons (after the activation function) with the largest activation at the last position."
    )
    # the first token's activations are often outliers (hundreds, where the rest are tens): scale the colours
    # on the other positions so they stay readable; the first cell saturates and its tooltip keeps the value
    rest = acts[1:].cpu()
    lim = float(rest.abs().max()) or 1.0
    first_note = "Colours are scaled on positions 1 onward (position 0 often holds outliers); hover for exact values."
    r.heatmap(
        acts.T.cpu(), x_labels=position_labels(tokens), y_labels=neuron_labels, x_title="position and token",
        y_title="neuron", center=0.0, vmin=-lim, vmax=lim, title="Activation of each chosen neuron at each position",
        caption=first_note, value_label="activation",
    )
    r.neuron_activations(tokens, acts.cpu(), neuron_labels, title="Chosen neurons over the prompt (pick one)")
    lo, hi = float(rest[:, 0].min()), float(rest[:, 0].max())
    r.token_values(
        tokens, acts[:, 0].cpu(), title=f"{neuron_labels[0]} over the prompt",
        value_label=f"{neuron_labels[0]} activation", center=0.0 if lo < 0 else None, vmin=lo,
        vmax=hi if hi > lo else lo + 1.0, marked=[len(tokens) - 1],
        caption="The outlined token is the last position, where the neuron was chosen. " + first_note,
    )
