"""Activation patching sweeps that recompute only what a patch can change.

A sweep patches one component at a time (a residual position, a head, a neuron, ...) from a *source* run into
a *receiver* run and records a metric on the receiver's logits for every cell. ``transformer_lens.patching``
runs one full forward per cell; this engine gives the same numbers with far less work:

1. cells are stacked along the batch dimension, in chunks sized from a memory budget;
2. a cell patched at layer ``l`` starts at layer ``l`` from the receiver's cached residual, and layers before
   ``l`` are not run at all (the bridge's own ``start_at_layer`` still runs them, so we skip them ourselves);
3. positions before the patched position are identical to the receiver run in every layer, so their keys
   and values come from the receiver's KV cache and only the later positions are run;
4. a cell that patches only positions before the first token where clean and corrupted differ changes
   nothing: its value is the receiver's baseline, exactly, and it is not run.

Metrics follow TransformerLens's contract (:mod:`codecircuits.metrics`): logits ``[batch, pos, vocab]`` of the
examples in order -> per-example values ``[batch]``, whatever the chunk size; values stay on the device until
the sweep ends.

    >>> res = sweep(model, clean, corrupted, metric, site="resid_pre")      # [layer, pos]
    >>> res.recovery                                                          # 0 = no effect, 1 = full effect
    >>> res.top(5)
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from codecircuits.errors import InputError
from codecircuits.core.metrics import Metric, check_output, per_cell
from codecircuits.models.kv_cache import forward_cache_to_attention

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

    per_example: torch.Tensor
    axes: tuple[str, ...]
    base: torch.Tensor
    source: torch.Tensor | None = None
    labels: dict = field(default_factory=dict)
    site: str = ""
    method: str = ""

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
        """The ``k`` cells with the largest (absolute) ``by`` column: recovery for patching, effect otherwise."""
        df = self.to_dataframe()
        by = by or ("recovery" if self.source is not None else "effect")
        if by not in df.columns:
            raise InputError(f"Cannot rank by {by!r}: choose one of {', '.join(df.columns)}.")
        key = df[by].abs() if absolute else df[by]
        return df.loc[key.sort_values(ascending=False).index[:k]].reset_index(drop=True)

    def heatmap(self, *, of: str | None = None, title: str | None = None, cell: int = 18) -> str:
        """A self-contained SVG heatmap (2-D results; 3-D results are drawn with the last two axes merged).

        ``of`` is ``"recovery"`` (default for patching), ``"effect"`` (default for ablation) or ``"value"``.
        Returns the SVG markup; write it to a ``.svg`` file or embed it in HTML.
        """
        of = of or ("recovery" if self.source is not None else "effect")
        grid = {"recovery": self.recovery if of == "recovery" else None, "effect": self.effect, "value": self.values}
        if of not in grid:
            raise InputError(f"heatmap(of={of!r}): choose 'recovery', 'effect' or 'value'.")
        t = (grid[of] if grid[of] is not None else self.recovery).detach().float().cpu()
        if t.dim() == 1:
            t = t.unsqueeze(1)
        elif t.dim() > 2:
            t = t.reshape(t.shape[0], -1)
        rows, cols = t.shape
        vmax = float(t.abs().max()) or 1.0
        left, top = 70, 30
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + cols * cell + 10}" '
            f'height="{top + rows * cell + 40}" font-family="sans-serif" font-size="10">',
            f'<text x="{left}" y="14">{html.escape(title or f"{self.method} {self.site}: {of}")}</text>',
        ]
        for i in range(rows):
            parts.append(f'<text x="{left - 4}" y="{top + i * cell + cell * 0.7}" text-anchor="end">{i}</text>')
            for j in range(cols):
                v = float(t[i, j])
                a = min(1.0, abs(v) / vmax)
                rgb = (255, int(255 * (1 - a)), int(255 * (1 - a))) if v >= 0 else (int(255 * (1 - a)),) * 2 + (255,)
                parts.append(
                    f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell}" height="{cell}" '
                    f'fill="rgb{rgb}"><title>{self.axes[0]} {i}, {j}: {v:.4g}</title></rect>'
                )
        ax_name = " x ".join(self.axes[1:]) or "value"
        parts.append(f'<text x="{left}" y="{top + rows * cell + 16}">{html.escape(ax_name)} →  (±{vmax:.3g})</text>')
        parts.append("</svg>")
        return "\n".join(parts)

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


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ----------------------------------------------------------------------------------------------------------------
# the engine: run only the layers and positions a patch can change

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes of activations per chunk


def _parse_budget(budget) -> int:
    if budget is None:
        return DEFAULT_MEMORY_BUDGET
    if isinstance(budget, (int, float)):
        if budget <= 0:
            raise InputError(f"memory_budget must be positive, got {budget}.")
        return int(budget)
    s = str(budget).strip().upper().replace("IB", "B")
    for unit, mult in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024), ("B", 1)):
        if s.endswith(unit):
            try:
                return int(float(s[: -len(unit)]) * mult)
            except ValueError:
                break
    raise InputError(f"Cannot read memory_budget={budget!r}: give bytes (an int) or a string like '2GB' or '500MB'.")


def _skip_block(returns_tuple: bool):
    def forward(*args, **kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        return (x,) if returns_tuple else x

    return forward


def metric_positions(metric: Metric, logits: torch.Tensor) -> list[int] | None:
    """The positions whose logits ``metric`` reads, if that is only the last one; ``None`` means all.

    Checked empirically on ``logits``: the metric must give exactly the same values when every other position is
    replaced by NaN and by large random numbers. Sweeps then compute the unembedding only there.
    """
    n_pos = logits.shape[1]
    if n_pos < 2:
        return None
    try:
        ref = metric(logits)
        other = torch.ones(n_pos, dtype=torch.bool, device=logits.device)
        other[-1] = False
        g = torch.Generator(device="cpu").manual_seed(0)
        for fill in ("nan", "noise"):
            probe = logits.clone()
            if fill == "nan":
                probe[:, other] = float("nan")
            else:
                noise = torch.randn(probe[:, other].shape, generator=g) * 100
                probe[:, other] = noise.to(probe.device, probe.dtype)
            out = metric(probe)
            if not (isinstance(out, torch.Tensor) and out.shape == ref.shape and torch.equal(out, ref)):
                return None
    except Exception:  # a metric that cannot take the probe reads everything, as far as we know
        return None
    return [n_pos - 1]


class Receiver:
    """One cached forward of the prompts that receive interventions: the residual entering every layer,
    the logits and the Hugging Face key/value cache. :meth:`run` then runs a batch of rows (each row one
    of these prompts, with interventions installed as hooks) from layer ``layer`` and position ``start``
    only, reusing the cached keys and values of the earlier positions and skipping the earlier layers.
    """

    def __init__(self, model, tokens: torch.Tensor, *, extra_names: Sequence[str] = (), metric: Metric | None = None):
        from transformers import DynamicCache

        forward_cache_to_attention(model)  # transformers >= 5.24 passes the cache on as `cache=`
        self.model = model
        self.tokens = tokens
        self.n_layers = int(model.cfg.n_layers)
        names = {f"blocks.{layer}.hook_resid_pre" for layer in range(self.n_layers)} | set(extra_names)
        self.kv = DynamicCache(config=model.original_model.config)
        seen: dict[str, bool] = {}
        handle = model.blocks[0].register_forward_hook(lambda mod, a, o: seen.__setitem__("tuple", type(o) is tuple))
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                self.logits, self.cache = model.run_with_cache(
                    tokens, names_filter=lambda n: n in names, past_key_values=self.kv
                )
        finally:
            handle.remove()
        self.forward_seconds = time.perf_counter() - t0
        self._returns_tuple = seen.get("tuple", False)
        # the positions whose logits the metric reads (None: all): only those are unembedded in run()
        self.read_positions = metric_positions(metric, self.logits) if metric is not None else None
        if self.kv.get_seq_length() != tokens.shape[1]:
            raise RuntimeError(
                f"The model's key/value cache holds {self.kv.get_seq_length()} positions after a forward over "
                f"{tokens.shape[1]}; this architecture does not fill a Hugging Face DynamicCache, so prefix reuse "
                "cannot work: use transformer_lens.patching for this model, and report the architecture."
            )

    @property
    def n_examples(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[1])

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.cache[name]

    def run(self, layer: int, start: int, rows: torch.Tensor, fwd_hooks, *, resid: torch.Tensor | None = None):
        """Logits ``[len(rows), pos, vocab]`` of the receiver prompts ``rows`` with ``fwd_hooks`` installed.

        Only layers ``>= layer`` and positions ``>= start`` are computed (hooks see those positions only: a
        hook's position ``i`` is the prompt's position ``start + i``); the earlier positions' logits are the
        cached receiver logits. If ``read_positions`` is set (the metric reads only those), only those positions
        are unembedded and the others hold arbitrary values. ``resid`` overrides the residual entering ``layer``
        at positions ``>= start``.
        """
        from transformers import DynamicCache

        model = self.model
        if resid is None:
            resid = self.cache[f"blocks.{layer}.hook_resid_pre"][rows, start:]
        sub = None
        if start > 0:
            sub = DynamicCache(config=model.original_model.config)
            for i, lay in enumerate(self.kv.layers):
                if i < layer:  # skipped layers never read their cache; only the length of layer 0 matters
                    k = lay.keys[:1, :, :start].expand(len(rows), -1, -1, -1)
                    v = lay.values[:1, :, :start].expand(len(rows), -1, -1, -1)
                else:
                    k, v = lay.keys[rows, :, :start], lay.values[rows, :, :start]
                sub.update(k.contiguous() if i >= layer else k, v.contiguous() if i >= layer else v, i)
        skipped = [model.blocks[i] for i in range(layer)]
        fwd = _skip_block(self._returns_tuple)
        read = self.read_positions
        hooks = list(fwd_hooks)
        if read is not None:  # unembed only the positions the metric reads
            idx = [p - start for p in read]
            hooks.append(("unembed.hook_in", lambda act, hook: act[:, idx]))
        for b in skipped:
            object.__setattr__(b, "forward", fwd)
        try:
            with torch.no_grad(), model.hooks(fwd_hooks=hooks):
                kwargs = {"past_key_values": sub} if sub is not None else {"use_cache": False}
                out = model(resid, start_at_layer=layer, **kwargs)
        finally:
            for b in skipped:
                object.__delattr__(b, "forward")
        if read is not None:
            # the metric reads only these positions (checked when the receiver was built): the others are left
            # uninitialised rather than copied
            full = torch.empty(len(rows), self.n_pos, out.shape[-1], device=out.device, dtype=out.dtype)
            full[:, read] = out
            return full
        if start > 0:
            out = torch.cat([self.logits[rows, :start], out], dim=1)
        return out

    def forward_overhead(self) -> float:
        """A forward's fixed cost in row-layer-position evaluations, measured on this machine: the time of a
        one-row, one-layer, one-position run over the time per evaluation of the receiver's full forward."""
        per_eval = self.forward_seconds / (self.n_examples * self.n_layers * self.n_pos)
        rows = torch.zeros(1, dtype=torch.long, device=self.tokens.device)
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            self.run(self.n_layers - 1, self.n_pos - 1, rows, [])
            best = min(best, time.perf_counter() - t0)
        return max(0.0, best / max(per_eval, 1e-12) - 1.0)

    def row_bytes(self, start: int) -> int:
        """Rough activation bytes one row needs when run from ``start`` (for chunk sizing)."""
        cfg = self.model.cfg
        s = self.n_pos - start
        per_pos = 8 * cfg.d_model + 3 * cfg.d_mlp + 3 * cfg.n_heads * self.n_pos
        n_logits = len(self.read_positions) if self.read_positions is not None else s + self.n_pos
        return 4 * (s * per_pos + n_logits * cfg.d_vocab)


def run_cells(
    receiver: Receiver,
    metric: Metric,
    layer: int,
    start: int,
    n_cells: int,
    make_hooks: Callable[[torch.Tensor, torch.Tensor], list],
    *,
    memory_budget=None,
    pbar=None,
) -> torch.Tensor:
    """Metric ``[n_cells, n_examples]`` of ``n_cells`` interventions at one layer, batched in chunks.

    ``make_hooks(cell_of_row, example_of_row)`` returns the forward hooks for a chunk whose batch rows are
    ``(cell, example)`` pairs, cell-major. ``metric`` sees each cell's rows on their own, the examples in order
    (:func:`codecircuits.metrics.per_cell`), unless it is declared row-wise. Every cell must leave the
    receiver's positions ``< start`` and its
    layers ``< layer`` unchanged.
    """
    n_ex = receiver.n_examples
    device = receiver.tokens.device
    per_chunk = max(1, _parse_budget(memory_budget) // (receiver.row_bytes(start) * n_ex))
    out = []
    for c0 in range(0, n_cells, per_chunk):
        c1 = min(n_cells, c0 + per_chunk)
        cells = torch.arange(c0, c1, device=device)
        cell_of_row = cells.repeat_interleave(n_ex)
        ex_of_row = torch.arange(n_ex, device=device).repeat(c1 - c0)
        logits = receiver.run(layer, start, ex_of_row, make_hooks(cell_of_row, ex_of_row))
        out.append(per_cell(metric, logits, c1 - c0, n_ex).detach())
        if pbar is not None:
            pbar.update(c1 - c0)
    return torch.cat(out) if out else torch.empty(0, n_ex, device=device)


def _progress(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)


# ----------------------------------------------------------------------------------------------------------------
# sites and sweeps

# site -> (hook suffix, the kind of tensor: "vec" [b,pos,d], "head" [b,pos,head,d], "kv" [b,pos,kv,d],
#          "neuron" [b,pos,d_mlp], "pattern" [b,head,dest,src])
SITES = {
    "resid_pre": ("hook_resid_pre", "vec"),
    "resid_mid": ("hook_resid_mid", "vec"),
    "resid_post": ("hook_resid_post", "vec"),
    "attn_out": ("hook_attn_out", "vec"),
    "mlp_out": ("hook_mlp_out", "vec"),
    "z": ("attn.hook_z", "head"),
    "q": ("attn.hook_q", "head"),
    "k": ("attn.hook_k", "kv"),
    "v": ("attn.hook_v", "kv"),
    "pattern": ("attn.hook_pattern", "pattern"),
    "post": ("mlp.hook_post", "neuron"),
}
SITE_ALIASES = {"head_out": "z", "neurons": "post", "mlp_post": "post"}

DEFAULT_BY = {
    "vec": ("layer", "pos"),
    "head": ("layer", "head"),
    "kv": ("layer", "head"),
    "pattern": ("layer", "head"),
    "neuron": ("layer", "neuron"),
}
ALLOWED_BY = {
    "vec": [("layer", "pos"), ("layer",)],
    "head": [("layer", "head"), ("layer", "pos", "head")],
    "kv": [("layer", "head"), ("layer", "pos", "head"), ("layer", "kv_head"), ("layer", "pos", "kv_head")],
    "pattern": [("layer", "head"), ("layer", "head", "dest_pos")],
    "neuron": [("layer", "neuron")],
}


def _site(site: str) -> tuple[str, str, str]:
    site = SITE_ALIASES.get(site, site)
    if site not in SITES:
        raise InputError(
            f"Unknown patching site {site!r}: choose one of {', '.join(SITES)} (aliases: {', '.join(SITE_ALIASES)})."
        )
    return (site, *SITES[site])


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
class _SweepSetup:
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


def _sweep_setup(model, clean, corrupted, site, by, into, layers, positions) -> _SweepSetup:
    """Checked arguments shared by the exact sweep and its attribution estimate."""
    from codecircuits.core.batching import paired_tokens

    site, hook_suffix, kind = _site(site)
    by = tuple(by) if by is not None else DEFAULT_BY[kind]
    if by not in ALLOWED_BY[kind]:
        raise InputError(
            f"Site {site!r} cannot be swept by {by}: choose one of {', '.join(map(str, ALLOWED_BY[kind]))}."
        )
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
    return _SweepSetup(site, hook_suffix, kind, by, clean_t, corr_t, recv_t, donor_t, layer_list, pos_list)


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
    """
    st = _sweep_setup(model, clean, corrupted, site, by, into, layers, positions)
    site, hook_suffix, kind, by = st.site, st.hook_suffix, st.kind, st.by
    clean_t, corr_t, recv_t, donor_t = st.clean_t, st.corr_t, st.recv_t, st.donor_t
    layer_list, pos_list, n_pos = st.layer_list, st.pos_list, int(st.clean_t.shape[1])
    cfg = model.cfg
    n_heads = int(cfg.n_heads)
    from codecircuits.models.summary import kv_head_of, n_kv_heads

    n_kv = n_kv_heads(model)
    if kind == "neuron":
        n_units, units = int(cfg.d_mlp), neurons
    elif "kv_head" in by:
        n_units, units = n_kv, heads
    else:
        n_units, units = n_heads, heads
    if units is not None:
        units = [int(u) for u in units]
        if any(not 0 <= u < n_units for u in units):
            raise InputError(f"Indices {units} are out of range for {n_units} {by[-1]}s.")
    d = first_difference(clean_t, corr_t)
    grid, plans = _plan(by, layer_list, n_units, pos_list, d, units)

    query_kv = kind == "kv" and "head" in by and n_kv != n_heads  # per-query-head patch of a shared slot
    hook_names = [f"blocks.{layer}.{hook_suffix}" for layer in layer_list]
    from codecircuits.core.inputs import check_hook_names

    check_hook_names(model, hook_names)
    extra = []
    if query_kv:
        extra = [f"blocks.{layer}.attn.hook_{'pattern' if site == 'k' else 'z'}" for layer in layer_list]
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
    kv_of = torch.tensor(kv_head_of(model), device=recv_t.device)
    sel_pos = torch.zeros(n_pos, dtype=torch.bool, device=recv_t.device)
    sel_pos[pos_list] = True
    sel_pos[:d] = False  # positions before the first difference are identical in both runs
    overhead = receiver.forward_overhead() if len(plans) > 4 else 0.0
    max_cells = (
        max(1, _parse_budget(memory_budget) // (receiver.row_bytes(min(p.start for p in plans)) * n_ex)) if plans else 1
    )
    groups = _merge(plans, n_pos, n_ex, overhead, max_cells)
    total = sum(len(p.cells) for p in plans)
    with _progress(total, f"patching {site}", progress) as bar:
        for grp in groups:
            start = grp.start
            g_layer, g_pos, g_unit = (t.to(recv_t.device) for t in (grp.layers, grp.pos, grp.unit))

            def make_hooks(cell_of_row, ex_of_row, g_layer=g_layer, g_pos=g_pos, g_unit=g_unit, start=start):
                lay_of_row, pos_of_row, unit_of_row = g_layer[cell_of_row], g_pos[cell_of_row], g_unit[cell_of_row]
                # [rows, s] which suffix positions each row patches
                q = torch.arange(start, n_pos, device=pos_of_row.device)
                pmask = torch.where(
                    pos_of_row[:, None] < 0, sel_pos[start:][None, :], q[None, :] == pos_of_row[:, None]
                )
                hooks = []
                for L in sorted(set(lay_of_row.tolist())):
                    on = lay_of_row == L  # the rows that patch at this layer
                    src = donor_cache[f"blocks.{L}.{hook_suffix}"][ex_of_row]
                    pm = pmask & on[:, None]
                    if kind == "vec":
                        m = pm[:, :, None]
                    elif kind in ("head", "kv", "neuron"):
                        slot = kv_of[unit_of_row] if query_kv else unit_of_row
                        umask = torch.nn.functional.one_hot(slot, src.shape[2]).bool()  # [rows, slots]
                        m = pm[:, :, None] & umask[:, None, :]
                        m = m[..., None] if src.dim() == 4 else m
                    else:  # pattern [rows, head, dest, src]: whole rows of the patched destination positions
                        umask = torch.nn.functional.one_hot(unit_of_row, n_heads).bool()
                        m = umask[:, :, None, None] & pm[:, None, :, None]
                    src_s = src[:, :, start:] if kind == "pattern" else src[:, start:]
                    hooks.append(
                        (f"blocks.{L}.{hook_suffix}", lambda act, hook=None, m=m, v=src_s: torch.where(m, v, act))
                    )
                    if query_kv:
                        # the slot is shared: the other query heads of its group keep the receiver's values, which
                        # are exact at the patched layer
                        other = (
                            (kv_of[None, :] == kv_of[unit_of_row][:, None])
                            & (torch.arange(n_heads, device=kv_of.device)[None, :] != unit_of_row[:, None])
                            & on[:, None]
                        )  # [rows, head]
                        if site == "k":
                            cached = receiver[f"blocks.{L}.attn.hook_pattern"][ex_of_row][:, :, start:]
                            m2, name2 = other[:, :, None, None], f"blocks.{L}.attn.hook_pattern"
                        else:
                            cached = receiver[f"blocks.{L}.attn.hook_z"][ex_of_row][:, start:]
                            m2, name2 = other[:, None, :, None], f"blocks.{L}.attn.hook_z"
                        hooks.append((name2, lambda act, hook=None, m=m2, v=cached: torch.where(m, v, act)))
                return hooks

            vals = run_cells(
                receiver, metric, grp.layer, start, len(grp.cells), make_hooks, memory_budget=memory_budget, pbar=bar
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
    from codecircuits.core.batching import paired_tokens
    from codecircuits.models.summary import n_kv_heads

    site, _, kind = _site(site)
    by = tuple(by) if by is not None else DEFAULT_BY[kind]
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
