"""MINT (Gu et al., arXiv 2312.05356): repair a wrong next token by editing the value vectors of a few neurons.

1. **locate**: score the neurons of the upper layers by gradient x activation on ``blocks.{l}.mlp.hook_post``
   with respect to ``softmax(logits)[target]`` (L2 norm over positions) and keep the global top candidates
   (:func:`candidate_neurons`);
2. **direction**: the token's semantic basis ``s(t)``, a row of the pseudo-inverse of the unembedding
   (:func:`semantic_basis`), gives the patch direction ``delta = s(target) - s(argmax)``; per layer
   ``delta_l = delta (l+1)/L`` scaled by its range ``max(delta_l) - min(delta_l)`` (:func:`layer_directions`);
3. **plan**: simulate the edit of every candidate in one batched forward (:func:`simulate_edits`, a
   :class:`~codecircuits.core.interventions.ValueVectorEdit`) and choose the one whose simulated edit leaves the
   smallest gap ``p(argmax) - p(target)``;
4. **patch**: ``W_out[l][k] <- (W_out[l][k] + eps * delta_l) / (1 + eps)`` with ``eps = 0.01 * scale``;
5. repeat 3-4 until the target is the argmax or ``max_edits`` edits were made, then roll the token's edits back.

Every forward runs from the lowest editable layer only (:func:`codecircuits.core.runner.run_from`): edits of the
layers above cannot change the residual stream entering it, which is computed once per case.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int

from .. import figures
from ..core.interventions import ValueVectorEdit, hook
from ..core.runner import resid_at, run_from
from ..core.sites import Neuron, hook_name
from ..errors import InputError
from .cases import RepairCase
from .edits import Edits, NeuronEdit, apply_edit, mlp_out_weight, upper_layers

# pinv(W_U W_U^T) per model (d_model^2 floats), computed on first use; dropped with the model
_GRAM_PINV: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def semantic_basis(model, token_ids: Sequence[int] | Int[torch.Tensor, " n"]) -> Float[torch.Tensor, "n d_model"]:
    """Rows of ``pinv(W_U)`` for ``token_ids`` (``[n, d_model]``): the residual direction that reads as the token.

    Uses ``pinv(W_U) = W_U^T (W_U W_U^T)^+``, so only a ``d_model x d_model`` matrix is inverted (once per model).
    """
    W_U = model.W_U.detach().float()
    gram_pinv = _GRAM_PINV.get(model)
    if gram_pinv is None or gram_pinv.shape[0] != W_U.shape[0]:
        gram_pinv = torch.linalg.pinv(W_U @ W_U.T, hermitian=True)
        _GRAM_PINV[model] = gram_pinv
    ids = torch.as_tensor(list(token_ids) if not isinstance(token_ids, torch.Tensor) else token_ids, dtype=torch.long)
    return W_U[:, ids.to(W_U.device)].T @ gram_pinv


def layer_directions(
    model, layers: Sequence[int], target: int, argmax: int, semantics: str = "delta", medium: int | None = None
) -> dict[int, torch.Tensor]:
    """MINT's per-layer patch direction ("traction") ``[d_model]``, range-normalised, for each of ``layers``
    whose direction is not flat. ``semantics``: ``"delta"`` (``s(target) - s(argmax)``) or ``"basis"``
    (interpolate from the input embedding of token ``medium`` to ``s(target)``)."""
    n = model.cfg.n_layers
    s = semantic_basis(model, [target, argmax])
    out = {}
    for layer in layers:
        r = (layer + 1) / n
        if semantics == "delta":
            d = (s[0] - s[1]) * r
        elif semantics == "basis":
            e = model.W_E[medium].detach().float()
            d = torch.lerp(e, s[0], r)
        else:
            raise InputError(f"Unknown semantics {semantics!r}; use 'delta' or 'basis'.")
        rng = float(d.max() - d.min())
        if rng > 1e-12:
            out[layer] = d / rng
    return out


def candidate_neurons(
    model,
    tokens: Int[torch.Tensor, "1 pos"],
    pos: int,
    target: int,
    layers: Sequence[int],
    k: int = 10,
    *,
    resid: Float[torch.Tensor, "1 pos d_model"] | None = None,
) -> list[tuple[int, int, float]]:
    """Top-``k`` (layer, neuron, score) by gradient x activation on ``mlp.hook_post`` w.r.t. p(target) at ``pos``,
    L2-normed over positions 0..pos. Only the layers from ``min(layers)`` on run; ``resid`` (``resid_pre`` of
    ``min(layers)``) saves computing their input again."""
    layers = sorted(layers)
    start = layers[0]
    names = [hook_name("post", layer) for layer in layers]
    acts: dict[str, torch.Tensor] = {}

    def keep(x, hook):
        acts[hook.name] = x
        return x

    if resid is None:
        resid = resid_at(model, tokens, start)
    x = resid[:, : pos + 1].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = run_from(model, x, start, fwd_hooks=[(n, keep) for n in names])
        prob = logits[0, pos].float().softmax(-1)[target]
        grads = torch.autograd.grad(prob, [acts[n] for n in names])
    scores = torch.stack([(g * acts[n]).detach()[0].float().norm(dim=0) for n, g in zip(names, grads)])  # [L, d_mlp]
    top = scores.flatten().topk(min(k, scores.numel()))
    d_mlp = scores.shape[1]
    return [(layers[i // d_mlp], i % d_mlp, float(v)) for v, i in zip(top.values.tolist(), top.indices.tolist())]


@torch.no_grad()
def simulate_edits(
    model,
    tokens: Int[torch.Tensor, "1 pos"],
    pos: int,
    cands: Sequence[tuple[int, int, float]],
    rows_new: Sequence[Float[torch.Tensor, " d_model"]],
    target: int,
    argmax: int,
    *,
    resid: Float[torch.Tensor, "1 pos d_model"] | None = None,
    start: int | None = None,
) -> Float[torch.Tensor, " n_cands"]:
    """Gap p(argmax) - p(target) at ``pos`` for each candidate's simulated value-vector edit (row change
    ``rows_new[i]`` added to the value vector of candidate ``i``'s neuron), in one batched forward from
    ``start`` (default: the lowest candidate layer) in which batch row ``i`` carries candidate ``i``'s edit. Only
    position ``pos`` is unembedded."""
    b = len(cands)
    start = min(c[0] for c in cands) if start is None else start
    if resid is None:
        resid = resid_at(model, tokens, start)
    x = resid[:, : pos + 1].expand(b, -1, -1)
    device = x.device
    neurons = torch.tensor([c[1] for c in cands], dtype=torch.long, device=device)
    deltas = torch.stack([torch.as_tensor(r).to(device) for r in rows_new])
    hooks = []
    for layer in sorted({c[0] for c in cands}):
        rows = torch.tensor([c[0] == layer for c in cands], device=device)
        edit = ValueVectorEdit(neurons, deltas)
        hooks += [edit.reader(hook_name("post", layer)), hook(hook_name("mlp_out", layer), edit, rows[:, None, None])]
    probs = run_from(model, x, start, fwd_hooks=hooks, read_positions=[pos])[:, 0].float().softmax(-1)
    return probs[:, argmax] - probs[:, target]


@dataclass(frozen=True)
class TokenRepair:
    """The repair of one wrong token: where, what, the edits kept (empty if rolled back) and the steps tried."""

    index: int  # into the case's reference line
    target: int
    wrong: int
    fixed: bool
    steps: int
    edits: Edits
    candidates: tuple[tuple[int, int, float], ...]


@dataclass(frozen=True)
class RepairResult:
    """MINT on one case. The model is left edited; ``undo(model)`` restores it exactly."""

    case: RepairCase
    success: bool  # every reference token is the greedy prediction after the repair
    tokens: tuple[TokenRepair, ...]
    edits: Edits
    seconds: float
    predicted_after: tuple[int, ...]
    settings: dict = field(default_factory=dict)

    @property
    def n_edits(self) -> int:
        return len(self.edits)

    @property
    def n_neurons(self) -> int:
        return len(self.edits.neurons)

    def undo(self, model) -> None:
        self.edits.undo(model)

    def to_dataframe(self):
        import pandas as pd

        rows = []
        for t in self.tokens:
            rows.append(
                {
                    "index": t.index,
                    "target": t.target,
                    "wrong": t.wrong,
                    "fixed": t.fixed,
                    "steps": t.steps,
                    "neurons": ",".join(str(Neuron(a, b)) for a, b in t.edits.neurons),
                }
            )
        return pd.DataFrame(rows)

    def top(self, k: int = 10):
        """The ``k`` wrong tokens that took the most edit steps: the rows of :meth:`to_dataframe` with the largest
        ``steps`` first (the largest edits themselves: ``self.edits.top(k)``)."""
        df = self.to_dataframe()
        return df.sort_values("steps", ascending=False, kind="stable").head(k) if len(df) else df

    def plot(self, k: int = 20) -> figures.Figure:
        """The wrong tokens (:meth:`top`, at most ``k``) as bars of the edit steps each took."""
        df = self.top(k)
        if not len(df):
            raise InputError("No wrong tokens were repaired: nothing to plot.")
        df["token"] = [f"token {i} ({'fixed' if f else 'not fixed'})" for i, f in zip(df["index"], df["fixed"])]
        where = f"{self.case.source}:{self.case.line_no}"
        return figures.top_bars(df, "steps", label="token", title=f"MINT on {where}: edit steps per token")


def mint_repair(
    model,
    case: RepairCase,
    *,
    layers: str | Sequence[int] = "half",
    n_candidates: int = 10,
    max_edits: int = 10,
    scale: float = 1.0,
    semantics: str = "delta",
    orthogonalize: bool = False,
) -> RepairResult:
    """Repair ``case`` with MINT, token by token along the reference line (teacher-forced).

    Args:
        layers: which layers' neurons may be edited (default: the upper half).
        n_candidates: neurons located per wrong token by gradient x activation.
        max_edits: edits allowed per token before its edits are rolled back (MINT's ``MAX_PATCHING_NUM``).
        scale: the edit size is ``eps = 0.01 * scale`` (MINT's planning factor is 0.01; its benchmark uses 10x).
        semantics: ``"delta"`` (``s(target) - s(argmax)``) or ``"basis"`` (interpolate from the last token's input
            embedding to ``s(target)``).
        orthogonalize: project each direction off the directions already used in the same layer.
    """
    if max_edits < 1 or n_candidates < 1:
        raise InputError("max_edits and n_candidates must be at least 1.")
    if scale < 0:
        raise InputError(f"scale must be >= 0; got {scale}.")
    layer_list = upper_layers(model, layers)
    eps = 0.01 * scale
    t0 = time.perf_counter()
    tokens = case.tokens
    start = layer_list[0]
    resid = resid_at(model, tokens, start)  # edits only touch layers >= start: compute the rest once

    def greedy() -> torch.Tensor:
        with torch.no_grad():
            return run_from(model, resid, start).argmax(-1)[0].cpu()

    history: dict[int, list[torch.Tensor]] = {}
    repairs, kept = [], Edits(model_name=str(model.cfg.model_name))
    current = greedy()
    for i, target in enumerate(case.reference):
        pos = case.positions[i]
        wrong = int(current[pos])
        if wrong == target:
            continue
        medium = int(tokens[0, pos])
        dirs = layer_directions(model, layer_list, target, wrong, semantics, medium)
        if orthogonalize:
            for layer, d in list(dirs.items()):
                u = d.clone()
                for h in history.get(layer, []):
                    u = u - (u @ h) * h
                if u.norm() > 1e-8:
                    dirs[layer] = u / u.norm() * d.norm()
        cands = candidate_neurons(model, tokens, pos, target, layer_list, n_candidates, resid=resid)
        cands = [c for c in cands if c[0] in dirs]
        token_edits: list[NeuronEdit] = []
        steps, argmax = 0, wrong
        while argmax != target and steps < max_edits and cands:
            deltas = []
            for layer, k, _ in cands:
                w = mlp_out_weight(model, layer)
                row = w[k].detach().float()
                new = (row + eps * dirs[layer].to(row.device)) / (1 + eps)
                deltas.append((new - row).to(w.dtype))
            gaps = simulate_edits(model, tokens, pos, cands, deltas, target, argmax, resid=resid, start=start)
            best = int(gaps.argmin())
            layer, k, _ = cands[best]
            w = mlp_out_weight(model, layer)
            row = w[k].detach().float()
            new = (row + eps * dirs[layer].to(row.device)) / (1 + eps)
            token_edits.append(apply_edit(model, layer, k, new))
            steps += 1
            argmax = int(greedy()[pos])
        fixed = argmax == target
        if not fixed:
            Edits(tuple(token_edits)).undo(model)
            token_edits = []
        else:
            for layer in {e.layer for e in token_edits}:
                d = dirs[layer]
                history.setdefault(layer, []).append(d / d.norm())
        te = Edits(tuple(token_edits), str(model.cfg.model_name))
        kept = kept + te
        repairs.append(TokenRepair(i, int(target), wrong, fixed, steps, te, tuple(cands)))
        current = greedy()
    after = tuple(int(current[p]) for p in case.positions)
    settings = dict(layers=layer_list if not isinstance(layers, str) else layers, n_candidates=n_candidates,
                    max_edits=max_edits, scale=scale, semantics=semantics, orthogonalize=orthogonalize)
    return RepairResult(case=case, success=after == tuple(case.reference), tokens=tuple(repairs), edits=kept,
                        seconds=time.perf_counter() - t0, predicted_after=after, settings=settings)


__all__ = [
    "RepairResult",
    "TokenRepair",
    "candidate_neurons",
    "layer_directions",
    "mint_repair",
    "semantic_basis",
    "simulate_edits",
]
