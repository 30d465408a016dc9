"""Activation patching sweeps that recompute only what a patch can change.

A sweep patches one component at a time (a residual position, a head, a neuron, ...) from a *source* run into
a *receiver* run and records a metric on the receiver's logits for every cell. ``transformer_lens.patching``
runs one full forward per cell; this engine gives the same numbers with far less work:

1. cells are stacked along the batch dimension, in chunks sized from a memory budget;
2. a cell patched at layer ``l`` starts at layer ``l`` from the receiver's cached residual, and layers before
   ``l`` are not run at all (the bridge, asked to start at a layer, still runs them: the core runner skips them);
3. positions before the patched position are identical to the receiver run in every layer, so their keys
   and values come from the receiver's KV cache and only the later positions are run;
4. a cell that patches only positions before the first token where clean and corrupted differ changes
   nothing: its value is the receiver's baseline, exactly, and it is not run.

Metrics follow TransformerLens's contract (:mod:`codecircuits.core.metrics`): logits ``[batch, pos, vocab]`` of the
examples in order -> per-example values ``[batch]``, whatever the chunk size; values stay on the device until
the sweep ends.

    >>> res = sweep(model, clean, corrupted, metric, site="resid_pre")      # [layer, pos]
    >>> res.recovery                                                          # 0 = no effect, 1 = full effect
    >>> res.top(5)
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import einops
import pandas as pd
import torch
from jaxtyping import Float

from . import figures
from .core.batching import paired_tokens, progress_bar
from .core.inputs import check_hook_names
from .core.interventions import Replace, hook, position_mask
from .core.metrics import Metric, check_output
from .core.runner import Receiver, run_cells
from .core.sites import SITE_KINDS, hook_name, site_kind
from .errors import InputError
from .figures import Figure
from .models.summary import kv_head_of, n_kv_heads

# ----------------------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class SweepResult:
    """Per-cell metric values of a patching or ablation sweep.

    Attributes:
        per_example: ``[*axes, batch]`` metric of every cell on every example.
        axes: names of the leading axes of ``per_example`` (e.g. ``("layer", "pos")``).
        base: ``[batch]`` metric of the run that receives the intervention, untouched.
        source: ``[batch]`` metric of the donor run (patching), or ``None`` (ablation).
        labels: for each axis, a label per index: ints (the layer or head numbers swept) or strings
            (e.g. the token at each position).
        site: the hook site that was intervened on (``"resid_pre"``, ``"z"``, ...).
        method: how, e.g. ``"patch clean->corrupted"`` or ``"ablate zero"``.
    """

    per_example: Float[torch.Tensor, "*cells batch"]
    axes: tuple[str, ...]
    base: Float[torch.Tensor, " batch"]
    source: Float[torch.Tensor, " batch"] | None = None
    labels: dict = field(default_factory=dict)
    site: str = ""
    method: str = ""

    @classmethod
    def merge(cls, parts: Sequence[SweepResult]) -> SweepResult:
        """Results of the same sweep on consecutive shards of the examples, as one result: per-example values,
        bases and sources concatenated along the batch in the order given (labels from the first part)."""
        parts = list(parts)
        if not parts:
            raise InputError("Nothing to merge: give at least one SweepResult.")
        first = parts[0]
        if any(p.axes != first.axes or p.shape != first.shape for p in parts):
            raise InputError("Cannot merge sweeps with different axes or cells; merge shards of one sweep.")
        return replace(
            first,
            per_example=torch.cat([p.per_example for p in parts], dim=-1),
            base=torch.cat([p.base for p in parts], dim=0),
            source=None if first.source is None else torch.cat([p.source for p in parts], dim=0),
        )

    @property
    def values(self) -> torch.Tensor:
        """``[*axes]`` the metric averaged over examples."""
        return self.per_example.mean(-1)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.per_example.shape[:-1])

    @property
    def effect(self) -> torch.Tensor:
        """``[*axes]`` mean change of the metric caused by each cell's intervention."""
        return self.values - self.base.mean()

    @property
    def recovery(self) -> torch.Tensor:
        """``[*axes]`` normalised effect: 0 = the receiver's baseline, 1 = the source's value.

        For clean-into-corrupted patching this is the usual fraction of the clean metric restored,
        ``(patched - corrupted) / (clean - corrupted)`` (on means over examples).
        """
        if self.source is None:
            raise InputError("This result has no source run (an ablation sweep): use .effect or .values.")
        denom = self.source.mean() - self.base.mean()
        if denom.abs() < 1e-12:
            raise InputError(
                "The source and receiver runs give the same mean metric, so recovery is undefined: "
                "choose a metric or prompts on which clean and corrupted differ."
            )
        return self.effect / denom

    def to_dataframe(self) -> pd.DataFrame:
        """One row per cell: an index column per axis (plus its label), value, effect and recovery."""
        shape = self.shape
        grids = torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij") if shape else []
        data: dict[str, object] = {}
        for ax, g in zip(self.axes, grids):
            idx = g.reshape(-1).tolist()
            labs = self.labels.get(ax)
            if labs is not None and all(isinstance(x, int) for x in labs):
                data[ax] = [labs[i] for i in idx]  # e.g. the real layer numbers of a subset of layers
            else:
                data[ax] = idx
                if labs is not None:
                    data[f"{ax}_label"] = [labs[i] for i in idx]
        data["value"] = self.values.reshape(-1).detach().cpu().tolist()
        data["effect"] = self.effect.reshape(-1).detach().cpu().tolist()
        if self.source is not None:
            data["recovery"] = self.recovery.reshape(-1).detach().cpu().tolist()
        return pd.DataFrame(data)

    def top(self, k: int = 10, *, by: str | None = None, absolute: bool = True) -> pd.DataFrame:
        """The ``k`` rows of :meth:`to_dataframe` with the largest ``|by|`` (``absolute=False``: the largest ``by``),
        largest first: ``by`` is recovery for patching, effect otherwise."""
        df = self.to_dataframe()
        by = by or ("recovery" if self.source is not None else "effect")
        if by not in df.columns:
            raise InputError(f"Cannot rank by {by!r}: choose one of {', '.join(df.columns)}.")
        key = df[by].abs() if absolute else df[by]
        return df.loc[key.sort_values(ascending=False, kind="stable").index[:k]].reset_index(drop=True)

    def plot(self, of: str | None = None, *, title: str | None = None) -> Figure:
        """The sweep as a figure: a heatmap over the first axis and the rest (a 3-D sweep's last axes merged), or a
        bar per cell for a 1-D sweep. ``of``: ``"recovery"`` (default for patching), ``"effect"`` (default for
        ablation) or ``"value"``. Shows inline in Jupyter; ``.save("sweep.svg")`` or ``.html`` writes it."""
        of = of or ("recovery" if self.source is not None else "effect")
        grids = {"effect": self.effect, "value": self.values}
        if self.source is not None:
            grids["recovery"] = self.recovery
        if of not in grids:
            raise InputError(f"plot(of={of!r}): choose one of {', '.join(map(repr, grids))}.")
        t = grids[of].detach().float().cpu()
        title = title or f"{self.method} {self.site}: {of}"

        def labels(ax: str, n: int) -> list[str]:
            return [str(x) for x in self.labels.get(ax, range(n))]

        if t.dim() == 1:
            return figures.bars(labels(self.axes[0], t.shape[0]), t, title=title, value_title=of)
        cols = [str(x) for x in labels(self.axes[1], t.shape[1])]
        if t.dim() > 2:
            rest = [int(n) for n in t.shape[2:]]
            cols = [f"{c}/{'/'.join(map(str, idx))}" for c in cols for idx in itertools.product(*map(range, rest))]
            t = einops.rearrange(t, "row ... -> row (...)")
        return figures.heatmap(
            t, title=title, y_labels=labels(self.axes[0], t.shape[0]), x_labels=cols, y_title=self.axes[0],
            x_title=" × ".join(self.axes[1:]), center=0.0, value_label=of,
        )

    def heatmap(self, *, of: str | None = None, title: str | None = None, cell: int = 18) -> str:
        """The SVG of :meth:`plot` (deprecated: use ``plot(of).to_svg()`` or ``plot(of).save(path)``)."""
        warnings.warn("SweepResult.heatmap() is deprecated: use plot(), which returns a Figure "
                      "(.to_svg(), .save('x.svg'), shown inline in Jupyter).", DeprecationWarning, stacklevel=2)
        return self.plot(of, title=title).to_svg()

    def __repr__(self) -> str:
        dims = ", ".join(f"{a}={n}" for a, n in zip(self.axes, self.shape))
        return f"SweepResult({self.method} {self.site}: [{dims}], batch={self.per_example.shape[-1]})"


def position_labels(model, tokens: torch.Tensor) -> tuple[str, ...]:
    """Labels ``"i:token"`` for the positions of the first example."""
    try:
        toks = model.tokenizer.convert_ids_to_tokens(tokens[0].tolist())
    except Exception:  # a model without tokenizer
        toks = [str(int(t)) for t in tokens[0]]
    return tuple(f"{i}:{t}" for i, t in enumerate(toks))


# ----------------------------------------------------------------------------------------------------------------
# sites and sweeps

def first_difference(clean: torch.Tensor, corrupted: torch.Tensor) -> int:
    """The first position where any clean prompt differs from its corrupted prompt (the length if none)."""
    diff = (clean != corrupted).any(0).nonzero()
    return int(diff[0]) if len(diff) else int(clean.shape[1])


@dataclass(frozen=True)
class _Plan:
    """The cells of a sweep at one layer that start at the same position."""

    layer: int
    start: int
    cells: torch.Tensor  # [n] flat cell indices (within the layer)
    pos: torch.Tensor  # [n] the patched position of each cell, -1 = all selected positions
    unit: torch.Tensor  # [n] the head / kv head / neuron index of each cell, -1 = none


def _plan(
    by: tuple[str, ...],
    layers: list[int],
    n_units: int,
    positions: list[int],
    first_diff: int,
    units: list[int] | None,
) -> tuple[tuple[int, ...], list[_Plan]]:
    """Cell grid shape (per layer) and the groups to run; cells that change nothing are left out."""
    has_pos = "pos" in by or "dest_pos" in by
    has_unit = any(a in by for a in ("head", "kv_head", "neuron"))
    pos_axis = positions if has_pos else [-1]
    unit_axis = (units if units is not None else list(range(n_units))) if has_unit else [-1]
    unit_first = by.index("dest_pos") > by.index("head") if "dest_pos" in by else False  # pattern by dest_pos
    grid = tuple(len(a) for a, keep in ((pos_axis, has_pos), (unit_axis, has_unit)) if keep)
    if unit_first:
        grid = grid[::-1]
    changed = [p for p in positions if p >= first_diff]
    plans = []
    for layer in layers:
        by_start: dict[int, list[tuple[int, int, int]]] = {}
        cells = (
            [(u, p) for u in unit_axis for p in pos_axis]
            if unit_first
            else [(u, p) for p in pos_axis for u in unit_axis]
        )
        for flat, (u, p) in enumerate(cells):
            if p == -1:  # all selected positions: the first one that differs between the runs
                start = changed[0] if changed else None
            else:
                start = p if p >= first_diff else None
            if start is not None:
                by_start.setdefault(start, []).append((flat, p, u))
        for start, items in sorted(by_start.items()):
            t = torch.tensor(items, dtype=torch.long)
            plans.append(_Plan(layer, start, t[:, 0], t[:, 1], t[:, 2]))
    return grid, plans


@dataclass(frozen=True)
class _Group:
    """Cells run together: from ``layer`` (the smallest of theirs) and ``start``; ``layers`` is each cell's own."""

    layer: int
    start: int
    layers: torch.Tensor
    cells: torch.Tensor
    pos: torch.Tensor
    unit: torch.Tensor


def _merge(plans: list[_Plan], n_pos: int, n_ex: int, overhead: float, max_cells: int) -> list[_Group]:
    """Merge the plans of neighbouring layers that start at the same position into one batched forward when
    the extra layers run for the later cells cost less than a forward's fixed overhead (``overhead``, in
    row-layer-position evaluations). Exact either way: a cell's rows pass unchanged through the layers before
    its own."""
    by_start: dict[int, list[_Plan]] = {}
    for p in plans:
        by_start.setdefault(p.start, []).append(p)
    groups = []

    def close(members: list[_Plan]):
        groups.append(
            _Group(
                layer=members[0].layer,
                start=members[0].start,
                layers=torch.cat([torch.full((len(m.cells),), m.layer, dtype=torch.long) for m in members]),
                cells=torch.cat([m.cells for m in members]),
                pos=torch.cat([m.pos for m in members]),
                unit=torch.cat([m.unit for m in members]),
            )
        )

    for start, ps in sorted(by_start.items()):
        ps = sorted(ps, key=lambda p: p.layer)
        s = n_pos - start
        cur: list[_Plan] = []
        n = 0
        for p in ps:
            c = len(p.cells)
            if cur and n + c <= max_cells and n_ex * c * (p.layer - cur[0].layer) * s <= overhead:
                cur.append(p)
                n += c
            else:
                if cur:
                    close(cur)
                cur, n = [p], c
        if cur:
            close(cur)
    return groups


@dataclass(frozen=True)
class SweepSetup:
    """The checked arguments of a sweep: its site, axes, the two runs' tokens, layers and positions."""

    site: str
    hook_suffix: str
    kind: str
    by: tuple[str, ...]
    clean_t: torch.Tensor
    corr_t: torch.Tensor
    recv_t: torch.Tensor  # the run that receives the patches
    donor_t: torch.Tensor  # the run the patched activations come from
    layer_list: list[int]
    pos_list: list[int]


def sweep_setup(model, clean, corrupted, site, by, into, layers, positions) -> SweepSetup:
    """Checked arguments shared by the exact sweep and its attribution estimate."""
    sk = site_kind(site, sweep=True)
    site, hook_suffix, kind = sk.name, sk.suffix, sk.layout
    by = tuple(by) if by is not None else sk.default_by
    if by not in sk.allowed_by:
        raise InputError(f"Site {site!r} cannot be swept by {by}: choose one of {', '.join(map(str, sk.allowed_by))}.")
    if into not in ("corrupted", "clean"):
        raise InputError(f"into must be 'corrupted' (clean activations patched in) or 'clean'; got {into!r}.")
    clean_t, corr_t = paired_tokens(model, clean, corrupted)
    recv_t, donor_t = (corr_t, clean_t) if into == "corrupted" else (clean_t, corr_t)
    n_layers, n_pos = int(model.cfg.n_layers), int(clean_t.shape[1])
    layer_list = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layer_list if not 0 <= x < n_layers]
    if bad:
        raise InputError(f"Layers {bad} do not exist: the model has {n_layers} layers.")
    if any(not -n_pos <= int(p) < n_pos for p in _as_list(positions or [])):
        raise InputError(f"Positions {_as_list(positions)} are outside prompts of {n_pos} tokens.")
    pos_list = list(range(n_pos)) if positions is None else sorted({int(p) % n_pos for p in _as_list(positions)})
    return SweepSetup(site, hook_suffix, kind, by, clean_t, corr_t, recv_t, donor_t, layer_list, pos_list)


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
    memory_budget=None,
    progress: bool = True,
) -> SweepResult:
    """Patch one component at a time from one run into the other and record ``metric`` for every cell.

    Args:
        clean, corrupted: prompts or tokens of equal token length, one corrupted prompt per clean prompt.
        metric: logits ``[batch, pos, vocab]`` -> per-example values ``[batch]``.
        site: ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out`` (by layer and
            position); ``z`` (head outputs), ``q``, ``k``, ``v`` (by layer and query head, over all positions
            or by position), ``pattern`` (by layer and head, or by destination position), ``post`` (MLP
            neurons by layer and neuron, at ``positions``).
        by: the axes of the result (default: ``("layer", "pos")`` for residual sites, ``("layer", "head")``
            for head sites, ``("layer", "neuron")`` for ``post``). For ``k`` and ``v``, ``"head"`` is a query
            head: patching it changes only that query head's use of the key/value, even where a key/value head
            is shared (grouped-query, multi-query); ``"kv_head"`` patches the shared slot itself (as
            ``transformer_lens.patching`` does).
        into: ``"corrupted"`` patches clean activations into the corrupted run (denoising); ``"clean"`` patches
            corrupted activations into the clean run (noising).
        layers, heads, neurons: subsets to sweep (default all).
        positions: positions to sweep (for ``pos`` axes) or to patch at (otherwise); default all.
        memory_budget: bytes (or ``"2GB"``) of activations per batched forward.

    Returns a :class:`SweepResult`: ``per_example`` ``[*by, batch]``, ``base`` the receiving run's metric and
    ``source`` the donor run's, so ``recovery`` is the usual normalised score.

    One process; ``codecircuits.distributed.run(patching.sweep, ..., workers=N)`` shards the prompt pairs over
    workers and merges the shards with :meth:`SweepResult.merge`.
    """
    st = sweep_setup(model, clean, corrupted, site, by, into, layers, positions)
    site, kind, by = st.site, st.kind, st.by
    clean_t, corr_t, recv_t, donor_t = st.clean_t, st.corr_t, st.recv_t, st.donor_t
    layer_list, pos_list, n_pos = st.layer_list, st.pos_list, int(st.clean_t.shape[1])
    n_units, units = _units(model, kind, by, heads, neurons)
    d = first_difference(clean_t, corr_t)
    grid, plans = _plan(by, layer_list, n_units, pos_list, d, units)

    n_heads, n_kv = int(model.cfg.n_heads), n_kv_heads(model)
    query_kv = kind == "kv" and "head" in by and n_kv != n_heads  # per-query-head patch of a shared slot
    sk = SITE_KINDS[site]
    hook_names = [sk.hook(layer) for layer in layer_list]
    check_hook_names(model, hook_names)
    extra = []
    if query_kv:
        extra = [SITE_KINDS["pattern" if site == "k" else "z"].hook(layer) for layer in layer_list]
    receiver = Receiver(model, recv_t, extra_names=extra, metric=metric)
    wanted = set(hook_names)
    with torch.no_grad():
        donor_logits, donor_cache = model.run_with_cache(donor_t, names_filter=lambda n: n in wanted)
    n_ex = int(recv_t.shape[0])
    base = check_output(metric(receiver.logits), n_ex).detach()
    source = check_output(metric(donor_logits), n_ex).detach()
    del donor_logits

    n_cells = math.prod(grid) if grid else 1
    per_example = base.expand(len(layer_list), n_cells, n_ex).clone()  # cells that change nothing keep the base
    layer_index = {layer: i for i, layer in enumerate(layer_list)}
    sel_pos = torch.zeros(n_pos, dtype=torch.bool, device=recv_t.device)
    sel_pos[pos_list] = True
    sel_pos[:d] = False  # positions before the first difference are identical in both runs
    cells = _CellHooks(site, kind, query_kv, donor_cache, receiver, sel_pos, n_heads,
                       torch.tensor(kv_head_of(model), device=recv_t.device))
    overhead = receiver.forward_overhead() if len(plans) > 4 else 0.0
    max_cells = receiver.cells_per_chunk(min(p.start for p in plans), memory_budget) if plans else 1
    groups = _merge(plans, n_pos, n_ex, overhead, max_cells)
    total = sum(len(p.cells) for p in plans)
    with progress_bar(total, f"patching {site}", progress) as bar:
        for grp in groups:
            make_hooks = functools.partial(cells.hooks, grp)
            vals = run_cells(
                receiver, metric, grp.layer, grp.start, len(grp.cells), make_hooks, memory_budget=memory_budget,
                pbar=bar,
            )
            rows_l = torch.tensor([layer_index[int(x)] for x in grp.layers], device=per_example.device)
            per_example[rows_l, grp.cells.to(per_example.device)] = vals
    per_example = per_example.reshape(len(layer_list), *grid, n_ex)
    labels: dict = {"layer": layer_list}
    plabels = position_labels(model, recv_t)
    for ax in by[1:]:
        if ax in ("pos", "dest_pos"):
            labels[ax] = [plabels[p] for p in pos_list]
        else:
            labels[ax] = units if units is not None else list(range(n_units))
    if by == ("layer",):
        per_example = per_example.reshape(len(layer_list), n_ex)
    return SweepResult(
        per_example=per_example,
        axes=by,
        base=base,
        source=source,
        labels=labels,
        site=site,
        method=f"patch {'clean->corrupted' if into == 'corrupted' else 'corrupted->clean'}",
    )


def _units(model, kind: str, by: tuple[str, ...], heads, neurons) -> tuple[int, list[int] | None]:
    """How many units a cell's last axis ranges over (neurons, key/value heads or query heads) and the subset."""
    if kind == "neuron":
        n_units, units = int(model.cfg.d_mlp), neurons
    elif "kv_head" in by:
        n_units, units = n_kv_heads(model), heads
    else:
        n_units, units = int(model.cfg.n_heads), heads
    if units is not None:
        units = [int(u) for u in units]
        if any(not 0 <= u < n_units for u in units):
            raise InputError(f"Indices {units} are out of range for {n_units} {by[-1]}s.")
    return n_units, units


@dataclass(frozen=True)
class _CellHooks:
    """The hooks that patch a group of cells, one batch row per (cell, example): each row replaces its cell's
    slice of the site (positions from the group's start on, a unit) with the donor's values."""

    site: str
    kind: str
    query_kv: bool  # a query head's own use of a key/value slot its group shares
    donor_cache: dict
    receiver: Receiver
    sel_pos: torch.Tensor  # the positions a cell without a position axis patches
    n_heads: int
    kv_of: torch.Tensor

    def hooks(self, grp, cell_of_row: torch.Tensor, ex_of_row: torch.Tensor) -> list:
        start = grp.start
        dev = self.sel_pos.device
        g_layer, g_pos, g_unit = (t.to(dev) for t in (grp.layers, grp.pos, grp.unit))
        lay_of_row, pos_of_row, unit_of_row = g_layer[cell_of_row], g_pos[cell_of_row], g_unit[cell_of_row]
        n_pos = int(self.sel_pos.shape[0])
        # [rows, s] which suffix positions each row patches
        q = torch.arange(start, n_pos, device=pos_of_row.device)
        pmask = torch.where(pos_of_row[:, None] < 0, self.sel_pos[start:][None, :], q[None, :] == pos_of_row[:, None])
        sk, kind, n_heads, kv_of = SITE_KINDS[self.site], self.kind, self.n_heads, self.kv_of
        hooks = []
        for L in sorted(set(lay_of_row.tolist())):
            on = lay_of_row == L  # the rows that patch at this layer
            name = sk.hook(L)
            pm = pmask & on[:, None]
            donor = self.donor_cache[name]
            if kind == "vec":
                m = pm[:, :, None]
            elif kind in ("head", "kv", "neuron"):
                slot = kv_of[unit_of_row] if self.query_kv else unit_of_row
                umask = torch.nn.functional.one_hot(slot, donor.shape[2]).bool()  # [rows, slots]
                m = pm[:, :, None] & umask[:, None, :]
                m = m[..., None] if donor.dim() == 4 else m
            else:  # pattern [rows, head, dest, src]: whole rows of the patched destination positions
                umask = torch.nn.functional.one_hot(unit_of_row, n_heads).bool()
                m = umask[:, :, None, None] & pm[:, None, :, None]
            hooks.append(hook(name, Replace(donor, pattern=kind == "pattern"), m, examples=ex_of_row, offset=start))
            if self.query_kv:
                # the slot is shared: the other query heads of its group keep the receiver's values, which are
                # exact at the patched layer
                other = (
                    (kv_of[None, :] == kv_of[unit_of_row][:, None])
                    & (torch.arange(n_heads, device=kv_of.device)[None, :] != unit_of_row[:, None])
                    & on[:, None]
                )  # [rows, head]
                if self.site == "k":
                    name2, m2 = SITE_KINDS["pattern"].hook(L), other[:, :, None, None]
                else:
                    name2, m2 = SITE_KINDS["z"].hook(L), other[:, None, :, None]
                keep = Replace(self.receiver[name2], pattern=self.site == "k")
                hooks.append(hook(name2, keep, m2, examples=ex_of_row, offset=start))
        return hooks


def patch_layers(
    receiver: Receiver,
    donor: Receiver,
    metric: Metric,
    layers: Sequence[int],
    positions: Sequence[int],
    *,
    sites: Sequence[str] = ("attn_out", "mlp_out"),
    donor_rows: torch.Tensor | None = None,
    chunk: int = 5,
) -> dict[str, SweepResult]:
    """Patch one site of one layer at a time from a cached donor run into a cached receiver run, at the fixed
    ``positions`` (all of them together): ``{site: SweepResult}``, each ``per_example [len(layers), n]``.

    Unlike :func:`sweep`, both runs come already cached (:class:`~codecircuits.core.runner.Receiver`; the donor's
    cache must hold the sites' hooks, e.g. through its ``extra_names``), so one donor run serves several receivers,
    and ``donor_rows`` picks the donor prompt of each receiver prompt (default: the same rows). The cells of
    ``chunk`` consecutive ``layers`` (every site) share one batched run from the chunk's first layer and from the
    first patched position. ``sites`` are residual-shaped (``[batch, pos, d_model]``: ``attn_out``, ``mlp_out``,
    ``resid_pre``, ...). ``base`` is the receiver's metric, ``source`` the donor rows'.
    """
    bad = [s for s in sites if site_kind(s).layout != "vec"]
    if bad or not layers or not positions or chunk < 1:
        raise InputError(
            f"patch_layers needs residual-shaped sites (got {bad or list(sites)}), some layers and positions, and "
            f"chunk >= 1 (got {chunk})."
        )
    rows = slice(None) if donor_rows is None else donor_rows
    start = min(positions)
    pos_mask = position_mask(receiver.n_pos - start, [p - start for p in positions], receiver.tokens.device)
    pos_mask = pos_mask.view(1, -1, 1)
    out: dict = {site: [] for site in sites}
    for i in range(0, len(layers), chunk):
        group = list(layers[i : i + chunk])
        cells = [(site, layer) for layer in group for site in sites]
        sources = {c: donor.cache[hook_name(*c)][rows] for c in cells}

        def make_hooks(cell_of_row, ex_of_row, cells=cells, sources=sources):
            hooks = []
            for ci, c in enumerate(cells):
                mask = (cell_of_row == ci).view(-1, 1, 1) & pos_mask
                hooks.append(hook(hook_name(*c), Replace(sources[c]), mask, examples=ex_of_row, offset=start))
            return hooks

        vals = run_cells(receiver, metric, min(group), start, len(cells), make_hooks).float().cpu()  # [cells, n]
        for ci, (site, _) in enumerate(cells):
            out[site].append(vals[ci])
    base = metric(receiver.logits).float().cpu()
    source = metric(donor.logits[rows]).float().cpu()
    return {
        site: SweepResult(
            torch.stack(v), ("layer",), base, source, {"layer": list(layers)}, site, "patch donor->receiver"
        )
        for site, v in out.items()
    }


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, int):
        return [x]
    return list(x)


def work(model, clean, corrupted, *, site: str = "resid_pre", by: Sequence[str] | None = None) -> dict:
    """Layer-position evaluations per example: one full forward per cell (``transformer_lens.patching``) versus
    the ones a patch can change (what this engine runs: layers ``>= l`` and positions ``>= p`` of each cell
    that changes anything). ``ideal_ratio`` is the speed-up of an implementation that recomputes nothing else.
    """
    sk = site_kind(site, sweep=True)
    kind = sk.layout
    by = tuple(by) if by is not None else sk.default_by
    clean_t, corr_t = paired_tokens(model, clean, corrupted)
    n_layers, n_pos = int(model.cfg.n_layers), int(clean_t.shape[1])
    n_units = {"neuron": int(model.cfg.d_mlp)}.get(kind, n_kv_heads(model) if "kv_head" in by else model.cfg.n_heads)
    grid, plans = _plan(
        by, list(range(n_layers)), int(n_units), list(range(n_pos)), first_difference(clean_t, corr_t), None
    )
    cells = n_layers * (math.prod(grid) if grid else 1)
    full = cells * n_layers * n_pos
    needed = sum(len(p.cells) * (n_layers - p.layer) * (n_pos - p.start) for p in plans)
    return {
        "cells": cells,
        "groups": len(plans),  # (layer, start position) groups, each one or more batched forwards
        "tl_evaluations": full,
        "needed_evaluations": needed,
        "ideal_ratio": full / needed if needed else float("inf"),
    }
