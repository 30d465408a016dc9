"""Zero, mean and resample ablation of heads, neurons and whole layers; head scaling; single-component sweeps.

    >>> with ablate(model, heads=[(5, 2)], kind="mean", reference=prompts):
    ...     logits = model(tokens)                   # every run inside sees head 5.2 mean-ablated
    >>> with scale_heads(model, {(12, 4): 1.5}):    # multiply the head's output (attn.hook_z) by 1.5
    ...     logits = model(tokens)
    >>> res = head_sweep(model, tokens, metric)      # each head ablated alone; res.values is [layer, head]

A head is always a query head: its output is ``blocks.{l}.attn.hook_z[:, :, h]``, so ablating one query head of
a grouped-query or multi-query model leaves the heads that share its key/value head untouched. A neuron is an
entry of ``blocks.{l}.mlp.hook_post``; a layer is its attention output (``hook_attn_out``), its MLP output
(``hook_mlp_out``) or both.

Kinds of ablation:
    ``"zero"``      replace the activation by zero.
    ``"mean"``      replace it by its mean over the ``reference`` prompts, at each position
                    (``mean_over="prompts"``, the reference must have the run's token length) or over all
                    positions as well (``mean_over="prompts_and_positions"``, any lengths).
    ``"resample"``  replace each prompt's activation by that of another reference prompt at the same position
                    (drawn with ``seed``; when the run has as many prompts as the reference, every prompt takes a
                    *different* prompt's activations, as a random derangement).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from codecircuits.errors import InputError
from codecircuits.core.batching import to_tokens
from codecircuits.core.metrics import Metric, check_output
from _reference.patching import Receiver, SweepResult, _progress, run_cells

KINDS = ("zero", "mean", "resample")
MEAN_OVER = ("prompts", "prompts_and_positions")
LAYER_PARTS = ("attn", "mlp")


# ----------------------------------------------------------------------------------------------------------------
# checked arguments


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InputError(f"Unknown ablation kind {kind!r}: choose one of {', '.join(map(repr, KINDS))}.")
    return kind


def _check_heads(model, heads) -> list[tuple[int, int]]:
    out = []
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    for item in heads or ():
        try:
            layer, head = (int(x) for x in item)
        except (TypeError, ValueError):
            raise InputError(f"A head is a (layer, head) pair of ints; got {item!r}.") from None
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise InputError(
                f"Head ({layer}, {head}) does not exist: the model has {n_layers} layers of {n_heads} query heads."
            )
        out.append((layer, head))
    return out


def _check_neurons(model, neurons) -> dict[int, list[int]]:
    if neurons is None:
        return {}
    if not isinstance(neurons, Mapping):
        raise InputError("neurons must be a mapping {layer: [neuron index, ...]}.")
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    out: dict[int, list[int]] = {}
    for layer, idx in neurons.items():
        layer = int(layer)
        if not 0 <= layer < n_layers:
            raise InputError(f"Layer {layer} does not exist: the model has {n_layers} layers.")
        idx = [int(i) for i in (idx.tolist() if isinstance(idx, torch.Tensor) else idx)]
        bad = [i for i in idx if not 0 <= i < d_mlp]
        if bad:
            raise InputError(f"Neurons {bad[:5]} of layer {layer} do not exist: each MLP layer has {d_mlp} neurons.")
        out.setdefault(layer, []).extend(idx)
    return out


def _check_layers(model, layers) -> list[tuple[int, str]]:
    """Layers as ``(layer, part)`` with part ``"attn"`` or ``"mlp"``; a bare int means both."""
    n_layers = int(model.cfg.n_layers)
    out = []
    for item in layers or ():
        if isinstance(item, (int, torch.Tensor)) and not isinstance(item, bool):
            parts, layer = LAYER_PARTS, int(item)
        else:
            try:
                layer, part = item
                layer, parts = int(layer), (str(part),)
            except (TypeError, ValueError):
                raise InputError(f"A layer is an int or a (layer, 'attn' | 'mlp') pair; got {item!r}.") from None
        if not 0 <= layer < n_layers:
            raise InputError(f"Layer {layer} does not exist: the model has {n_layers} layers.")
        for part in parts:
            if part not in LAYER_PARTS:
                raise InputError(f"Layer part {part!r} is unknown: use 'attn' or 'mlp'.")
            out.append((layer, part))
    return out


def _check_positions(positions, n_pos: int | None = None) -> list[int] | None:
    if positions is None:
        return None
    if isinstance(positions, int):
        positions = [positions]
    pos = [int(p) for p in positions]
    if n_pos is not None:
        bad = [p for p in pos if not -n_pos <= p < n_pos]
        if bad:
            raise InputError(f"Positions {bad} are outside prompts of {n_pos} tokens.")
        pos = [p % n_pos for p in pos]
    return sorted(set(pos))


def _layer_hook(layer: int, part: str) -> str:
    return f"blocks.{layer}.hook_{part}_out"


# ----------------------------------------------------------------------------------------------------------------
# replacement values


@dataclass(frozen=True)
class _Source:
    """Where the replacement for one hook comes from: zero, a mean, or reference activations to resample."""

    kind: str
    acts: torch.Tensor | None = None  # mean: [pos, ...] or [...]; resample: [n_ref, pos, ...]
    per_position: bool = True
    seed: int = 0

    def values(self, act: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """The replacement, broadcastable to ``act`` ``[batch, pos, ...]`` (positions ``offset..``)."""
        if self.kind == "zero":
            return torch.zeros_like(act)
        n = act.shape[1]
        if self.kind == "mean":
            if not self.per_position:
                return self.acts.to(act.dtype).expand_as(act)
            if self.acts.shape[0] != offset + n:
                raise InputError(
                    f"Mean ablation per position needs the reference prompts to have the run's token length: the "
                    f"reference has {self.acts.shape[0]} tokens, the run {offset + n}. Pass reference prompts of the "
                    "same length, or mean_over='prompts_and_positions'."
                )
            return self.acts[offset : offset + n].to(act.dtype).expand_as(act)
        ref = self.acts
        if ref.shape[1] != offset + n:
            raise InputError(
                f"Resample ablation needs reference prompts of the run's token length: the reference has "
                f"{ref.shape[1]} tokens, the run {offset + n}."
            )
        return ref[resample_index(act.shape[0], ref.shape[0], self.seed, act.device), offset : offset + n]


def resample_index(batch: int, n_ref: int, seed: int = 0, device=None) -> torch.Tensor:
    """Which reference prompt each of ``batch`` prompts takes its activations from (deterministic in ``seed``).

    With ``batch == n_ref > 1`` the prompts are taken to be the reference itself and each gets a different one
    (a random derangement); otherwise indices are drawn uniformly.
    """
    g = torch.Generator().manual_seed(int(seed))
    if batch == n_ref and n_ref > 1:
        while True:
            perm = torch.randperm(n_ref, generator=g)
            if not bool((perm == torch.arange(n_ref)).any()):
                break
        idx = perm
    else:
        idx = torch.randint(n_ref, (batch,), generator=g)
    return idx.to(device) if device is not None else idx


def _reference_acts(model, reference, names: Sequence[str]) -> dict[str, torch.Tensor]:
    if reference is None:
        raise InputError("Mean and resample ablation need reference prompts: pass reference=tokens or prompts.")
    toks = to_tokens(model, reference)
    wanted = set(names)
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n in wanted)
    return {n: cache[n] for n in names}


def _sources(model, names: Sequence[str], kind: str, reference, mean_over: str, seed: int) -> dict[str, _Source]:
    _check_kind(kind)
    if mean_over not in MEAN_OVER:
        raise InputError(f"mean_over must be one of {', '.join(map(repr, MEAN_OVER))}; got {mean_over!r}.")
    if kind == "zero":
        return {n: _Source("zero") for n in names}
    acts = _reference_acts(model, reference, names)
    if kind == "mean":
        per_pos = mean_over == "prompts"
        return {n: _Source("mean", a.mean(0) if per_pos else a.mean((0, 1)), per_pos) for n, a in acts.items()}
    return {n: _Source("resample", a, seed=seed) for n, a in acts.items()}


# ----------------------------------------------------------------------------------------------------------------
# hooks and context managers


def ablation_hooks(
    model,
    heads: Iterable[tuple[int, int]] | None = None,
    neurons: Mapping[int, Sequence[int]] | None = None,
    layers: Iterable | None = None,
    *,
    kind: str = "zero",
    reference=None,
    positions: Sequence[int] | int | None = None,
    mean_over: str = "prompts",
    seed: int = 0,
) -> list[tuple[str, Callable]]:
    """The forward hooks that apply the ablations (for ``run_with_hooks`` or ``model.hooks``)."""
    heads_ = _check_heads(model, heads)
    neurons_ = _check_neurons(model, neurons)
    layers_ = _check_layers(model, layers)
    pos = _check_positions(positions)
    by_hook: dict[str, tuple[str, list[int]]] = {}
    for layer, head in heads_:
        by_hook.setdefault(f"blocks.{layer}.attn.hook_z", ("head", []))[1].append(head)
    for layer, idx in neurons_.items():
        by_hook.setdefault(f"blocks.{layer}.mlp.hook_post", ("neuron", []))[1].extend(idx)
    for layer, part in layers_:
        by_hook.setdefault(_layer_hook(layer, part), ("layer", []))
    if not by_hook:
        return []
    sources = _sources(model, list(by_hook), kind, reference, mean_over, seed)

    def make(name: str, what: str, idx: list[int]):
        src = sources[name]
        index = torch.tensor(sorted(set(idx)), dtype=torch.long)

        def hook(act, hook=None):
            new = src.values(act)
            p = slice(None) if pos is None else [q for q in pos if q < act.shape[1]]
            if what == "layer":
                act[:, p] = new[:, p]
            else:
                i = index.to(act.device)
                sel = act[:, p].index_copy(2, i, new[:, p].index_select(2, i))
                act[:, p] = sel
            return act

        return hook

    return [(name, make(name, what, idx)) for name, (what, idx) in by_hook.items()]


@contextmanager
def ablate(
    model,
    heads: Iterable[tuple[int, int]] | None = None,
    neurons: Mapping[int, Sequence[int]] | None = None,
    layers: Iterable | None = None,
    *,
    kind: str = "zero",
    reference=None,
    positions: Sequence[int] | int | None = None,
    mean_over: str = "prompts",
    seed: int = 0,
):
    """Apply ablations to every forward run inside the ``with`` block.

    Args:
        heads: ``[(layer, head), ...]`` query heads whose output (``attn.hook_z``) is ablated.
        neurons: ``{layer: [neuron, ...]}`` entries of ``mlp.hook_post`` to ablate.
        layers: ints (attention and MLP output of the layer) or ``(layer, "attn" | "mlp")`` pairs.
        kind: ``"zero"``, ``"mean"`` or ``"resample"`` (see the module docstring).
        reference: prompts or tokens for mean and resample ablation.
        positions: ablate only these positions (default: all).
        mean_over: ``"prompts"`` (a mean per position) or ``"prompts_and_positions"``.
        seed: for resample ablation.
    """
    hooks = ablation_hooks(
        model,
        heads,
        neurons,
        layers,
        kind=kind,
        reference=reference,
        positions=positions,
        mean_over=mean_over,
        seed=seed,
    )
    with model.hooks(fwd_hooks=hooks):
        yield model


def scale_hooks(
    model, factors: Mapping[tuple[int, int], float], *, positions: Sequence[int] | int | None = None
) -> list[tuple[str, Callable]]:
    """Hooks that multiply the output (``attn.hook_z``) of each ``(layer, head)`` by its factor."""
    heads = _check_heads(model, list(factors))
    pos = _check_positions(positions)
    by_layer: dict[int, dict[int, float]] = {}
    for (layer, head), f in zip(heads, factors.values()):
        by_layer.setdefault(layer, {})[head] = float(f)

    def make(scales: dict[int, float]):
        vec = torch.ones(int(model.cfg.n_heads))
        for h, f in scales.items():
            vec[h] = f

        def hook(z, hook=None):
            v = vec.to(z.device, z.dtype)[:, None]
            if pos is None:
                return z * v
            p = [q for q in pos if q < z.shape[1]]
            z[:, p] = z[:, p] * v
            return z

        return hook

    return [(f"blocks.{layer}.attn.hook_z", make(s)) for layer, s in by_layer.items()]


@contextmanager
def scale_heads(model, factors: Mapping[tuple[int, int], float], *, positions: Sequence[int] | int | None = None):
    """Multiply the output of heads by factors inside the ``with`` block: ``{(layer, head): factor}``.

    A factor of 0 is zero ablation; factors above 1 amplify a head (as in the parenthesis study).
    """
    with model.hooks(fwd_hooks=scale_hooks(model, factors, positions=positions)):
        yield model


# ----------------------------------------------------------------------------------------------------------------
# single-component sweeps


def _component_sweep(
    model,
    tokens,
    metric: Metric,
    *,
    hook_of_layer: Callable[[int], str],
    n_cells: int,
    what: str,
    layers: Sequence[int],
    cells: Sequence[int] | None,
    kind: str,
    reference,
    positions,
    mean_over: str,
    seed: int,
    memory_budget,
    progress: bool,
    desc: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    toks = to_tokens(model, tokens)
    n_pos = toks.shape[1]
    pos = _check_positions(positions, n_pos)
    start = 0 if pos is None else min(pos)
    names = [hook_of_layer(layer) for layer in layers]
    if kind != "zero" and reference is None:
        reference = toks  # the run's own prompts: mean over them, or resample among them
    sources = _sources(model, names, kind, reference, mean_over, seed)
    receiver = Receiver(model, toks, metric=metric)
    base = check_output(metric(receiver.logits), toks.shape[0]).detach()
    cell_idx = torch.arange(n_cells) if cells is None else torch.as_tensor(list(cells), dtype=torch.long)
    if len(cell_idx) and (cell_idx.min() < 0 or cell_idx.max() >= n_cells):
        raise InputError(f"{what} indices must lie in [0, {n_cells}); got {cell_idx.tolist()[:10]}.")
    cell_idx = cell_idx.to(toks.device)
    pos_mask = torch.zeros(n_pos, dtype=torch.bool, device=toks.device)
    pos_mask[pos if pos is not None else slice(None)] = True
    out = torch.empty(len(layers), len(cell_idx), toks.shape[0], device=toks.device)
    with _progress(len(layers) * len(cell_idx), desc, progress) as bar:
        for li, layer in enumerate(layers):
            src = sources[names[li]]

            def make_hooks(cell_of_row, ex_of_row, src=src, name=names[li]):
                comp = cell_idx[cell_of_row]  # the component each row ablates

                def hook(act, hook=None):
                    # act: [rows, pos - start, n_cells(, d)]
                    if src.kind == "resample":
                        ridx = resample_index(receiver.n_examples, src.acts.shape[0], src.seed, act.device)
                        new = src.acts[ridx][ex_of_row, start:]
                    elif src.kind == "mean":
                        new = (src.acts[start:] if src.per_position else src.acts).to(act.dtype).expand_as(act)
                    else:
                        new = torch.zeros_like(act)
                    onehot = torch.nn.functional.one_hot(comp, n_cells).bool()  # [rows, n_cells]
                    m = onehot[:, None, :] & pos_mask[start:][None, :, None]
                    if act.dim() == 4:
                        m = m[..., None]
                    return torch.where(m, new, act)

                return [(name, hook)]

            out[li] = run_cells(
                receiver, metric, layer, start, len(cell_idx), make_hooks, memory_budget=memory_budget, pbar=bar
            )
    return out, base, cell_idx.cpu()


def _ablation_result(per_example, base, axes, labels, site, kind) -> SweepResult:
    return SweepResult(per_example=per_example, axes=axes, base=base, labels=labels, site=site, method=f"ablate {kind}")


def head_sweep(
    model,
    tokens,
    metric: Metric,
    *,
    kind: str = "zero",
    reference=None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    positions: Sequence[int] | int | None = None,
    mean_over: str = "prompts",
    seed: int = 0,
    memory_budget=None,
    progress: bool = True,
) -> SweepResult:
    """Ablate each query head alone and record ``metric``: ``res.values`` is ``[layer, head]``.

    The heads of a layer run together along the batch dimension, from that layer on (earlier layers are
    not recomputed), and from the first ablated position on. ``reference`` defaults to ``tokens`` for mean
    and resample ablation.

    ``metric`` follows TransformerLens's contract (:mod:`codecircuits.metrics`): logits ``[batch, pos, vocab]``
    of the prompts in order -> one value per prompt. Several heads' runs are stacked along the batch, but a
    plain metric is called on each head's rows alone; one declared :func:`~codecircuits.metrics.rowwise` is
    called once per stack. ``res.per_example`` keeps each prompt's value.
    """
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    _check_heads(model, [(layer, 0) for layer in layers])
    per, base, idx = _component_sweep(
        model,
        tokens,
        metric,
        hook_of_layer=lambda layer: f"blocks.{layer}.attn.hook_z",
        n_cells=int(model.cfg.n_heads),
        what="Head",
        layers=layers,
        cells=heads,
        kind=kind,
        reference=reference,
        positions=positions,
        mean_over=mean_over,
        seed=seed,
        memory_budget=memory_budget,
        progress=progress,
        desc="head ablation",
    )
    return _ablation_result(per, base, ("layer", "head"), {"layer": layers, "head": idx.tolist()}, "z", kind)


def neuron_sweep(
    model,
    tokens,
    metric: Metric,
    *,
    kind: str = "zero",
    reference=None,
    layers: Sequence[int] | None = None,
    neurons: Sequence[int] | None = None,
    positions: Sequence[int] | int | None = None,
    mean_over: str = "prompts",
    seed: int = 0,
    memory_budget=None,
    progress: bool = True,
) -> SweepResult:
    """Ablate each MLP neuron (``mlp.hook_post``) alone: ``res.values`` is ``[layer, neuron]``.

    ``neurons`` picks a subset of neuron indices (the same in every layer); default all ``d_mlp``.
    """
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    _check_layers(model, [(layer, "mlp") for layer in layers])
    per, base, idx = _component_sweep(
        model,
        tokens,
        metric,
        hook_of_layer=lambda layer: f"blocks.{layer}.mlp.hook_post",
        n_cells=int(model.cfg.d_mlp),
        what="Neuron",
        layers=layers,
        cells=neurons,
        kind=kind,
        reference=reference,
        positions=positions,
        mean_over=mean_over,
        seed=seed,
        memory_budget=memory_budget,
        progress=progress,
        desc="neuron ablation",
    )
    return _ablation_result(per, base, ("layer", "neuron"), {"layer": layers, "neuron": idx.tolist()}, "post", kind)


def layer_sweep(
    model,
    tokens,
    metric: Metric,
    *,
    kind: str = "zero",
    reference=None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | int | None = None,
    mean_over: str = "prompts",
    seed: int = 0,
    memory_budget=None,
    progress: bool = True,
) -> SweepResult:
    """Ablate each layer's attention output and MLP output alone: ``res.values`` is ``[layer, part]``
    with parts ``("attn", "mlp")``."""
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    _check_layers(model, layers)
    toks = to_tokens(model, tokens)
    n_pos = toks.shape[1]
    pos = _check_positions(positions, n_pos)
    start = 0 if pos is None else min(pos)
    names = [_layer_hook(layer, part) for layer in layers for part in LAYER_PARTS]
    if kind != "zero" and reference is None:
        reference = toks
    sources = _sources(model, names, kind, reference, mean_over, seed)
    receiver = Receiver(model, toks, metric=metric)
    base = check_output(metric(receiver.logits), toks.shape[0]).detach()
    pos_mask = torch.zeros(n_pos, dtype=torch.bool, device=toks.device)
    pos_mask[pos if pos is not None else slice(None)] = True
    out = torch.empty(len(layers), len(LAYER_PARTS), toks.shape[0], device=toks.device)
    with _progress(len(layers) * len(LAYER_PARTS), "layer ablation", progress) as bar:
        for li, layer in enumerate(layers):
            part_names = [_layer_hook(layer, part) for part in LAYER_PARTS]

            def make_hooks(cell_of_row, ex_of_row, part_names=part_names):
                hooks = []
                for ci, name in enumerate(part_names):
                    src = sources[name]
                    rows = cell_of_row == ci

                    def hook(act, hook=None, src=src, rows=rows):
                        if src.kind == "resample":
                            ridx = resample_index(receiver.n_examples, src.acts.shape[0], src.seed, act.device)
                            new = src.acts[ridx][ex_of_row, start:]
                        elif src.kind == "mean":
                            new = (src.acts[start:] if src.per_position else src.acts).to(act.dtype).expand_as(act)
                        else:
                            new = torch.zeros_like(act)
                        m = rows[:, None, None] & pos_mask[start:][None, :, None]
                        return torch.where(m, new, act)

                    hooks.append((name, hook))
                return hooks

            out[li] = run_cells(
                receiver, metric, layer, start, len(LAYER_PARTS), make_hooks, memory_budget=memory_budget, pbar=bar
            )
    return _ablation_result(out, base, ("layer", "part"), {"layer": layers, "part": list(LAYER_PARTS)}, "out", kind)


__all__ = [
    "KINDS",
    "ablate",
    "ablation_hooks",
    "head_sweep",
    "layer_sweep",
    "neuron_sweep",
    "resample_index",
    "scale_heads",
    "scale_hooks",
]
