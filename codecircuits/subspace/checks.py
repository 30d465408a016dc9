"""The checks for the subspace-patching illusion (Makelov, Lange, Nanda 2023, METHODS §5).

At an MLP's ``hook_post`` a direction splits as ``v = v_row + v_null`` with ``v_null`` in the kernel of the output
weights ``W_out[l]`` (:func:`readout_matrix`, :func:`rowspace_split`); clean activations projected on a direction
should separate by feature value (:func:`activation_separation`); :func:`illusion_checks` runs all the checks of
the package docstring and gives a verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from ..core import sites
from ..errors import InputError
from .das import Direction, activations, clean_activations, fit_direction, mean_difference_direction, random_direction
from .interchange import PatchResult, patch, patched_logits
from .pairs import PatchPairs, check_pairs


def readout_matrix(model, hook_name: str) -> torch.Tensor | None:
    """The weights through which the activation at ``hook_name`` reaches the rest of the model, if linear.

    For ``blocks.{l}.mlp.hook_post`` it is ``W_out[l]`` (``[d_mlp, d_model]``): the MLP's output is
    ``hook_post @ W_out[l] + b_out[l]``, so directions in the kernel of ``x -> x @ W_out[l]`` are causally inert.
    For other hooks (e.g. the residual stream, read by many components) there is no single readout and it is
    ``None``.
    """
    layer = sites.layer_of_hook(hook_name)
    if layer is None or hook_name != sites.hook_name("post", layer):
        return None
    return model.W_out[layer].detach().float().cpu()


def rowspace_split(
    direction: Float[torch.Tensor, " d"], readout: Float[torch.Tensor, "d k"], *, rtol: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``direction`` (``[d]``) into its part in the column space of ``readout`` (``[d, k]``) and the rest.

    Returns ``(v_row, v_null)`` with ``v_row + v_null = direction``; ``v_null @ readout`` is zero (up to rounding).
    The rank of ``readout`` is taken from its singular values (those above ``rtol`` times the largest).
    """
    readout = readout.detach().float().cpu()
    v = direction.detach().float().cpu()
    if readout.dim() != 2 or readout.shape[0] != v.shape[0]:
        raise InputError(
            f"The readout must be [d, k] with d = {v.shape[0]} (the direction's size); got {tuple(readout.shape)}."
        )
    U, S, _ = torch.linalg.svd(readout, full_matrices=False)
    rank = int((S > rtol * S.max()).sum()) if S.numel() else 0
    Q = U[:, :rank]
    v_row = Q @ (Q.T @ v)
    return v_row, v - v_row


@dataclass(frozen=True)
class Separation:
    """How clean activations projected on a direction separate by feature value.

    Attributes:
        name: which direction (``"v"``, ``"v_row"``, ``"v_null"``, ...).
        cohens_d: ``|mean_1 - mean_0| / pooled std`` of the projections (scale-free).
        mean_gap: ``mean_1 - mean_0`` of the projections onto the (unnormalised) vector, in activation units.
        means, stds: per feature value.
        accuracy: best single-threshold accuracy of telling the values apart from the projection.
        projections, values: ``[prompt]`` the projections and each prompt's value (for histograms).
    """

    name: str
    cohens_d: float
    mean_gap: float
    means: tuple[float, ...]
    stds: tuple[float, ...]
    accuracy: float
    projections: torch.Tensor
    values: torch.Tensor
    axes: tuple[str, ...] = ("prompt",)

    def summary(self) -> dict:
        return dict(
            direction=self.name, cohens_d=self.cohens_d, mean_gap=self.mean_gap, threshold_accuracy=self.accuracy
        )

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({"projection": self.projections.numpy(), "value": self.values.numpy()})

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` prompts with the largest projections."""
        return self.to_dataframe().sort_values("projection", ascending=False).head(k)


def projection_separation(
    name: str,
    acts: Float[torch.Tensor, "prompt d"],
    values: Int[torch.Tensor, " prompt"],
    vector: Float[torch.Tensor, " d"],
) -> Separation:
    """How the projections ``acts @ vector`` separate the prompts of two feature values (``values``): Cohen's d,
    the gap of the means and the best single-threshold accuracy (a :class:`Separation` called ``name``)."""
    proj = acts @ vector.float()
    classes = values.unique().tolist()
    if len(classes) != 2:
        raise InputError(f"Separation needs prompts of exactly two feature values, found {classes}.")
    a, b = proj[values == classes[0]], proj[values == classes[1]]
    sa, sb = (float(x.std()) if len(x) > 1 else 0.0 for x in (a, b))
    pooled = math.sqrt((sa**2 + sb**2) / 2)
    gap = float(b.mean() - a.mean())
    d = abs(gap) / pooled if pooled > 0 else (math.inf if gap != 0 else 0.0)
    # best threshold accuracy over the sorted projections, either orientation
    order = torch.argsort(proj)
    is_b = (values[order] == classes[1]).float()
    n = len(proj)
    below_b = torch.cat([torch.zeros(1), torch.cumsum(is_b, 0)])  # b's at or below each cut
    below_a = torch.arange(n + 1).float() - below_b
    acc1 = (below_a + (is_b.sum() - below_b)) / n  # a below, b above
    acc = float(torch.maximum(acc1, 1 - acc1).max())
    return Separation(name, d, gap, (float(a.mean()), float(b.mean())), (sa, sb), acc, proj, values)


def activation_separation(
    model, pairs: PatchPairs, hook_name: str, vectors: dict[str, torch.Tensor], *, batch_size: int = 64
) -> dict[str, Separation]:
    """Project the clean activations of every distinct prompt on each vector and measure separation by value."""
    check_pairs(model, pairs, hook_name)
    acts, values = clean_activations(model, pairs, hook_name, batch_size)
    return {name: projection_separation(name, acts, values, v.detach().float().cpu()) for name, v in vectors.items()}


@dataclass(frozen=True)
class IllusionReport:
    """The illusion checks of METHODS §5 for one learned direction at one hook.

    Attributes:
        hook_name: where the direction lives.
        direction: the learned (DAS) direction.
        patches: one :class:`PatchResult` per patched object and split, keyed ``"<object>/<split>"`` with objects
            ``full``, ``das``, ``rowspace``, ``nullspace``, ``mean_difference``, ``random`` and splits
            ``train``, ``test``.
        row_norm, null_norm: ``|v_row|`` and ``|v_null|`` (``nan`` where the hook has no linear readout).
        separation: clean-activation separation along ``v``, ``v_row``, ``v_null`` (test prompts).
        verdict: ``"passes"``, ``"suspicious"`` or ``"no effect"``.
        reasons: why, one sentence per failed check (empty when it passes).
        settings: thresholds and training settings.
    """

    hook_name: str
    direction: Direction
    patches: dict[str, PatchResult]
    row_norm: float
    null_norm: float
    separation: dict[str, Separation]
    verdict: str
    reasons: tuple[str, ...]
    settings: dict

    def fldd(self, key: str) -> float:
        return self.patches[key].fldd

    def to_dataframe(self) -> pd.DataFrame:
        rows = []
        for key, r in self.patches.items():
            obj, split = key.split("/")
            rows.append(
                dict(
                    hook=self.hook_name,
                    patched=obj,
                    split=split,
                    **{k: v for k, v in r.summary().items() if k not in ("name", "hook")},
                )
            )
        return pd.DataFrame(rows)

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` patched objects with the largest FLDD."""
        return self.to_dataframe().sort_values("fldd", ascending=False).head(k).reset_index(drop=True)

    def to_dict(self) -> dict:
        return dict(
            hook=self.hook_name,
            verdict=self.verdict,
            reasons=list(self.reasons),
            row_norm=self.row_norm,
            null_norm=self.null_norm,
            patches={k: v.summary() for k, v in self.patches.items()},
            separation={k: v.summary() for k, v in self.separation.items()},
            das_losses=list(self.direction.losses),
            settings=self.settings,
        )


def illusion_checks(
    model,
    train: PatchPairs,
    test: PatchPairs,
    hook_name: str,
    *,
    direction: Direction | None = None,
    readout: torch.Tensor | None = None,
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 1e-2,
    seed: int = 0,
    min_effect: float = 10.0,
    min_cohens_d: float = 1.0,
    all_on_train: bool = False,
    progress: bool = True,
) -> IllusionReport:
    """Learn (or take) a 1-D direction at ``hook_name`` on ``train`` and run the illusion checks on ``test``.

    ``readout`` is the matrix whose column space is the causally connected part of the activation space; by
    default the MLP output weights for ``mlp.hook_post`` and none elsewhere (the split is then skipped).
    ``min_effect`` (FLDD points) is the smallest effect that counts; ``min_cohens_d`` the separation that counts.
    On the training pairs only the full, DAS and rowspace patches are run unless ``all_on_train``.
    """
    check_pairs(model, train, hook_name)
    check_pairs(model, test, hook_name)
    if direction is None:
        direction = fit_direction(
            model, train, hook_name, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress
        )
    elif direction.hook_name != hook_name:
        raise InputError(f"The direction lives at {direction.hook_name}, not {hook_name}.")
    if readout is None:
        readout = readout_matrix(model, hook_name)
    v = direction.vector
    objects: dict[str, torch.Tensor | None] = {"full": None, "das": v}
    row_norm = null_norm = float("nan")
    if readout is not None:
        v_row, v_null = rowspace_split(v, readout)
        row_norm, null_norm = float(v_row.norm()), float(v_null.norm())
        if row_norm > 1e-6:
            objects["rowspace"] = v_row / row_norm
        if null_norm > 1e-6:
            objects["nullspace"] = v_null / null_norm
    objects["mean_difference"] = mean_difference_direction(model, train, hook_name).vector
    objects["random"] = random_direction(model, hook_name, seed=seed + 1).vector

    patches: dict[str, PatchResult] = {}
    splits = {"train": train, "test": test}
    train_objects = ("full", "das", "rowspace") if not all_on_train else tuple(objects)
    bar = tqdm(total=len(objects) + len(train_objects), desc=f"patches {hook_name}", disable=not progress, leave=False)
    for split, pairs in splits.items():
        source = activations(model, hook_name, pairs.source_tokens, pairs.source_positions)
        clean = patched_logits(model, pairs, hook_name, None, 1.0, 64)
        for obj, vec in objects.items():
            if split == "train" and obj not in train_objects:
                continue
            patches[f"{obj}/{split}"] = patch(model, pairs, hook_name, vec, name=obj, clean=clean, source=source)
            bar.update(1)
    bar.close()

    vectors = {"v": v}
    if readout is not None:
        vectors["v_row"], vectors["v_null"] = v_row, v_null
    vectors["mean_difference"] = objects["mean_difference"]
    separation = activation_separation(model, test, hook_name, vectors)

    reasons: list[str] = []
    das_tr, das_te = patches["das/train"].fldd, patches["das/test"].fldd
    full_te = patches["full/test"].fldd
    rand_te = patches["random/test"].fldd
    if das_tr < min_effect:
        verdict = "no effect"
        reasons.append(f"the DAS patch barely moves the answer on its own training pairs (FLDD {das_tr:.1f}%)")
    else:
        if das_te < 0.5 * das_tr:
            reasons.append(
                f"it does not generalise: FLDD {das_te:.1f}% on held-out prompts against {das_tr:.1f}% in training"
            )
        if das_te < rand_te + min_effect:
            reasons.append(f"no better than a random direction on held-out prompts ({das_te:.1f}% vs {rand_te:.1f}%)")
        if full_te < 50.0 and das_te > full_te + 2 * min_effect:
            reasons.append(
                f"the 1-D patch does more than patching the whole component ({das_te:.1f}% vs {full_te:.1f}%): "
                "it may activate a dormant pathway"
            )
        if "rowspace/test" in patches and patches["rowspace/test"].fldd < 0.5 * das_te:
            reasons.append(
                f"patching only the rowspace part keeps {patches['rowspace/test'].fldd:.1f}% of {das_te:.1f}% FLDD "
                f"(|v_row| = {row_norm:.2f}, |v_null| = {null_norm:.2f})"
            )
        elif readout is not None and row_norm <= 1e-6:
            reasons.append("the direction lies entirely in the nullspace of the readout")
        if separation["v"].cohens_d < min_cohens_d:
            reasons.append(
                f"clean activations do not separate along it by feature value (Cohen's d {separation['v'].cohens_d:.2f})"
            )
        if "v_row" in separation and separation["v_row"].cohens_d < min_cohens_d <= separation["v_null"].cohens_d:
            reasons.append(
                f"the feature varies along the nullspace part (d {separation['v_null'].cohens_d:.2f}) but not along "
                f"the rowspace part (d {separation['v_row'].cohens_d:.2f})"
            )
        verdict = "suspicious" if reasons else "passes"
    settings = dict(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        min_effect=min_effect,
        min_cohens_d=min_cohens_d,
        n_train=len(train),
        n_test=len(test),
    )
    return IllusionReport(
        hook_name, direction, patches, row_norm, null_norm, separation, verdict, tuple(reasons), settings
    )


__all__ = [
    "IllusionReport",
    "Separation",
    "activation_separation",
    "illusion_checks",
    "projection_separation",
    "readout_matrix",
    "rowspace_split",
]
