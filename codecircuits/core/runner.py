"""The one code path that runs a model from a layer: it skips the blocks before that layer, reuses the keys and
values of positions an intervention cannot change, and unembeds only the positions a metric reads.

TransformerLens's bridge takes ``start_at_layer`` but still executes the blocks before it, so a run "from layer
``l``" costs a full forward there. :func:`run_from` swaps those blocks for the identity while it runs, so the
cost is the layers from ``l`` on. :class:`Receiver` caches one forward of the prompts that receive
interventions (the residual entering every layer, the logits, the Hugging Face key/value cache) and
:func:`run_cells` evaluates many interventions at one layer in batched chunks from it, with the metric
protocol of :mod:`codecircuits.core.metrics`::

    >>> resid = resid_at(model, tokens, 6)                       # blocks.6.hook_resid_pre, computed once
    >>> logits = run_from(model, resid, 6, fwd_hooks=hooks)      # only layers 6.. run
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager

import einops
import torch
from jaxtyping import Float, Int

from ..models.kv_cache import forward_cache_to_attention
from .batching import parse_budget
from .metrics import Metrics, metric_positions, per_cell_named
from .sites import UNEMBED_IN, resid_pre

_RETURNS_TUPLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# A forward's fixed cost, in row-layer-position evaluations, that patching.sweep weighs when it decides whether to
# run neighbouring layers' cells in one forward (codecircuits.patching._merge). None (the default) measures it at
# the start of each sweep (Receiver.forward_overhead): a timing, so on a loaded machine the plan of forwards (never
# the numbers: merging is exact) changes from run to run. A number pins the plan: 0 never merges layers,
# float("inf") merges them whenever the memory budget allows. Tests that count the cells of each forward set it
# (monkeypatch.setattr(runner, "FORWARD_OVERHEAD", ...)) so that they assert on a fixed plan.
FORWARD_OVERHEAD: float | None = None


def _returns_tuple(model) -> bool:
    """Whether the model's blocks return a tuple (the Hugging Face layer's convention), found once per model."""
    if model in _RETURNS_TUPLE:
        return _RETURNS_TUPLE[model]
    seen: dict[str, bool] = {}
    handle = model.blocks[0].register_forward_hook(lambda mod, a, o: seen.__setitem__("tuple", type(o) is tuple))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, dtype=torch.long, device=model.cfg.device), stop_at_layer=1)
    finally:
        handle.remove()
    _RETURNS_TUPLE[model] = seen["tuple"]
    return seen["tuple"]


def _identity_forward(returns_tuple: bool):
    def forward(*args, **kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        return (x,) if returns_tuple else x

    return forward


@contextmanager
def skipped_blocks(model, layer: int):
    """Blocks ``0 .. layer - 1`` are the identity inside the ``with`` block (their hooks do not fire)."""
    if layer <= 0:
        yield
        return
    fwd = _identity_forward(_returns_tuple(model))
    blocks = [model.blocks[i] for i in range(layer)]
    for b in blocks:
        object.__setattr__(b, "forward", fwd)
    try:
        yield
    finally:
        for b in blocks:
            object.__delattr__(b, "forward")


def run_from(
    model,
    resid: Float[torch.Tensor, "batch pos d_model"],
    layer: int,
    *,
    fwd_hooks: Sequence = (),
    past_key_values=None,
    read_positions: Sequence[int] | None = None,
) -> torch.Tensor:
    """Logits of a run that starts with ``resid`` as ``blocks.{layer}.hook_resid_pre``; only layers ``>= layer``
    run, with ``fwd_hooks`` installed. Gradients flow unless the caller turns them off.

    ``past_key_values``: a Hugging Face cache of the earlier positions (then ``resid`` holds the later positions
    only). ``read_positions``: positions (indices into ``resid``'s positions) to unembed; the logits are then
    ``[batch, len(read_positions), vocab]``, otherwise ``[batch, pos, vocab]``.
    """
    hooks = list(fwd_hooks)
    if read_positions is not None:
        idx = list(read_positions)
        hooks.append((UNEMBED_IN, lambda act, hook=None: act[:, idx]))
    kwargs = {"past_key_values": past_key_values} if past_key_values is not None else {"use_cache": False}
    with skipped_blocks(model, layer), model.hooks(fwd_hooks=hooks):
        return model(resid, start_at_layer=layer, **kwargs)


def resid_at(model, tokens: Int[torch.Tensor, "batch pos"], layer: int) -> torch.Tensor:
    """``blocks.{layer}.hook_resid_pre`` of ``tokens`` (the forward stops there): the input of :func:`run_from`."""
    name = resid_pre(layer)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=name, stop_at_layer=layer + 1)
    return cache[name]


def run_with_hooks(model, tokens: Int[torch.Tensor, "batch pos"], fwd_hooks: Sequence = (), **kwargs) -> torch.Tensor:
    """A full forward of ``tokens`` with ``fwd_hooks`` installed (``kwargs`` go to the model)."""
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        return model(tokens, **kwargs)


def row_bytes(model, n_pos: int, start: int = 0, n_read: int | None = None) -> int:
    """Rough activation bytes of one batch row of prompts of ``n_pos`` tokens run from position ``start``, with
    logits at ``n_read`` positions (``None``: every position, the cached prefix's included): the unit in which
    memory budgets are turned into chunk sizes."""
    cfg = model.cfg
    s = n_pos - start
    per_pos = 8 * cfg.d_model + 3 * cfg.d_mlp + 3 * cfg.n_heads * n_pos
    n_logits = n_read if n_read is not None else s + n_pos
    return 4 * (s * per_pos + n_logits * cfg.d_vocab)


class Receiver:
    """One cached forward of the prompts that receive interventions: the residual entering every layer,
    the logits and the Hugging Face key/value cache. :meth:`run` then runs a batch of rows (each row one
    of these prompts, with interventions installed as hooks) from layer ``layer`` and position ``start``
    only, reusing the cached keys and values of the earlier positions and skipping the earlier layers.

    ``metric`` (one or a mapping of them) is probed for the positions it reads
    (:func:`~codecircuits.core.metrics.metric_positions`); only those are unembedded in :meth:`run`.
    """

    def __init__(
        self,
        model,
        tokens: Int[torch.Tensor, "batch pos"],
        *,
        extra_names: Sequence[str] = (),
        metric: Metrics | None = None,
    ):
        from transformers import DynamicCache

        forward_cache_to_attention(model)  # transformers >= 5.24 passes the cache on as `cache=`
        self.model = model
        self.tokens = tokens
        self.n_layers = int(model.cfg.n_layers)
        names = {resid_pre(layer) for layer in range(self.n_layers)} | set(extra_names)
        self.kv = DynamicCache(config=model.original_model.config)
        t0 = time.perf_counter()
        with torch.no_grad():
            self.logits, self.cache = model.run_with_cache(
                tokens, names_filter=lambda n: n in names, past_key_values=self.kv
            )
        self.forward_seconds = time.perf_counter() - t0
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

    def prefix_cache(self, layer: int, start: int, rows: torch.Tensor):
        """The key/value cache of positions ``< start`` for ``rows`` (layers before ``layer`` are never read, so
        they hold a broadcast view of the right length)."""
        from transformers import DynamicCache

        sub = DynamicCache(config=self.model.original_model.config)
        for i, lay in enumerate(self.kv.layers):
            if i < layer:
                k = lay.keys[:1, :, :start].expand(len(rows), -1, -1, -1)
                v = lay.values[:1, :, :start].expand(len(rows), -1, -1, -1)
            else:
                k, v = lay.keys[rows, :, :start].contiguous(), lay.values[rows, :, :start].contiguous()
            sub.update(k, v, i)
        return sub

    def run(
        self,
        layer: int,
        start: int,
        rows: Int[torch.Tensor, " rows"],
        fwd_hooks,
        *,
        resid: Float[torch.Tensor, "rows suffix d_model"] | None = None,
    ) -> Float[torch.Tensor, "rows pos vocab"]:
        """Logits ``[len(rows), pos, vocab]`` of the receiver prompts ``rows`` with ``fwd_hooks`` installed.

        Only layers ``>= layer`` and positions ``>= start`` are computed (hooks see those positions only: a
        hook's position ``i`` is the prompt's position ``start + i``); the earlier positions' logits are the
        cached receiver logits. If ``read_positions`` is set (the metric reads only those), only those positions
        are unembedded and the others hold arbitrary values. ``resid`` overrides the residual entering ``layer``
        at positions ``>= start``.
        """
        if resid is None:
            resid = self.cache[resid_pre(layer)][rows, start:]
        sub = self.prefix_cache(layer, start, rows) if start > 0 else None
        read = self.read_positions
        late = [p for p in read if p >= start] if read is not None else None
        with torch.no_grad():
            out = run_from(
                self.model,
                resid,
                layer,
                fwd_hooks=fwd_hooks,
                past_key_values=sub,
                read_positions=[p - start for p in late] if late is not None else None,
            )
        if read is not None:
            # the metric reads only these positions (checked when the receiver was built): the others are left
            # uninitialised rather than copied
            full = torch.empty(len(rows), self.n_pos, out.shape[-1], device=out.device, dtype=out.dtype)
            full[:, late] = out
            early = [p for p in read if p < start]
            if early:
                full[:, early] = self.logits[rows][:, early].to(out.dtype)
            return full
        if start > 0:
            out = torch.cat([self.logits[rows, :start], out], dim=1)
        return out

    def forward_overhead(self) -> float:
        """A forward's fixed cost in row-layer-position evaluations, measured on this machine: the time of a
        one-row, one-layer, one-position run over the time per evaluation of the receiver's full forward.
        :data:`FORWARD_OVERHEAD`, when set, is returned instead (nothing is timed)."""
        if FORWARD_OVERHEAD is not None:
            return float(FORWARD_OVERHEAD)
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
        n_read = len(self.read_positions) if self.read_positions is not None else None
        return row_bytes(self.model, self.n_pos, start, n_read)

    def cells_per_chunk(self, start: int, memory_budget=None) -> int:
        """How many cells (each ``n_examples`` rows) fit one batched forward from ``start`` in the budget."""
        return max(1, parse_budget(memory_budget) // (self.row_bytes(start) * self.n_examples))


def run_cells(
    receiver: Receiver,
    metric: Metrics,
    layer: int,
    start: int,
    n_cells: int,
    make_hooks: Callable[[torch.Tensor, torch.Tensor], list],
    *,
    memory_budget=None,
    pbar=None,
):
    """Metric ``[n_cells, n_examples]`` of ``n_cells`` interventions at one layer, batched in chunks; for a
    mapping of metrics ``{name: [n_cells, n_examples]}``, all from the same forwards.

    ``make_hooks(cell_of_row, example_of_row)`` returns the forward hooks for a chunk whose batch rows are
    ``(cell, example)`` pairs, cell-major. ``metric`` sees each cell's rows on their own, the examples in order
    (:func:`codecircuits.core.metrics.per_cell`), unless it is declared row-wise. Every cell must leave the
    receiver's positions ``< start`` and its layers ``< layer`` unchanged.
    """
    n_ex = receiver.n_examples
    device = receiver.tokens.device
    per_chunk = receiver.cells_per_chunk(start, memory_budget)
    out = []
    for c0 in range(0, n_cells, per_chunk):
        c1 = min(n_cells, c0 + per_chunk)
        cells = torch.arange(c0, c1, device=device)
        cell_of_row = einops.repeat(cells, "cell -> (cell example)", example=n_ex)  # cell-major rows
        ex_of_row = einops.repeat(torch.arange(n_ex, device=device), "example -> (cell example)", cell=c1 - c0)
        logits = receiver.run(layer, start, ex_of_row, make_hooks(cell_of_row, ex_of_row))
        out.append(per_cell_named(metric, logits, c1 - c0, n_ex))
        if pbar is not None:
            pbar.update(c1 - c0)
    if isinstance(metric, Mapping):
        if not out:
            return {k: torch.empty(0, n_ex, device=device) for k in metric}
        return {k: torch.cat([o[k] for o in out]) for k in metric}
    return torch.cat(out) if out else torch.empty(0, n_ex, device=device)


__all__ = ["Receiver", "resid_at", "row_bytes", "run_cells", "run_from", "run_with_hooks", "skipped_blocks"]
