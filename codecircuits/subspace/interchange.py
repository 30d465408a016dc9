"""The subspace interchange on pairs: patch each base prompt's last-position activation from its source inside a
subspace, and measure what that does to the answer (logit differences, FLDD, interchange accuracy).

The patch is :class:`~codecircuits.core.interventions.SubspaceSwap` at each base prompt's last position, installed
by :func:`codecircuits.core.interventions.hook`: ``w' = w + strength * ((u - w) @ B) @ B.T`` for an orthonormal
basis ``B`` (``[d, k]``), which is TransformerLens's ``SubspaceInterchange``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from .. import figures, intervals
from ..core import sites
from ..core.interventions import SubspaceSwap, hook
from ..errors import InputError
from .das import Direction, activations, unit_vector
from .pairs import PatchPairs, base_residual, batch_slices, check_pairs, last_logits, start_layer
from .stats import bootstrap_rows, fldd_rows


def fldd_of(ld_clean: torch.Tensor, ld_patched: torch.Tensor) -> float:
    """``100 * (1 - mean LD_patched / mean LD_clean)`` (the statistic the intervals resample)."""
    return float(100.0 * (1.0 - ld_patched.double().mean() / ld_clean.double().mean()))


@dataclass(frozen=True)
class PatchResult:
    """What one patch did to a set of pairs.

    Attributes:
        name: what was patched (e.g. ``"das"``, ``"full"``).
        hook_name: where.
        fldd: ``100 * (1 - mean LD_patched / mean LD_clean)``: the percentage of the clean logit difference the
            patch removes (100: the two answers tie; above 100: the source's answer wins).
        interchange_accuracy: fraction of pairs whose patched argmax over the *answer tokens* is the source answer.
        ld_clean, ld_patched: ``[pair]`` logit differences ``logit(base answer) - logit(source answer)``.
        dimension: the patched subspace's dimension (the activation size for a full patch, 0 for none).
        strength: the interchange strength.
        hits, hits_vocab: ``[pair]`` whether the patched argmax over the answer tokens / over the *whole
            vocabulary* is the source's answer (``interchange_accuracy_vocab`` is the mean of the latter).
    """

    name: str
    hook_name: str
    fldd: float
    interchange_accuracy: float
    ld_clean: torch.Tensor
    ld_patched: torch.Tensor
    dimension: int
    strength: float
    hits: torch.Tensor | None = None
    hits_vocab: torch.Tensor | None = None
    axes: tuple[str, ...] = ("pair",)

    @property
    def n_pairs(self) -> int:
        return len(self.ld_clean)

    @property
    def interchange_accuracy_vocab(self) -> float:
        return float("nan") if self.hits_vocab is None else float(self.hits_vocab.float().mean())

    @cached_property
    def fldd_interval(self) -> intervals.Interval:
        """FLDD with its 95% bootstrap interval over pairs (clean and patched LD resampled together)."""
        return bootstrap_rows(fldd_rows, self.ld_clean, self.ld_patched)

    @cached_property
    def accuracy_interval(self) -> intervals.Interval:
        """Two-token interchange accuracy with its 95% bootstrap interval over pairs."""
        hits = self.hits if self.hits is not None else (self.ld_patched < 0)
        return intervals.mean(hits.float())

    @cached_property
    def accuracy_vocab_interval(self) -> intervals.Interval | None:
        """Full-vocabulary interchange accuracy with its 95% bootstrap interval over pairs."""
        return None if self.hits_vocab is None else intervals.mean(self.hits_vocab.float())

    def summary(self) -> dict:
        f = self.fldd_interval
        return dict(name=self.name, hook=self.hook_name, dimension=self.dimension, fldd=self.fldd, fldd_low=f.low,
                    fldd_high=f.high, interchange_accuracy=self.interchange_accuracy,
                    interchange_accuracy_vocab=self.interchange_accuracy_vocab, ld_clean=float(self.ld_clean.mean()),
                    ld_patched=float(self.ld_patched.mean()), n_pairs=self.n_pairs)

    def intervals(self) -> dict:
        """Every headline number of the patch with its interval (JSON-ready)."""
        out = dict(fldd=self.fldd_interval.to_json(), interchange_accuracy=self.accuracy_interval.to_json())
        if self.accuracy_vocab_interval is not None:
            out["interchange_accuracy_vocab"] = self.accuracy_vocab_interval.to_json()
        return out

    def to_dataframe(self) -> pd.DataFrame:
        """One row per pair (the index): the logit difference clean and patched, and its ``drop``
        (``ld_clean - ld_patched``)."""
        df = pd.DataFrame({"ld_clean": self.ld_clean.numpy(), "ld_patched": self.ld_patched.numpy()})
        df["drop"] = df["ld_clean"] - df["ld_patched"]
        return df

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` pairs the patch moved most: the rows of :meth:`to_dataframe` with the largest signed ``drop`` in
        logit difference first (the index is the pair)."""
        return self.to_dataframe().sort_values("drop", ascending=False, kind="stable").head(k)

    def plot(self, k: int = 20) -> figures.Figure:
        """The ``k`` pairs the patch moved most (:meth:`top`) as bars of the drop in logit difference."""
        df = self.top(k)
        df["pair"] = [f"pair {i}" for i in df.index]
        return figures.top_bars(df, "drop", label="pair", title=f"{self.name} patch at {self.hook_name}: top {k} pairs")


def _ld(logits: torch.Tensor, pairs: PatchPairs) -> torch.Tensor:
    rows = torch.arange(len(logits))
    return logits[rows, pairs.base_values] - logits[rows, pairs.source_values]


@torch.no_grad()
def patched_vocab_logits(
    model,
    pairs: PatchPairs,
    hook_name: str,
    basis: Float[torch.Tensor, "d k"] | None,
    strength: float = 1.0,
    batch_size: int = 64,
    source: Float[torch.Tensor, "pair d"] | None = None,
    base_resid: torch.Tensor | None = None,
) -> Float[torch.Tensor, "pair vocab"]:
    """Logits over the whole vocabulary ``[pair, vocab]`` at each base prompt's last token, with the base's
    activation at ``hook_name`` there swapped inside ``basis`` for the source's; ``basis=None`` is the clean run.

    ``base_resid`` (``blocks.{l}.hook_resid_pre`` of the base prompts, for the hook's layer ``l``) lets the patched
    runs start at that layer; it is computed here when ``None`` (the clean run starts there only when it is given)."""
    out = []
    layer = start_layer(model, hook_name)
    if basis is None:  # clean run: from the given residual (only the last positions unembedded), else the tokens
        for sl in batch_slices(len(pairs), batch_size):
            resid = None if base_resid is None or layer is None else base_resid[sl]
            out.append(
                last_logits(model, pairs.base_tokens[sl], pairs.base_positions[sl], layer=layer, resid=resid).cpu()
            )
        return torch.cat(out)
    if source is None:
        source = activations(model, hook_name, pairs.source_tokens, pairs.source_positions, batch_size=batch_size)
    if base_resid is None:
        base_resid = base_residual(model, pairs.base_tokens, layer)
    for sl in batch_slices(len(pairs), batch_size):
        swap = SubspaceSwap(basis, source[sl], strength, positions=pairs.base_positions[sl])
        resid = None if base_resid is None else base_resid[sl]
        logits = last_logits(
            model, pairs.base_tokens[sl], pairs.base_positions[sl], [hook(hook_name, swap)], layer=layer, resid=resid
        )
        out.append(logits.cpu())
    return torch.cat(out)


@torch.no_grad()
def patched_logits(
    model,
    pairs: PatchPairs,
    hook_name: str,
    basis: Float[torch.Tensor, "d k"] | None,
    strength: float = 1.0,
    batch_size: int = 64,
    source: Float[torch.Tensor, "pair d"] | None = None,
    base_resid: torch.Tensor | None = None,
) -> Float[torch.Tensor, "pair value"]:
    """Answer logits ``[pair, value]`` at each base prompt's last token, with the base's activation at ``hook_name``
    there swapped inside ``basis`` for the source's (``source``: the source activations ``[pair, d]``, collected
    when ``None``); ``basis=None`` is the clean run (no patch)."""
    logits = patched_vocab_logits(model, pairs, hook_name, basis, strength, batch_size, source, base_resid)
    return logits[:, pairs.answer_ids]


def patch(
    model,
    pairs: PatchPairs,
    hook_name: str,
    direction: Direction | torch.Tensor | None = None,
    *,
    strength: float = 1.0,
    name: str | None = None,
    batch_size: int = 64,
    clean: Float[torch.Tensor, "pair value"] | None = None,
    source: Float[torch.Tensor, "pair d"] | None = None,
    base_resid: torch.Tensor | None = None,
) -> PatchResult:
    """Patch each base prompt's last-position activation at ``hook_name`` from its source, inside a subspace.

    ``direction`` is a :class:`Direction`, a ``[d]`` vector (normalised here), a ``[d, k]`` orthonormal basis, or
    ``None`` for the full component (the identity basis). A ``[d, 0]`` basis or ``strength=0`` changes nothing.
    ``clean`` (the clean answer logits, ``patched_logits(..., basis=None)``), ``source`` (the source activations
    at ``hook_name``, :func:`~codecircuits.subspace.das.activations`) and ``base_resid`` (the base prompts'
    residual entering the hook's layer, :func:`~codecircuits.subspace.pairs.base_residual`) reuse what several
    patches of the same pairs share.
    """
    check_pairs(model, pairs, hook_name)
    if source is None:
        source = activations(model, hook_name, pairs.source_tokens, pairs.source_positions, batch_size=batch_size)
    d = source.shape[1]
    if direction is None:
        basis, label = torch.eye(d), "full"
    elif isinstance(direction, Direction):
        basis, label = direction.basis, direction.kind
    else:
        t = torch.as_tensor(direction).detach().float().cpu()
        basis = unit_vector(t)[:, None] if t.dim() == 1 else t
        label = "subspace"
        if basis.shape[1] > 0 and not torch.allclose(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-4):
            raise InputError("A [d, k] basis must have orthonormal columns (basis.T @ basis = I).")
    if basis.shape[0] != d:
        raise InputError(f"The direction has size {basis.shape[0]} but activations at {hook_name} have size {d}.")
    if base_resid is None:
        base_resid = base_residual(model, pairs.base_tokens, start_layer(model, hook_name))
    if clean is None:
        clean = patched_logits(model, pairs, hook_name, None, 1.0, batch_size, base_resid=base_resid)
    vocab = patched_vocab_logits(model, pairs, hook_name, basis, strength, batch_size, source, base_resid)
    patched = vocab[:, pairs.answer_ids]
    ld_clean, ld_patched = _ld(clean, pairs), _ld(patched, pairs)
    fldd = fldd_of(ld_clean, ld_patched)
    hits = patched.argmax(-1) == pairs.source_values
    hits_vocab = vocab.argmax(-1) == pairs.answer_ids[pairs.source_values]
    iia = float(hits.float().mean())
    return PatchResult(
        name or label, hook_name, fldd, iia, ld_clean, ld_patched, int(basis.shape[1]), strength, hits, hits_vocab
    )


def full_patch_sweep(model, pairs: PatchPairs, *, progress: bool = False) -> dict[str, list[float]]:
    """FLDD of the full-component last-position patch at every layer's residual stream (``"resid"``:
    ``hook_resid_post``) and MLP (``"mlp"``: ``mlp.hook_post``), one value per layer: where the feature can be
    patched at all. The source activations and the base residuals the patched runs start from are cached once."""
    hooks = {
        kind: [sites.hook_name(site, layer) for layer in range(model.cfg.n_layers)]
        for kind, site in (("resid", "resid_post"), ("mlp", "post"))
    }
    wanted = set(hooks["resid"]) | set(hooks["mlp"])
    resid_names = {f"blocks.{layer}.hook_resid_pre" for layer in range(1, model.cfg.n_layers)}
    with torch.no_grad():  # every source activation, and every base residual the patched runs start from, once
        _, cache = model.run_with_cache(pairs.source_tokens, names_filter=lambda n: n in wanted)
        _, base_cache = model.run_with_cache(pairs.base_tokens, names_filter=lambda n: n in resid_names)
    rows = torch.arange(len(pairs))
    clean = patched_logits(model, pairs, hooks["resid"][0], None, 1.0, 64)
    out: dict[str, list[float]] = {"resid": [], "mlp": []}
    bar = tqdm(total=len(wanted), desc="full-patch sweep", disable=not progress, leave=False)
    for kind, names in hooks.items():
        for name in names:
            source = cache[name][rows, pairs.source_positions].float().cpu()
            start = start_layer(model, name)
            resid = None if start is None else base_cache[f"blocks.{start}.hook_resid_pre"]
            out[kind].append(patch(model, pairs, name, None, clean=clean, source=source, base_resid=resid).fldd)
            bar.update(1)
    bar.close()
    return out


def choose_hooks(sweep: dict[str, list[float]], *, mlp_layers: Sequence[int] | None = None,
                 resid_layer: int | None = None) -> dict[str, dict]:
    """Three locations to study, chosen from a :func:`full_patch_sweep` as Makelov et al. chose MLP8 and
    resid_post.8 for IOI: ``"mlp_causal"``, the MLP whose full patch matters most; ``"mlp_inert"``, the MLP whose
    full patch matters least once the feature has reached the last position (the residual patch first moves the
    answer half way); ``"resid"``, the residual stream after the inert MLP's layer. ``mlp_layers`` (then
    ``"mlp_0"``, ...) and ``resid_layer`` override the choice. Each is ``{"hook": name, "why": reason}``."""
    n = len(sweep["mlp"])
    mlp = np.asarray(sweep["mlp"])
    resid = np.asarray(sweep["resid"])
    choice: dict[str, dict] = {}
    if mlp_layers:
        for i, layer in enumerate(mlp_layers):
            choice[f"mlp_{i}"] = dict(hook=sites.hook_name("post", layer), why="given in the config")
    else:
        top = int(np.argmax(mlp))
        choice["mlp_causal"] = dict(
            hook=sites.hook_name("post", top), why=f"largest full-MLP patch effect (FLDD {mlp[top]:.1f}%)"
        )
        reached = [layer for layer in range(n) if resid[layer] >= 50.0]
        start = reached[0] if reached else n // 2
        cands = [la for la in range(start, n - 1) if la != top] or [la for la in range(n) if la != top]
        quiet = min(cands, key=lambda layer: abs(mlp[layer]))
        choice["mlp_inert"] = dict(
            hook=sites.hook_name("post", quiet),
            why=f"smallest full-MLP patch effect (FLDD {mlp[quiet]:.1f}%) from layer {start}, where patching the "
            "residual stream first moves the answer half way",
        )
    layer = resid_layer
    if layer is None:
        inert = choice.get("mlp_inert") or next(iter(choice.values()))
        layer = int(inert["hook"].split(".")[1])
        why = "the residual stream after the inert MLP's layer (as resid_post.8 beside MLP8 in the paper)"
    else:
        why = "given in the config"
    why += f"; full-patch FLDD {resid[layer]:.1f}%"
    choice["resid"] = dict(hook=sites.hook_name("resid_post", layer), why=why)
    return choice


__all__ = ["PatchResult", "choose_hooks", "fldd_of", "full_patch_sweep", "patch", "patched_logits",
           "patched_vocab_logits"]
