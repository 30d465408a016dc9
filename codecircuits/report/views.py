"""Single report pieces that display inline and offline in a notebook, and helpers that read attention
patterns and neuron activations from a model for them.

>>> from codecircuits.report import views
>>> toks, pats, labels = views.head_patterns(model, "print(str(len(x)))", heads=["L3H2", (5, 0)])
>>> views.attention_view(toks, pats, labels)          # displays in Jupyter / VS Code / Colab, no network

A :class:`View` has ``_repr_html_`` (the piece with its styles and scripts inlined, circuitsvis from its
bundled JavaScript) and ``save(path)`` (a one-piece report page).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.batching import to_tokens
from ..core.inputs import token_texts
from ..core.sites import head_label, hook_name
from ..errors import InputError
from . import elements as el
from .builder import Report, asset, page_scripts


@dataclass(frozen=True)
class View:
    """One report piece, shown inline in a notebook; ``save()`` writes it as a page of its own."""

    title: str
    fragment: el.Fragment

    def _repr_html_(self) -> str:
        root = f"cc-{uuid.uuid4().hex[:10]}"
        return (
            f'<style>{asset("report.css")}</style><div class="ccr" id="{root}">{self.fragment.html}</div>'
            f"{page_scripts(self.fragment.needs_circuitsvis)}"
        )

    def to_report(self) -> Report:
        r = Report(self.title)
        r.add(self.fragment)
        return r

    def save(self, path: str | Path) -> Path:
        return self.to_report().save(path)


def attention_view(tokens, patterns, head_labels=None, *, title: str = "Attention patterns", **kwargs) -> View:
    """Attention patterns ``[n_heads, query, key]`` over ``tokens`` (circuitsvis AttentionHeads, offline)."""
    return View(title, el.attention(tokens, patterns, head_labels=head_labels, title=title, **kwargs))


def neuron_view(tokens, activations, neuron_labels=None, *, title: str = "Neuron activations", **kwargs) -> View:
    """Activations ``[pos, neuron]`` over the tokens, with a neuron picker (circuitsvis, offline)."""
    return View(title, el.neuron_activations(tokens, activations, neuron_labels=neuron_labels, title=title, **kwargs))


def token_view(tokens, values, *, title: str = "Values per token", **kwargs) -> View:
    """Code token by token, coloured by one value per token."""
    return View(title, el.token_values(tokens, values, title=title, **kwargs))


def heatmap_view(values, x_labels=None, y_labels=None, *, title: str = "Heatmap", **kwargs) -> View:
    """A heatmap with labelled axes."""
    return View(title, el.heatmap(values, x_labels=x_labels, y_labels=y_labels, title=title, **kwargs))


# ------------------------------------------------------------------------------------- reading from a model

_HEAD_RE = re.compile(r"^\s*L(\d+)\s*H(\d+)\s*$", re.IGNORECASE)
_NEURON_RE = re.compile(r"^\s*L(\d+)\s*N(\d+)\s*$", re.IGNORECASE)


def _parse_pairs(items, pattern: re.Pattern, what: str, example: str) -> list[tuple[int, int]]:
    out = []
    for item in items:
        if isinstance(item, str):
            m = pattern.match(item)
            if not m:
                raise InputError(
                    f"{what} {item!r} is not understood: write it as {example!r} or a (layer, index) pair."
                )
            out.append((int(m.group(1)), int(m.group(2))))
        else:
            try:
                layer, idx = item
                out.append((int(layer), int(idx)))
            except (TypeError, ValueError):
                raise InputError(
                    f"{what} {item!r} is not understood: write it as {example!r} or a (layer, index) pair."
                ) from None
    if not out:
        raise InputError(f"no {what}s given.")
    return out


def parse_heads(model, heads) -> list[tuple[int, int]]:
    """``["L3H2", (5, 0)]`` (or ``"L3H2,L5H0"``) as checked ``(layer, head)`` pairs; ``None``: every head of layer 0."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if heads is None:
        heads = [(0, h) for h in range(n_heads)]
    elif isinstance(heads, str):
        heads = [h for h in heads.split(",") if h.strip()]
    pairs = _parse_pairs(heads, _HEAD_RE, "head", "L3H2")
    for layer, head in pairs:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise InputError(
                f"head L{layer}H{head} does not exist: the model has layers 0..{n_layers - 1} and query heads "
                f"0..{n_heads - 1} per layer."
            )
    return pairs


def parse_neurons(model, neurons) -> list[tuple[int, int]]:
    """``["L3N17", (5, 100)]`` (or ``"L3N17,L5N100"``) as checked ``(layer, neuron)`` pairs."""
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    if isinstance(neurons, str):
        neurons = [n for n in neurons.split(",") if n.strip()]
    pairs = _parse_pairs(neurons, _NEURON_RE, "neuron", "L3N17")
    for layer, n in pairs:
        if not (0 <= layer < n_layers and 0 <= n < d_mlp):
            raise InputError(
                f"neuron L{layer}N{n} does not exist: the model has layers 0..{n_layers - 1} and neurons 0..{d_mlp - 1}."
            )
    return pairs


def str_tokens(model, tokens: torch.Tensor) -> list[str]:
    """The text of each token of a ``[pos]`` or ``[1, pos]`` tensor, as the model's tokenizer decodes it."""
    return token_texts(model.tokenizer, tokens.reshape(-1).tolist())


@torch.no_grad()
def head_patterns(model, prompt: str, heads=None) -> tuple[list[str], torch.Tensor, list[str]]:
    """``(tokens, patterns[n_heads, query, key], labels)`` of the chosen query heads on one prompt.

    ``heads`` are ``(layer, head)`` pairs or ``"L3H2"`` strings (default: every head of layer 0).
    """
    pairs = parse_heads(model, heads)
    toks = to_tokens(model, prompt)
    if toks.shape[0] != 1:
        raise InputError("head_patterns takes one prompt.")
    layers = sorted({layer for layer, _ in pairs})
    names = {hook_name("pattern", layer) for layer in layers}
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n in names)
    pats = torch.stack([cache[hook_name("pattern", layer)][0, h] for layer, h in pairs]).float().cpu()
    return str_tokens(model, toks), pats, [head_label(layer, h) for layer, h in pairs]


@torch.no_grad()
def neuron_acts(model, code: str, neurons) -> tuple[list[str], torch.Tensor, list[str]]:
    """``(tokens, activations[pos, n_neurons], labels)``: the chosen MLP neurons (``mlp.hook_post``) over ``code``."""
    pairs = parse_neurons(model, neurons)
    toks = to_tokens(model, code)
    names = {hook_name("post", layer) for layer, _ in pairs}
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n in names)
    acts = torch.stack([cache[hook_name("post", layer)][0, :, n] for layer, n in pairs], dim=-1).float().cpu()
    return str_tokens(model, toks), acts, [f"L{layer}N{n}" for layer, n in pairs]


def attention_of(model, prompts: str | Sequence[str], heads: Sequence | str | None = None, **kwargs) -> View:
    """A notebook view of the chosen heads' attention on one prompt, or one view per prompt for a list."""
    if isinstance(prompts, str):
        toks, pats, labels = head_patterns(model, prompts, heads)
        return attention_view(toks, pats, labels, **kwargs)
    prompts = list(prompts)
    if not prompts:
        raise InputError("attention_of got an empty list of prompts.")
    parts = []
    for p in prompts:
        toks, pats, labels = head_patterns(model, p, heads)
        parts.append(el.attention(toks, pats, head_labels=labels, title=repr(p), **kwargs))
    frag = el.Fragment("".join(f.html for f in parts), needs_circuitsvis=True)
    return View(f"Attention of {len(prompts)} prompts", frag)


def neurons_of(model, code: str, neurons, **kwargs) -> View:
    """A notebook view of the chosen neurons' activations over ``code``."""
    toks, acts, labels = neuron_acts(model, code, neurons)
    return neuron_view(toks, acts, labels, **kwargs)
