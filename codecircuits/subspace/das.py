"""Directions at a hook: learned by distributed alignment search (DAS), the difference of class means, or random.

DAS (Geiger et al.; Makelov, Lange, Nanda 2023) learns a unit vector, kept on the sphere by an orthogonal
parametrisation (TransformerLens's :class:`LearnedSubspace` of rank 1), trained with Adam on the cross-entropy of the
patched answer logits towards the *source's* answer. TransformerLens's ``fit_das`` is not used directly because its
task-logit callback sees only the inputs, so it cannot read each prompt at its own last position when prompts of
different lengths are batched together (right-padded), and it has no progress bar or learning-rate schedule;
:func:`fit_direction` is the same loop with those added (the test-suite checks that on equal-length prompts, with
the schedule off, it learns the same direction as ``fit_das``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from tqdm.auto import tqdm
from transformer_lens.tools.analysis.interchange import LearnedSubspace, mean_difference_basis, random_basis

from .. import figures
from ..core.inputs import check_hook_names
from ..core.interventions import SubspaceSwap, hook
from ..core.sites import layer_of_hook
from ..errors import InputError
from .pairs import PatchPairs, answer_logits, base_residual, batch_slices, check_pairs, start_layer


@dataclass(frozen=True)
class Direction:
    """A unit direction at a hook point.

    Attributes:
        vector: ``[d]`` unit vector (axis ``axes[0]``).
        hook_name: where it lives.
        kind: how it was made: ``"das"``, ``"mean_difference"``, ``"random"``, ``"rowspace"``, ``"nullspace"``...
        losses: mean training loss per epoch (DAS only).
        settings: the settings that produced it.
    """

    vector: torch.Tensor
    hook_name: str
    kind: str
    losses: tuple[float, ...] = ()
    settings: dict = field(default_factory=dict)
    axes: tuple[str, ...] = ("d",)

    @property
    def basis(self) -> torch.Tensor:
        """``[d, 1]`` orthonormal basis (for :class:`~codecircuits.core.interventions.SubspaceSwap`)."""
        return self.vector[:, None]

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({"index": np.arange(len(self.vector)), "weight": self.vector.numpy()})

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` rows of :meth:`to_dataframe` (coordinates: neurons, for an MLP hook) with the largest
        ``|weight|`` (a direction's sign is arbitrary), largest first."""
        df = self.to_dataframe()
        order = df["weight"].abs().sort_values(ascending=False, kind="stable").index
        return df.reindex(order).head(k).reset_index(drop=True)

    def plot(self, k: int = 20) -> figures.Figure:
        """The top ``k`` coordinates (:meth:`top`) as bars of their weight."""
        return figures.top_bars(self.top(k), "weight", label="index",
                                title=f"{self.kind} direction at {self.hook_name}: top {k} coordinates")


def unit_vector(v: torch.Tensor) -> Float[torch.Tensor, " d"]:
    """``v`` flattened, on the CPU in float32, divided by its norm; an error for a zero or non-finite norm."""
    v = v.detach().float().cpu().flatten()
    n = v.norm()
    if n == 0 or not torch.isfinite(n):
        raise InputError("The direction has zero (or non-finite) norm; a subspace patch needs a nonzero direction.")
    return v / n


def _stop_layer(model, hook_name: str) -> int | None:
    layer = layer_of_hook(hook_name)
    return layer + 1 if layer is not None and layer + 1 < model.cfg.n_layers else None


@torch.no_grad()
def activations(
    model,
    hook_name: str,
    tokens: Int[torch.Tensor, "prompt pos"],
    positions: Int[torch.Tensor, " prompt"],
    *,
    batch_size: int = 64,
) -> Float[torch.Tensor, "prompt d"]:
    """Activations ``[prompt, d]`` at ``hook_name`` at one position per prompt (the forward stops after the hook)."""
    check_hook_names(model, hook_name)
    stop = _stop_layer(model, hook_name)
    out = []
    for sl in batch_slices(len(tokens), batch_size):
        store: list[torch.Tensor] = []

        def grab(act, hook, _pos=positions[sl], store=store):
            if act.dim() != 3:
                raise InputError(
                    f"{hook_name} has activations of shape {tuple(act.shape)}; subspace patching needs a hook with "
                    "[batch, pos, d] activations (residual stream, mlp.hook_post, hook_attn_out, ...)."
                )
            store.append(act[torch.arange(act.shape[0]), _pos.to(act.device)].detach().float().cpu())

        with model.hooks(fwd_hooks=[(hook_name, grab)]):
            model(tokens[sl].to(model.cfg.device), stop_at_layer=stop)
        out.append(store[0])
    return torch.cat(out)


def fit_direction(
    model,
    pairs: PatchPairs,
    hook_name: str,
    *,
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 1e-2,
    final_lr_factor: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> Direction:
    """Learn a 1-D direction at ``hook_name`` by distributed alignment search.

    Trains a unit vector (orthogonally parametrised, :class:`LearnedSubspace` of rank 1) so that patching it from
    source to base makes the model predict the source's answer: Adam at ``lr``, decayed linearly to
    ``final_lr_factor * lr`` (Makelov et al. use 0.01 -> 0.001), cross-entropy over the answer tokens at each base
    prompt's last position. With ``final_lr_factor=1`` the loop is that of TransformerLens's ``fit_das``. The base
    runs start at the hook's layer from the cached residual there (the layers before it cannot change).
    """
    check_pairs(model, pairs, hook_name)
    if epochs < 1 or batch_size < 1:
        raise InputError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}.")
    source = activations(model, hook_name, pairs.source_tokens, pairs.source_positions, batch_size=batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        subspace = LearnedSubspace(source.shape[1], 1)
    device = next(iter(model.parameters())).device
    subspace = subspace.to(device)
    optimizer = torch.optim.Adam(subspace.parameters(), lr=lr)
    n_steps = epochs * math.ceil(len(pairs) / batch_size)
    schedule = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, final_lr_factor, total_iters=max(1, n_steps))
    targets = pairs.source_values
    layer = start_layer(model, hook_name)  # the base runs start at the hook's layer (the earlier ones never change)
    base_resid = base_residual(model, pairs.base_tokens, layer)
    rng = np.random.default_rng(seed)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    losses = []
    bar = tqdm(total=n_steps, desc=f"DAS {hook_name}", disable=not progress, leave=False)
    try:
        for _ in range(epochs):
            order = torch.as_tensor(rng.permutation(len(pairs)))
            total = 0.0
            for chunk in batch_slices(len(order), batch_size):
                idx = order[chunk]
                optimizer.zero_grad()
                swap = SubspaceSwap(subspace.basis, source[idx], 1.0, positions=pairs.base_positions[idx])
                logits = answer_logits(model, pairs.base_tokens[idx], pairs.base_positions[idx], pairs.answer_ids,
                                       [hook(hook_name, swap)], layer=layer,
                                       resid=None if base_resid is None else base_resid[idx.to(base_resid.device)])
                loss = F.cross_entropy(logits, targets[idx].to(logits.device))
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(idx)
                bar.update(1)
            losses.append(total / len(pairs))
    finally:
        bar.close()
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    vector = subspace.basis.detach().float().cpu()[:, 0]
    settings = dict(epochs=epochs, batch_size=batch_size, lr=lr, final_lr_factor=final_lr_factor, seed=seed)
    return Direction(unit_vector(vector), hook_name, "das", tuple(losses), settings)


def clean_activations(model, pairs: PatchPairs, hook_name: str, batch_size: int = 64):
    """Clean activations ``[prompt, d]`` of every distinct prompt in the pairs (bases, then sources, each once) at
    its last token, and each prompt's feature value ``[prompt]``."""
    seen: dict[str, int] = {}
    rows_t, rows_p, values = [], [], []
    for toks, pos, vals, texts in (
        (pairs.base_tokens, pairs.base_positions, pairs.base_values, pairs.base_prompts),
        (pairs.source_tokens, pairs.source_positions, pairs.source_values, pairs.source_prompts),
    ):
        for i, text in enumerate(texts):
            if text in seen:
                continue
            seen[text] = len(values)
            rows_t.append(toks[i, : int(pos[i]) + 1])
            rows_p.append(int(pos[i]))
            values.append(int(vals[i]))
    width = max(len(r) for r in rows_t)
    tokens = torch.zeros(len(rows_t), width, dtype=torch.long)
    for i, r in enumerate(rows_t):
        tokens[i, : len(r)] = r
    acts = activations(model, hook_name, tokens, torch.tensor(rows_p), batch_size=batch_size)
    return acts, torch.tensor(values)


def mean_difference_direction(model, pairs: PatchPairs, hook_name: str, *, batch_size: int = 64) -> Direction:
    """The difference of the class means of clean activations (a non-optimised direction), for two values."""
    check_pairs(model, pairs, hook_name)
    acts, values = clean_activations(model, pairs, hook_name, batch_size)
    if len(values.unique()) != 2:
        raise InputError(f"The difference of means needs exactly two feature values, found {values.unique().tolist()}.")
    basis = mean_difference_basis(acts, values.tolist())
    # orient it from value 0 to value 1 so its sign is meaningful
    v = basis[:, 0]
    if (acts[values == 1].mean(0) - acts[values == 0].mean(0)) @ v < 0:
        v = -v
    return Direction(unit_vector(v), hook_name, "mean_difference")


def random_direction(model, hook_name: str, *, seed: int = 0) -> Direction:
    """A seeded random unit direction at ``hook_name``: the placebo a learned direction should beat."""
    check_hook_names(model, hook_name)
    d = model.cfg.d_mlp if hook_name.endswith(("mlp.hook_post", "mlp.hook_pre")) else model.cfg.d_model
    return Direction(unit_vector(random_basis(d, 1, seed)[:, 0]), hook_name, "random", settings={"seed": seed})


__all__ = [
    "Direction",
    "activations",
    "clean_activations",
    "fit_direction",
    "mean_difference_direction",
    "random_direction",
    "unit_vector",
]
