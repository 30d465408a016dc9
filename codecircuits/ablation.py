"""Zero, mean and resample ablation of heads, neurons and whole layers; head scaling; single-component sweeps.

    >>> with ablate(model, heads=[(5, 2)], kind="mean", reference=prompts):
    ...     logits = model(tokens)                   # every run inside sees head 5.2 mean-ablated
    >>> with scale_heads(model, {(12, 4): 1.5}):    # multiply the head's output (attn.hook_z) by 1.5
    ...     logits = model(tokens)
    >>> res = head_sweep(model, tokens, metric)      # each head ablated alone; res.values is [layer, head]
    >>> res = head_sweep(model, tokens, label_metrics(labels))  # {"logprob": SweepResult, "correct": SweepResult}

This module is the one route to zero or mean-ablate heads: :func:`ablate` (or :func:`ablation_hooks`) for given
heads, :func:`head_sweep` for each head alone, with one metric or several named ones (:func:`label_metrics`).

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

import torch

from .core.batching import progress_bar, to_tokens
from .core.interventions import (
    Intervention,
    Mean,
    Resample,
    Scale,
    Zero,
    hook,
    position_mask,
    resample_index,
    unit_mask,
)
from .core.metrics import Metrics, evaluate, rowwise
from .core.runner import Receiver, run_cells
from .core.sites import LAYER_PARTS, Layer, check_heads, hook_name
from .errors import InputError
from .patching import SweepResult

KINDS = ("zero", "mean", "resample")
MEAN_OVER = ("prompts", "prompts_and_positions")
# kinds whose per-prompt values do not depend on which other prompts run beside them (mean ablation takes its
# reference explicitly), so a sweep over a shard of the prompts gives those prompts' values; resample ablation
# draws the reference prompt of every prompt for the whole run at once (a derangement of all the prompts)
SHARDABLE_KINDS = ("zero", "mean")


# ----------------------------------------------------------------------------------------------------------------
# named metrics and checked arguments


def label_metrics(labels: torch.Tensor, pos: int = -1) -> dict:
    """The two named metrics of a labelled task at position ``pos``: ``{"logprob": log p(label), "correct": 1.0
    where the top-1 token is the label}``, one value per prompt. Row-wise (:func:`~codecircuits.core.metrics.rowwise`):
    row ``r`` scores the label of prompt ``examples[r]``, so a sweep calls each once per stack of cells."""

    def logprob(logits, examples):
        lg = logits[:, pos].float()
        return torch.log_softmax(lg, -1).gather(1, labels[examples][:, None])[:, 0]

    def correct(logits, examples):
        return (logits[:, pos].float().argmax(-1) == labels[examples]).float()

    return {"logprob": rowwise(logprob), "correct": rowwise(correct)}


def check_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`KINDS`, else a clear error."""
    if kind not in KINDS:
        raise InputError(f"Unknown ablation kind {kind!r}: choose one of {', '.join(map(repr, KINDS))}.")
    return kind


def _check_heads(model, heads) -> list[tuple[int, int]]:
    return [(h.layer, h.head) for h in check_heads(model, heads)]


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
    return Layer(layer, part).hook


# ----------------------------------------------------------------------------------------------------------------
# replacement values


def _reference_acts(model, reference, names: Sequence[str]) -> dict[str, torch.Tensor]:
    if reference is None:
        raise InputError("Mean and resample ablation need reference prompts: pass reference=tokens or prompts.")
    toks = to_tokens(model, reference)
    wanted = set(names)
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n in wanted)
    return {n: cache[n] for n in names}


def _sources(model, names: Sequence[str], kind: str, reference, mean_over: str, seed: int, n_examples=None):
    """The intervention that writes each hook's replacement: zero, a mean, or reference activations to resample
    (``n_examples``: the prompts of the run, when its rows are several cells' copies of them)."""
    check_kind(kind)
    if mean_over not in MEAN_OVER:
        raise InputError(f"mean_over must be one of {', '.join(map(repr, MEAN_OVER))}; got {mean_over!r}.")
    if kind == "zero":
        return {n: Zero() for n in names}
    acts = _reference_acts(model, reference, names)
    if kind == "mean":
        per_pos = mean_over == "prompts"
        return {n: Mean(a.mean(0) if per_pos else a.mean((0, 1)), per_pos) for n, a in acts.items()}
    return {n: Resample(a, seed=seed, n_examples=n_examples) for n, a in acts.items()}


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
        by_hook.setdefault(hook_name("z", layer), ("head", []))[1].append(head)
    for layer, idx in neurons_.items():
        by_hook.setdefault(hook_name("post", layer), ("neuron", []))[1].extend(idx)
    for layer, part in layers_:
        by_hook.setdefault(_layer_hook(layer, part), ("layer", []))
    if not by_hook:
        return []
    sources = _sources(model, list(by_hook), kind, reference, mean_over, seed)
    return [_masked_hook(name, sources[name], what, idx, pos) for name, (what, idx) in by_hook.items()]


def _masked_hook(name: str, intervention: Intervention, what: str, units: list[int], positions):
    """A hook applying ``intervention`` at ``positions`` (all when ``None``) to the ``units`` (heads or neurons,
    axis 2) of the activation, or to all of it (``what == "layer"``)."""

    def mask(act):
        if what == "layer":
            return position_mask(act.shape[1], positions, act.device).view(1, -1, *([1] * (act.dim() - 2)))
        return unit_mask(act.shape[1], positions, units, act.shape[2], with_d=act.dim() == 4, device=act.device)

    return hook(name, intervention, mask)


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
    hooks = ablation_hooks(model, heads, neurons, layers, kind=kind, reference=reference, positions=positions,
                           mean_over=mean_over, seed=seed)
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

    out = []
    for layer, scales in by_layer.items():
        vec = torch.ones(int(model.cfg.n_heads))
        for h, f in scales.items():
            vec[h] = f
        out.append(_masked_hook(hook_name("z", layer), Scale(vec), "layer", [], pos))
    return out


@contextmanager
def scale_heads(model, factors: Mapping[tuple[int, int], float], *, positions: Sequence[int] | int | None = None):
    """Multiply the output of heads by factors inside the ``with`` block: ``{(layer, head): factor}``; factors
    above 1 amplify a head (as in the parenthesis study). To zero or mean-ablate heads, use :func:`ablate`."""
    with model.hooks(fwd_hooks=scale_hooks(model, factors, positions=positions)):
        yield model


# ----------------------------------------------------------------------------------------------------------------
# single-component sweeps


def _sweep_layers(
    model,
    tokens,
    metric: Metrics,
    *,
    hooks_of_layer: Callable[[int], list[str]],
    n_units: int,
    units: Sequence[int] | None,
    what: str,
    layers: Sequence[int],
    kind: str,
    reference,
    positions,
    mean_over: str,
    seed: int,
    memory_budget,
    progress: bool,
    desc: str,
):
    """One cell per unit (a head or neuron of a layer's one hook, or a part: one hook each) ablated alone, per
    layer, run together along the batch from that layer and the first ablated position. Returns the per-example
    metric ``[layer, unit, batch]`` (a dict of them for several metrics), the base metric and the unit indices."""
    toks = to_tokens(model, tokens)
    n_pos = toks.shape[1]
    pos = _check_positions(positions, n_pos)
    start = 0 if pos is None else min(pos)
    names = [n for layer in layers for n in hooks_of_layer(layer)]
    if kind != "zero" and reference is None:
        reference = toks  # the run's own prompts: mean over them, or resample among them
    receiver = Receiver(model, toks, metric=metric)
    sources = _sources(model, names, kind, reference, mean_over, seed, n_examples=receiver.n_examples)
    base = evaluate(metric, receiver.logits, toks.shape[0])
    cell_idx = torch.arange(n_units) if units is None else torch.as_tensor(list(units), dtype=torch.long)
    if len(cell_idx) and (cell_idx.min() < 0 or cell_idx.max() >= n_units):
        raise InputError(f"{what} indices must lie in [0, {n_units}); got {cell_idx.tolist()[:10]}.")
    cell_idx = cell_idx.to(toks.device)
    pos_mask = position_mask(n_pos, pos, toks.device)[start:]
    per_layer = []
    with progress_bar(len(layers) * len(cell_idx), desc, progress) as bar:
        for layer in layers:
            layer_names = hooks_of_layer(layer)

            def make_hooks(cell_of_row, ex_of_row, layer_names=layer_names):
                comp = cell_idx[cell_of_row]  # the unit each row ablates
                out = []
                for ni, name in enumerate(layer_names):
                    if len(layer_names) > 1:  # one hook per unit (a layer's parts): whole activations
                        m = (comp == ni)[:, None, None] & pos_mask[None, :, None]
                    else:  # one hook, a unit per row on axis 2 (heads: [rows, pos, head, d], neurons: [rows, pos, n])
                        onehot = torch.nn.functional.one_hot(comp, n_units).bool()  # [rows, units]
                        unit_m = onehot[:, None, :] & pos_mask[None, :, None]
                        m = lambda act, m=unit_m: m[..., None] if act.dim() == 4 else m  # noqa: E731
                    out.append(hook(name, sources[name], m, examples=ex_of_row, offset=start))
                return out

            per_layer.append(
                run_cells(
                    receiver, metric, layer, start, len(cell_idx), make_hooks, memory_budget=memory_budget, pbar=bar
                )
            )
    if isinstance(metric, Mapping):
        per = {k: torch.stack([v[k] for v in per_layer]) for k in metric}
    else:
        per = torch.stack(per_layer) if per_layer else torch.empty(0, len(cell_idx), toks.shape[0])
    return per, base, cell_idx.cpu()


def _sweep(model, tokens, metric, unit: str, layers, units, **options):
    """The sweep of each ``unit`` (``"head"``, ``"neuron"`` or a layer's ``"part"``) of ``layers`` ablated alone."""
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    if unit == "head":
        _check_heads(model, [(layer, 0) for layer in layers])
        hooks_of_layer, n_units, site = (lambda layer: [hook_name("z", layer)]), int(model.cfg.n_heads), "z"
    elif unit == "neuron":
        _check_layers(model, [(layer, "mlp") for layer in layers])
        hooks_of_layer, n_units, site = (lambda layer: [hook_name("post", layer)]), int(model.cfg.d_mlp), "post"
    else:
        _check_layers(model, layers)
        hooks_of_layer, n_units, site = (lambda layer: [_layer_hook(layer, p) for p in LAYER_PARTS]), 2, "out"
    desc = f"{'layer' if unit == 'part' else unit} ablation"
    per, base, idx = _sweep_layers(model, tokens, metric, hooks_of_layer=hooks_of_layer, n_units=n_units, units=units,
                                   what=unit.capitalize(), layers=layers, desc=desc, **options)
    labels = {"layer": layers, unit: list(LAYER_PARTS) if unit == "part" else idx.tolist()}
    return _ablation_result(per, base, ("layer", unit), labels, site, options["kind"])


def _ablation_result(per_example, base, axes, labels, site, kind):
    """A :class:`SweepResult`, or ``{name: SweepResult}`` for several metrics."""
    if isinstance(per_example, dict):
        return {k: _ablation_result(v, base[k], axes, labels, site, kind) for k, v in per_example.items()}
    return SweepResult(per_example=per_example, axes=axes, base=base, labels=labels, site=site, method=f"ablate {kind}")


def head_sweep(
    model,
    tokens,
    metric: Metrics,
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
) -> SweepResult | dict[str, SweepResult]:
    """Ablate each query head alone and record ``metric``: ``res.values`` is ``[layer, head]``.

    The heads of a layer run together along the batch dimension, from that layer on (earlier layers are
    not recomputed), and from the first ablated position on. ``reference`` defaults to ``tokens`` for mean
    and resample ablation.

    ``metric`` follows TransformerLens's contract (:mod:`codecircuits.core.metrics`): logits ``[batch, pos, vocab]``
    of the prompts in order -> one value per prompt. Several heads' runs are stacked along the batch, but a
    plain metric is called on each head's rows alone; one declared :func:`~codecircuits.core.metrics.rowwise` is
    called once per stack. ``res.per_example`` keeps each prompt's value.

    ``metric`` may also be a mapping ``{name: metric}``: every metric is read from the same forwards and the
    result is ``{name: SweepResult}`` (e.g. ``{"logprob": ..., "correct": ...}``).

    One process; ``codecircuits.distributed.run(ablation.<sweep>, ..., workers=N)`` shards the prompts over
    workers (the result is one process's). Resample ablation is not shardable (:data:`SHARDABLE_KINDS`).
    """
    return _sweep(model, tokens, metric, "head", layers, heads, kind=kind, reference=reference, positions=positions,
                  mean_over=mean_over, seed=seed, memory_budget=memory_budget, progress=progress)


def neuron_sweep(
    model,
    tokens,
    metric: Metrics,
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
) -> SweepResult | dict[str, SweepResult]:
    """Ablate each MLP neuron (``mlp.hook_post``) alone: ``res.values`` is ``[layer, neuron]``.

    ``neurons`` picks a subset of neuron indices (the same in every layer); default all ``d_mlp``.

    One process; ``codecircuits.distributed.run(ablation.<sweep>, ..., workers=N)`` shards the prompts over
    workers (the result is one process's). Resample ablation is not shardable (:data:`SHARDABLE_KINDS`).
    """
    return _sweep(model, tokens, metric, "neuron", layers, neurons, kind=kind, reference=reference, positions=positions,
                  mean_over=mean_over, seed=seed, memory_budget=memory_budget, progress=progress)


def layer_sweep(
    model,
    tokens,
    metric: Metrics,
    *,
    kind: str = "zero",
    reference=None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | int | None = None,
    mean_over: str = "prompts",
    seed: int = 0,
    memory_budget=None,
    progress: bool = True,
) -> SweepResult | dict[str, SweepResult]:
    """Ablate each layer's attention output and MLP output alone: ``res.values`` is ``[layer, part]``
    with parts ``("attn", "mlp")``.

    One process; ``codecircuits.distributed.run(ablation.<sweep>, ..., workers=N)`` shards the prompts over
    workers (the result is one process's). Resample ablation is not shardable (:data:`SHARDABLE_KINDS`).
    """
    return _sweep(model, tokens, metric, "part", layers, None, kind=kind, reference=reference, positions=positions,
                  mean_over=mean_over, seed=seed, memory_budget=memory_budget, progress=progress)


__all__ = [
    "KINDS",
    "ablate",
    "ablation_hooks",
    "head_sweep",
    "label_metrics",
    "layer_sweep",
    "neuron_sweep",
    "resample_index",
    "scale_heads",
    "scale_hooks",
]
