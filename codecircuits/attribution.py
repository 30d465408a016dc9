"""Attribution patching: the first-order (gradient) estimate of every cell of a patching sweep at once.

For a cell that patches activation ``a`` from the donor run into the receiving run, the estimate of the metric's
change is ``(a_donor - a_receiver) . d metric / d a`` with the gradient taken on the receiving run: one forward
of the donor, one forward and one backward of the receiver, for all cells of all layers together. The cells and
axes are those of :func:`codecircuits.patching.sweep`, so the two can be compared cell by cell:

    >>> est = attribution.sweep(model, clean, corrupted, metric, site="z", exact=True)
    >>> est.rank_correlation          # Spearman correlation with exact patching over all cells
    >>> est.top(10)

On grouped-query and multi-query models a key/value "head" is a query head, as in patching: for ``v`` the
gradient reaches the shared value slot only through that head's pattern and output; for ``k`` through that
head's attention scores (the score change from the donor key is exact, read in one extra forward). The
node-level scores of ``transformer_lens``'s ``attribution_patch`` (head outputs at ``attn.hook_z`` and
``hook_mlp_out`` by layer and position) are the same numbers, computed one example at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import einops
import pandas as pd
import torch

from .core.inputs import check_hook_names
from .core.interventions import Replace, hook
from .core.metrics import Metric, check_output
from .core.sites import HOOK_EMBED, hook_name
from .errors import InputError
from .models.summary import kv_head_of
from .patching import SweepResult, first_difference, position_labels, sweep_setup
from .patching import sweep as exact_sweep


@dataclass(frozen=True)
class AttributionResult(SweepResult):
    """A :class:`~codecircuits.patching.SweepResult` of estimated patched metrics (``base + estimate``), with
    ``rank_correlation`` (Spearman, over cells, of the estimated and the exact effect) when ``exact`` was given."""

    exact: SweepResult | None = None
    rank_correlation: float | None = None


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two tensors of the same number of elements (ties get average ranks)."""
    x = pd.Series(a.detach().reshape(-1).cpu().double().numpy()).rank()
    y = pd.Series(b.detach().reshape(-1).cpu().double().numpy()).rank()
    if len(x) != len(y):
        raise InputError(f"Cannot correlate {len(x)} cells with {len(y)}: the sweeps differ in shape.")
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(x.corr(y))


def rank_correlation(estimate: SweepResult, exact: SweepResult) -> float:
    """Spearman correlation over cells of two sweeps' effects (e.g. attribution and exact patching)."""
    if estimate.shape != exact.shape:
        raise InputError(f"The sweeps have different shapes: {estimate.shape} and {exact.shape}.")
    return spearman(estimate.effect, exact.effect)


def _grad_run(model, tokens, metric, names: list[str]):
    """Activations and metric gradients at ``names`` on one batched forward and backward.

    Uses ``transformer_lens``'s ``cache_activation_and_gradient`` (backward hooks, which see the bridge's
    converted shapes); the metric is summed over examples, and since examples are independent each example's
    gradient is that of its own metric.
    """
    from transformer_lens.tools.analysis.attribution_patching import cache_activation_and_gradient

    seen: dict[str, torch.Tensor] = {}

    def summed(logits):
        vals = check_output(metric(logits), tokens.shape[0])
        seen["vals"] = vals.detach()
        return vals.sum()

    # an upstream point the backward passes through: without it the backward hooks of converted points
    # (attn.hook_z, hook_q/k/v) would not fire
    wanted = set(names) | {HOOK_EMBED}
    with torch.enable_grad():
        cache = cache_activation_and_gradient(model, tokens, summed, names_filter=lambda n: n in wanted)
    missing = [n for n in names if cache.gradients.get(n) is None]
    if missing:
        raise RuntimeError(f"No gradient reached {missing[:3]}: is the metric a differentiable function of logits?")
    return seen["vals"], cache.activations, cache.gradients


def _score_deltas(model, receiver_t, donor_acts, recv_acts, layers: list[int]) -> dict[int, torch.Tensor]:
    """Exact change of every query head's attention scores when the key slots take the donor's keys
    (one forward: the patterns are restored to the receiver's, so later layers see the receiver run)."""
    deltas: dict[int, torch.Tensor] = {}
    hooks = []
    for layer in layers:
        k_name, s_name, p_name = (hook_name(x, layer) for x in ("k", "attn_scores", "pattern"))
        hooks.append(hook(k_name, Replace(donor_acts[k_name])))

        def scores(act, hook, layer=layer, n=s_name):
            deltas[layer] = act.detach() - recv_acts[n]
            return act

        hooks.append((s_name, scores))
        hooks.append(hook(p_name, Replace(recv_acts[p_name], pattern=True)))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(receiver_t)
    for layer, d in deltas.items():
        deltas[layer] = torch.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0)  # masked (future) positions
    return deltas


def sweep(
    model,
    clean,
    corrupted,
    metric: Metric,
    *,
    site: str = "resid_pre",
    by: Sequence[str] | None = None,
    into: str = "corrupted",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | int | None = None,
    heads: Sequence[int] | None = None,
    neurons: Sequence[int] | None = None,
    exact: bool | SweepResult = False,
    progress: bool = True,
) -> AttributionResult:
    """Estimate every cell of ``patching.sweep(...)`` with the same arguments from one backward pass.

    ``exact=True`` also runs the exact sweep (``exact=<SweepResult>`` uses one you have) and fills in
    ``rank_correlation``. The result's ``per_example`` is ``base + estimated effect``, so ``effect`` and
    ``recovery`` read as for an exact sweep.
    """
    st = sweep_setup(model, clean, corrupted, site, by, into, layers, positions)
    site, kind, by = st.site, st.kind, st.by
    clean_t, corr_t, recv_t, donor_t = st.clean_t, st.corr_t, st.recv_t, st.donor_t
    layer_list, pos_list, n_pos = st.layer_list, st.pos_list, int(st.recv_t.shape[1])
    query_kv = kind == "kv" and "head" in by  # a query head's own use of its key/value slot (any model)

    names = [hook_name(site, layer) for layer in layer_list]
    if query_kv and site == "v":
        names += [hook_name(x, layer) for layer in layer_list for x in ("z", "pattern")]
    if query_kv and site == "k":
        names += [hook_name(x, layer) for layer in layer_list for x in ("attn_scores", "pattern")]
    check_hook_names(model, names)
    site_names = set(names[: len(layer_list)])
    with torch.no_grad():
        donor_logits, donor_cache = model.run_with_cache(donor_t, names_filter=lambda n: n in site_names)
    source = check_output(metric(donor_logits), donor_t.shape[0]).detach()
    base, acts, grads = _grad_run(model, recv_t, metric, names)
    sel = torch.zeros(n_pos, dtype=torch.bool, device=recv_t.device)
    sel[pos_list] = True
    sel[: first_difference(clean_t, corr_t)] = False  # identical activations: no change, exactly

    deltas = {}
    if query_kv and site == "k":
        deltas = _score_deltas(model, recv_t, {n: donor_cache[n] for n in site_names}, acts, layer_list)
    kv_of = torch.tensor(kv_head_of(model), device=recv_t.device)
    per_layer = []
    for layer in layer_list:
        score = _layer_score(site, kind, query_kv, layer, donor_cache, acts, grads, deltas, kv_of)
        score = score * sel.view(1, -1, *([1] * (score.dim() - 2))).to(score.dtype)
        per_layer.append(_cells(score, by, pos_list, heads, neurons, kind).T)  # [cells, b]
    est = torch.stack(per_layer)  # [layer, cells, b]
    grid = _grid(by, len(pos_list), est.shape[1])
    per_example = (base + est).reshape(len(layer_list), *grid, -1)
    if by == ("layer",):
        per_example = per_example.reshape(len(layer_list), -1)
    labels: dict = {"layer": layer_list}
    plabels = position_labels(model, recv_t)
    for ax in by[1:]:
        if ax in ("pos", "dest_pos"):
            labels[ax] = [plabels[p] for p in pos_list]
        else:
            n_units = per_example.shape[by.index(ax)]
            units = neurons if ax == "neuron" else heads
            labels[ax] = [int(u) for u in units] if units is not None else list(range(n_units))
    if exact is True:
        exact = exact_sweep(model, clean_t, corr_t, metric, site=site, by=by, into=into, layers=layers,
                            positions=positions, heads=heads, neurons=neurons, progress=progress)
    direction = "clean->corrupted" if into == "corrupted" else "corrupted->clean"
    result = AttributionResult(per_example=per_example, axes=by, base=base, source=source, labels=labels, site=site,
                               method=f"attribution {direction}")
    if not isinstance(exact, SweepResult):
        return result
    return replace(result, exact=exact, rank_correlation=rank_correlation(result, exact))


def _layer_score(site, kind, query_kv, layer, donor_cache, acts, grads, deltas, kv_of) -> torch.Tensor:
    """One layer's first-order effect of patching each component, ``(donor - receiver) . gradient``: ``[b, pos]``
    for a vector site, ``[b, pos, unit]`` otherwise."""
    name = hook_name(site, layer)
    delta = donor_cache[name] - acts[name]
    g = grads[name]
    if query_kv and site == "v":
        gz = grads[hook_name("z", layer)]  # [b, q, h, d]
        pat = acts[hook_name("pattern", layer)]  # [b, h, q, s]
        dv = delta[:, :, kv_of]  # [b, s, h, d]: each query head's view of its value slot
        return einops.einsum(gz, pat, dv, "b q h d, b h q s, b s h d -> b s h")  # [b, pos, head]
    if query_kv and site == "k":
        gs = grads[hook_name("attn_scores", layer)]  # [b, h, q, s]
        return einops.einsum(torch.nan_to_num(gs), deltas[layer], "b h q s, b h q s -> b s h")
    if kind == "pattern":
        return (delta * g).sum(-1).transpose(1, 2)  # [b, dest, head]
    score = delta * g
    return score if kind == "neuron" else score.sum(-1)  # vec: [b, pos]; neuron: [b, pos, n]; heads: [b, pos, h]


def _cells(score: torch.Tensor, by, pos_list, heads, neurons, kind) -> torch.Tensor:
    """A layer's scores ``[b, pos(, unit)]`` reduced to the sweep's cells ``[b, cells]``."""
    if by in (("layer",),):
        return score.sum(1)[:, None]
    if by == ("layer", "pos"):
        return score[:, pos_list]
    if "pos" in by or "dest_pos" in by:
        cell = score[:, pos_list]
        if heads is not None:
            cell = cell[:, :, list(heads)]
        if by == ("layer", "head", "dest_pos"):
            cell = cell.transpose(1, 2)
        return cell.reshape(cell.shape[0], -1)
    cell = score.sum(1)  # all positions: (layer, head | kv_head | neuron)
    units = neurons if kind == "neuron" else heads
    return cell if units is None else cell[:, list(units)]


def _grid(by: tuple[str, ...], n_pos: int, n_cells: int) -> tuple[int, ...]:
    if by == ("layer",):
        return (1,)
    if len(by) == 2:
        return (n_cells,)
    if by[1] in ("pos",):
        return (n_pos, n_cells // n_pos)
    return (n_cells // n_pos, n_pos)  # (layer, head, dest_pos)


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, int):
        return [x]
    return list(x)


__all__ = ["AttributionResult", "rank_correlation", "spearman", "sweep"]
