"""Where an intervention acts: heads, neurons, layers and hook sites, with their hook names and labels.

Every hook name of a block is built here, from one table of site kinds, so that a site has one name and one
label everywhere::

    >>> Head(3, 7).hook, str(Head(3, 7))
    ('blocks.3.attn.hook_z', 'L3H7')
    >>> Neuron(5, 12).hook, str(Neuron(5, 12))
    ('blocks.5.mlp.hook_post', 'L5N12')
    >>> Layer(2, "mlp").hook
    'blocks.2.hook_mlp_out'
    >>> Site("resid_pre", 4).hook
    'blocks.4.hook_resid_pre'

A head is always a query head: ``attn.hook_z[:, :, h]``, so one query head of a grouped- or multi-query model is
one site; the key/value slot it reads is ``kv_head_of(model)[h]`` (:mod:`codecircuits.models.summary`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InputError

#: hooks outside the blocks
HOOK_EMBED = "hook_embed"
LN_FINAL_IN = "ln_final.hook_in"
LN_FINAL_SCALE = "ln_final.hook_scale"
UNEMBED_IN = "unembed.hook_in"


@dataclass(frozen=True)
class SiteKind:
    """One kind of hook site of a block.

    Attributes:
        name: ``"resid_pre"``, ``"z"``, ``"post"``, ...
        suffix: the hook name within ``blocks.{layer}.``.
        layout: the activation's layout: ``"vec"`` ``[batch, pos, d]``, ``"head"`` ``[batch, pos, head, d]``,
            ``"kv"`` ``[batch, pos, kv_head, d]``, ``"neuron"`` ``[batch, pos, d_mlp]``, ``"pattern"``
            ``[batch, head, dest, src]``, ``"scale"`` ``[batch, pos, 1]`` (a norm's scale).
        default_by: the axes a sweep of this site has by default.
        allowed_by: every set of axes a sweep of this site may have.
        sweepable: whether patching sweeps may intervene here.
    """

    name: str
    suffix: str
    layout: str
    default_by: tuple[str, ...]
    allowed_by: tuple[tuple[str, ...], ...]
    sweepable: bool = True

    def hook(self, layer: int) -> str:
        return f"blocks.{int(layer)}.{self.suffix}"


_VEC = (("layer", "pos"), ("layer",))
_HEAD = (("layer", "head"), ("layer", "pos", "head"))
_KV = (("layer", "head"), ("layer", "pos", "head"), ("layer", "kv_head"), ("layer", "pos", "kv_head"))

SITE_KINDS: dict[str, SiteKind] = {
    k.name: k
    for k in (
        SiteKind("resid_pre", "hook_resid_pre", "vec", ("layer", "pos"), _VEC),
        SiteKind("resid_mid", "hook_resid_mid", "vec", ("layer", "pos"), _VEC),
        SiteKind("resid_post", "hook_resid_post", "vec", ("layer", "pos"), _VEC),
        SiteKind("attn_out", "hook_attn_out", "vec", ("layer", "pos"), _VEC),
        SiteKind("mlp_out", "hook_mlp_out", "vec", ("layer", "pos"), _VEC),
        SiteKind("z", "attn.hook_z", "head", ("layer", "head"), _HEAD),
        SiteKind("q", "attn.hook_q", "head", ("layer", "head"), _HEAD),
        SiteKind("k", "attn.hook_k", "kv", ("layer", "head"), _KV),
        SiteKind("v", "attn.hook_v", "kv", ("layer", "head"), _KV),
        SiteKind("pattern", "attn.hook_pattern", "pattern", ("layer", "head"),
                 (("layer", "head"), ("layer", "head", "dest_pos"))),
        SiteKind("attn_scores", "attn.hook_attn_scores", "pattern", ("layer", "head"), (("layer", "head"),), False),
        SiteKind("ln1_post_scale", "ln1_post.hook_scale", "scale", ("layer",), (("layer",),), False),
        SiteKind("post", "mlp.hook_post", "neuron", ("layer", "neuron"), (("layer", "neuron"),)),
        SiteKind("pre", "mlp.hook_pre", "neuron", ("layer", "neuron"), (("layer", "neuron"),)),
    )
}
SITE_ALIASES = {"head_out": "z", "neurons": "post", "mlp_post": "post", "mlp_pre": "pre"}


def site_kind(name: str, *, sweep: bool = False) -> SiteKind:
    """The kind called ``name`` (or one of its aliases); an error listing the kinds otherwise. ``sweep``: only
    the kinds a patching sweep may intervene on."""
    key = SITE_ALIASES.get(name, name)
    kinds = [k for k, v in SITE_KINDS.items() if v.sweepable or not sweep]
    if key not in kinds:
        what = "patching site" if sweep else "site"
        raise InputError(
            f"Unknown {what} {name!r}: choose one of {', '.join(kinds)} (aliases: {', '.join(SITE_ALIASES)})."
        )
    return SITE_KINDS[key]


def hook_name(kind: str, layer: int) -> str:
    """``blocks.{layer}.{suffix}`` of the site kind ``kind``: ``hook_name("z", 3) == "blocks.3.attn.hook_z"``."""
    return site_kind(kind).hook(layer)


def layer_of_hook(name: str) -> int | None:
    """The block index of a hook name (``None`` for hooks outside the blocks)."""
    m = re.match(r"blocks\.(\d+)\.", name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Site:
    """A hook site of one layer: ``Site("resid_pre", 4).hook == "blocks.4.hook_resid_pre"``."""

    kind: str
    layer: int

    def __post_init__(self):
        object.__setattr__(self, "kind", site_kind(self.kind).name)
        object.__setattr__(self, "layer", int(self.layer))

    @property
    def hook(self) -> str:
        return hook_name(self.kind, self.layer)

    def __str__(self) -> str:
        return f"L{self.layer}.{self.kind}"


@dataclass(frozen=True, order=True)
class Head:
    """A query head: ``attn.hook_z[:, :, head]`` of ``layer``; ``str()`` is ``L{layer}H{head}``."""

    layer: int
    head: int

    def __post_init__(self):
        object.__setattr__(self, "layer", int(self.layer))
        object.__setattr__(self, "head", int(self.head))

    @property
    def hook(self) -> str:
        return hook_name("z", self.layer)

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    def __iter__(self):  # unpacks as (layer, head), like the pairs it replaces
        return iter((self.layer, self.head))

    @classmethod
    def parse(cls, label) -> Head:
        """A head from ``"L3H7"``, ``"3.7"``, ``"3_7"``, a ``(layer, head)`` pair or a :class:`Head`."""
        if isinstance(label, Head):
            return label
        if isinstance(label, str):
            m = re.fullmatch(r"\s*(?:L(\d+)H(\d+)|(\d+)[._:](\d+))\s*", label)
            if not m:
                raise InputError(f"Cannot read the head {label!r}: write it as L3H7 (layer 3, query head 7).")
            a, b = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
            return cls(int(a), int(b))
        try:
            layer, head = label
            return cls(int(layer), int(head))
        except (TypeError, ValueError):
            raise InputError(f"A head is a (layer, head) pair of ints or a label like L3H7; got {label!r}.") from None

    def check(self, model) -> Head:
        n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
        if not (0 <= self.layer < n_layers and 0 <= self.head < n_heads):
            raise InputError(
                f"Head ({self.layer}, {self.head}) does not exist: the model has {n_layers} layers of {n_heads} "
                "query heads."
            )
        return self


@dataclass(frozen=True, order=True)
class Neuron:
    """An MLP neuron: ``mlp.hook_post[:, :, index]`` of ``layer``; ``str()`` is ``L{layer}N{index}``."""

    layer: int
    index: int

    def __post_init__(self):
        object.__setattr__(self, "layer", int(self.layer))
        object.__setattr__(self, "index", int(self.index))

    @property
    def hook(self) -> str:
        return hook_name("post", self.layer)

    def __str__(self) -> str:
        return f"L{self.layer}N{self.index}"

    def __iter__(self):
        return iter((self.layer, self.index))

    def check(self, model) -> Neuron:
        n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
        if not 0 <= self.layer < n_layers:
            raise InputError(f"Layer {self.layer} does not exist: the model has {n_layers} layers.")
        if not 0 <= self.index < d_mlp:
            raise InputError(
                f"Neuron {self.index} of layer {self.layer} does not exist: each MLP layer has {d_mlp} neurons."
            )
        return self


LAYER_PARTS = ("attn", "mlp")


@dataclass(frozen=True, order=True)
class Layer:
    """A layer's attention output (``part="attn"``, ``hook_attn_out``) or MLP output (``"mlp"``, ``hook_mlp_out``)."""

    layer: int
    part: str

    def __post_init__(self):
        object.__setattr__(self, "layer", int(self.layer))
        if self.part not in LAYER_PARTS:
            raise InputError(f"Layer part {self.part!r} is unknown: use 'attn' or 'mlp'.")

    @property
    def hook(self) -> str:
        return hook_name(f"{self.part}_out", self.layer)

    def __str__(self) -> str:
        return f"L{self.layer}.{self.part}"

    def check(self, model) -> Layer:
        n_layers = int(model.cfg.n_layers)
        if not 0 <= self.layer < n_layers:
            raise InputError(f"Layer {self.layer} does not exist: the model has {n_layers} layers.")
        return self


def head_label(layer: int, head: int) -> str:
    """The one label of a query head: ``L3H7``."""
    return str(Head(layer, head))


def check_heads(model, heads) -> list[Head]:
    """Heads (pairs, labels or :class:`Head`) checked against the model."""
    return [Head.parse(h).check(model) for h in heads or ()]


def resid_pre(layer: int) -> str:
    """``blocks.{layer}.hook_resid_pre``: the residual stream entering ``layer``."""
    return hook_name("resid_pre", layer)


__all__ = [
    "HOOK_EMBED",
    "LAYER_PARTS",
    "LN_FINAL_IN",
    "LN_FINAL_SCALE",
    "SITE_ALIASES",
    "SITE_KINDS",
    "UNEMBED_IN",
    "Head",
    "Layer",
    "Neuron",
    "Site",
    "SiteKind",
    "check_heads",
    "head_label",
    "hook_name",
    "layer_of_hook",
    "resid_pre",
    "site_kind",
]
