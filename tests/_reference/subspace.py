"""Subspace activation patching with distributed alignment search, and the checks for its illusion.

A 1-D subspace patch (Makelov, Lange, Nanda 2023, METHODS §5) runs the model on a *base* prompt and replaces
only the component of one activation along a unit direction ``v`` with the *source* prompt's::

    w' = w + ((u - w) · v) v          (w: base activation, u: source activation, at one position)

which is :class:`transformer_lens.tools.analysis.interchange.SubspaceInterchange` with a one-column basis; an
identity basis is the full-component patch, strength 0 leaves the base. The direction is learned by distributed
alignment search (DAS): a unit vector, kept on the sphere by an orthogonal parametrisation, trained with Adam on the
cross-entropy of the patched answer logits towards the *source's* answer.

Metrics, over the feature's answer tokens (one token per feature value):

- logit difference ``LD = logit(base answer) - logit(source answer)`` at the base prompt's last position;
- **FLDD** (fractional logit-difference decrease) ``= 100 * (1 - mean LD_patched / mean LD_clean)``: 0 means the
  patch did nothing, 100 that the two answers are tied, above 100 that the answer flipped;
- **interchange accuracy**: the fraction of pairs whose patched argmax among the answer tokens is the source's answer.

The illusion: at an MLP's ``hook_post`` the direction splits as ``v = v_row + v_null`` with ``v_null`` in the kernel of
the output weights ``W_out[l]`` (``[d_mlp, d_model]``; ``x -> x @ W_out`` ignores it) and ``v_row`` in their column
space. A patch along ``v`` can move the feature-correlated but causally inert variation of ``v_null`` onto a dormant
``v_row`` and so change the output although the model never uses ``v`` on its own inputs. :func:`illusion_checks`
runs the paper's checks and gives each subspace a verdict:

1. **full-component baseline** -- the whole activation patched at the same position. A 1-D patch that does much more
   than the full patch while the full patch does less than half the job is a red flag.
2. **rowspace re-patch** -- patching along ``v_row / |v_row|`` alone should keep the effect; losing more than half of
   it is a reason to be suspicious. ``|v_row|`` and ``|v_null|`` are reported.
3. **activations separate** -- clean activations projected on ``v`` (and on ``v_row``, ``v_null``) should separate by
   feature value (Cohen's d of at least 1); separating along ``v_null`` but not ``v_row`` is the illusion's signature.
4. **held-out prompts** -- the effect on held-out templates should be at least half the training effect.
5. **non-optimised directions** -- the difference of class means and a random direction are patched the same way
   for comparison; a DAS direction no better than a random one found nothing.

What TransformerLens's ``tools.analysis.interchange`` gives is reused: the interchange itself
(:class:`SubspaceInterchange`), the orthonormal trainable subspace (:class:`LearnedSubspace`), activation
collection, the single-pass intervention (:func:`run_with_intervention`) and the difference-of-means and random
bases. Its :func:`fit_das` is not used directly because its task-logit callback sees only the inputs, so it cannot
read each prompt at its own last position when prompts of different lengths are batched together (right-padded),
and it has no progress bar or learning-rate schedule; :func:`fit_direction` is the same loop with those added, and
the test-suite checks that on equal-length prompts, with the schedule off, it learns the same direction as
``fit_das``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformer_lens.tools.analysis.interchange import (
    LearnedSubspace,
    SubspaceInterchange,
    mean_difference_basis,
    random_basis,
    run_with_intervention,
)

from codecircuits.errors import InputError
from codecircuits.core.inputs import check_hook_names, single_token_id

__all__ = [
    "Direction",
    "IllusionReport",
    "PatchPairs",
    "PatchResult",
    "Separation",
    "activation_separation",
    "activations",
    "fit_direction",
    "illusion_checks",
    "mean_difference_direction",
    "patch",
    "random_direction",
    "readout_matrix",
    "rowspace_split",
]


# --------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PatchPairs:
    """Counterfactual (base, source) prompt pairs for a feature with a few values, each read at its last token.

    Prompts are right-padded to a common length; since the models are causal, padding after a prompt's last
    token changes nothing at that token, so prompts of different lengths batch together and base and source
    need not have the same length (only the last position is patched).

    Attributes:
        base_tokens, source_tokens: ``[pair, pos]`` token ids, right-padded.
        base_positions, source_positions: ``[pair]`` index of each prompt's last real token.
        base_values, source_values: ``[pair]`` the feature's value (an index into ``answer_ids``) per prompt.
        answer_ids: ``[value]`` the token the model should predict for each feature value.
        value_names: the answer strings, one per value.
        groups: a group name per pair (e.g. the template), used to split train from held-out pairs.
        base_prompts, source_prompts: the prompt texts.
        axes: axis names of the per-pair tensors.
    """

    base_tokens: torch.Tensor
    source_tokens: torch.Tensor
    base_positions: torch.Tensor
    source_positions: torch.Tensor
    base_values: torch.Tensor
    source_values: torch.Tensor
    answer_ids: torch.Tensor
    value_names: tuple[str, ...]
    groups: tuple[str, ...]
    base_prompts: tuple[str, ...]
    source_prompts: tuple[str, ...]
    axes: tuple[str, ...] = ("pair", "pos")

    @classmethod
    def from_prompts(
        cls,
        model,
        base: Sequence[str],
        source: Sequence[str],
        base_values: Sequence[int],
        source_values: Sequence[int],
        answers: Sequence[str],
        groups: Sequence[str] | None = None,
    ) -> PatchPairs:
        """Tokenize pairs; ``answers[k]`` is the (single-token) answer for feature value ``k``."""
        base, source = list(base), list(source)
        n = len(base)
        if n == 0:
            raise InputError("No pairs given: pass at least one (base, source) prompt pair.")
        if not (len(source) == len(base_values) == len(source_values) == n):
            raise InputError(
                f"Got {n} base prompts, {len(source)} source prompts, {len(base_values)} base values and "
                f"{len(source_values)} source values: pass one of each per pair."
            )
        answers = list(answers)
        if len(answers) < 2:
            raise InputError("A feature needs at least two values: pass one answer token per value.")
        answer_ids = [single_token_id(model, a) for a in answers]
        if len(set(answer_ids)) != len(answer_ids):
            raise InputError(f"The answers {answers} are not distinct tokens.")
        bv = torch.as_tensor(list(base_values), dtype=torch.long)
        sv = torch.as_tensor(list(source_values), dtype=torch.long)
        for name, v in (("base_values", bv), ("source_values", sv)):
            if ((v < 0) | (v >= len(answers))).any():
                raise InputError(f"{name} must be indices into the {len(answers)} answers, got {v.tolist()[:10]}.")
        same = (bv == sv).nonzero().flatten().tolist()
        if same:
            raise InputError(
                f"Pairs {same[:10]} have the same feature value in base and source; an interchange needs "
                "pairs whose values differ (their logit difference would be zero)."
            )
        groups = tuple(groups) if groups is not None else ("all",) * n
        if len(groups) != n:
            raise InputError(f"{len(groups)} group names for {n} pairs: pass one per pair.")
        bt, bp = _pad(model, base)
        st, sp = _pad(model, source)
        return cls(bt, st, bp, sp, bv, sv, torch.tensor(answer_ids), tuple(answers), groups, tuple(base), tuple(source))

    def __len__(self) -> int:
        return len(self.base_values)

    def subset(self, index) -> PatchPairs:
        """The pairs at ``index`` (a boolean mask, a list of indices or a slice)."""
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        if index.numel() == 0:
            raise InputError("The selection holds no pairs.")
        ix = index.tolist()
        return replace(
            self,
            base_tokens=self.base_tokens[index],
            source_tokens=self.source_tokens[index],
            base_positions=self.base_positions[index],
            source_positions=self.source_positions[index],
            base_values=self.base_values[index],
            source_values=self.source_values[index],
            groups=tuple(self.groups[i] for i in ix),
            base_prompts=tuple(self.base_prompts[i] for i in ix),
            source_prompts=tuple(self.source_prompts[i] for i in ix),
        )

    def in_groups(self, names: Sequence[str]) -> PatchPairs:
        """The pairs whose group is one of ``names``."""
        names = set(names)
        return self.subset([i for i, g in enumerate(self.groups) if g in names])

    def swapped(self) -> PatchPairs:
        """Every pair with base and source exchanged."""
        return replace(
            self,
            base_tokens=self.source_tokens,
            source_tokens=self.base_tokens,
            base_positions=self.source_positions,
            source_positions=self.base_positions,
            base_values=self.source_values,
            source_values=self.base_values,
            base_prompts=self.source_prompts,
            source_prompts=self.base_prompts,
        )

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "group": self.groups,
                "base": self.base_prompts,
                "source": self.source_prompts,
                "base_answer": [self.value_names[v] for v in self.base_values.tolist()],
                "source_answer": [self.value_names[v] for v in self.source_values.tolist()],
            }
        )


def _pad(model, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [model.to_tokens(p)[0].cpu() for p in prompts]
    width = max(len(r) for r in rows)
    pad = getattr(model.tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, torch.tensor([len(r) - 1 for r in rows])


# ------------------------------------------------------------------------------------------ hooks, weights


def _layer_of(hook_name: str) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(m.group(1)) if m else None


def _stop_layer(model, hook_name: str) -> int | None:
    layer = _layer_of(hook_name)
    return layer + 1 if layer is not None and layer + 1 < model.cfg.n_layers else None


def readout_matrix(model, hook_name: str) -> torch.Tensor | None:
    """The weights through which the activation at ``hook_name`` reaches the rest of the model, if linear.

    For ``blocks.{l}.mlp.hook_post`` it is ``W_out[l]`` (``[d_mlp, d_model]``): the MLP's output is
    ``hook_post @ W_out[l] + b_out[l]``, so directions in the kernel of ``x -> x @ W_out[l]`` are causally inert.
    For other hooks (e.g. the residual stream, read by many components) there is no single readout and it is
    ``None``.
    """
    m = re.fullmatch(r"blocks\.(\d+)\.mlp\.hook_post", hook_name)
    if not m:
        return None
    return model.W_out[int(m.group(1))].detach().float().cpu()


def rowspace_split(
    direction: torch.Tensor, readout: torch.Tensor, *, rtol: float = 1e-5
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


# -------------------------------------------------------------------------------------------- directions


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
        """``[d, 1]`` orthonormal basis for :class:`SubspaceInterchange`."""
        return self.vector[:, None]

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({"index": np.arange(len(self.vector)), "weight": self.vector.numpy()})

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` coordinates (neurons, for an MLP hook) with the largest absolute weight."""
        df = self.to_dataframe()
        return df.reindex(df["weight"].abs().sort_values(ascending=False).index).head(k).reset_index(drop=True)


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = v.detach().float().cpu().flatten()
    n = v.norm()
    if n == 0 or not torch.isfinite(n):
        raise InputError("The direction has zero (or non-finite) norm; a subspace patch needs a nonzero direction.")
    return v / n


def _answer_logits(model, tokens: torch.Tensor, positions: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    logits = model(tokens.to(model.cfg.device))
    rows = torch.arange(len(tokens), device=logits.device)
    return logits[rows, positions.to(logits.device)][:, answer_ids.to(logits.device)].float()


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def activations(
    model, hook_name: str, tokens: torch.Tensor, positions: torch.Tensor, *, batch_size: int = 64
) -> torch.Tensor:
    """Activations ``[prompt, d]`` at ``hook_name`` at one position per prompt (the forward stops after the hook)."""
    check_hook_names(model, hook_name)
    stop = _stop_layer(model, hook_name)
    out = []
    for sl in _chunks(len(tokens), batch_size):
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


def _check_pairs(model, pairs: PatchPairs, hook_name: str) -> None:
    if not isinstance(pairs, PatchPairs):
        raise InputError(f"Expected PatchPairs (see PatchPairs.from_prompts), got {type(pairs).__name__}.")
    check_hook_names(model, hook_name)


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
    prompt's last position. With ``final_lr_factor=1`` the loop is that of TransformerLens's ``fit_das``.
    """
    _check_pairs(model, pairs, hook_name)
    if epochs < 1 or batch_size < 1:
        raise InputError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}.")
    source = activations(model, hook_name, pairs.source_tokens, pairs.source_positions, batch_size=batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        subspace = LearnedSubspace(source.shape[1], 1)
    device = next(iter(model.parameters())).device
    subspace = subspace.to(device)
    step = SubspaceInterchange(subspace, 1.0)
    optimizer = torch.optim.Adam(subspace.parameters(), lr=lr)
    n_steps = epochs * math.ceil(len(pairs) / batch_size)
    schedule = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, final_lr_factor, total_iters=max(1, n_steps))
    targets = pairs.source_values
    rng = np.random.default_rng(seed)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    losses = []
    bar = tqdm(total=n_steps, desc=f"DAS {hook_name}", disable=not progress, leave=False)
    try:
        for _ in range(epochs):
            order = torch.as_tensor(rng.permutation(len(pairs)))
            total = 0.0
            for chunk in _chunks(len(order), batch_size):
                idx = order[chunk]
                optimizer.zero_grad()
                logits = run_with_intervention(
                    model,
                    hook_name,
                    step,
                    pairs.base_tokens[idx].to(device),
                    source[idx],
                    lambda t, _idx=idx: _answer_logits(model, t, pairs.base_positions[_idx], pairs.answer_ids),
                    positions=pairs.base_positions[idx],
                )
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
    return Direction(_unit(vector), hook_name, "das", tuple(losses), settings)


def _clean_acts_and_values(model, pairs: PatchPairs, hook_name: str, batch_size: int):
    """Clean activations of every distinct prompt in the pairs, with its feature value."""
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
    _check_pairs(model, pairs, hook_name)
    acts, values = _clean_acts_and_values(model, pairs, hook_name, batch_size)
    if len(values.unique()) != 2:
        raise InputError(f"The difference of means needs exactly two feature values, found {values.unique().tolist()}.")
    basis = mean_difference_basis(acts, values.tolist())
    # orient it from value 0 to value 1 so its sign is meaningful
    v = basis[:, 0]
    if (acts[values == 1].mean(0) - acts[values == 0].mean(0)) @ v < 0:
        v = -v
    return Direction(_unit(v), hook_name, "mean_difference")


def random_direction(model, hook_name: str, *, seed: int = 0) -> Direction:
    """A seeded random unit direction at ``hook_name``: the placebo a learned direction should beat."""
    check_hook_names(model, hook_name)
    d = model.cfg.d_mlp if hook_name.endswith(("mlp.hook_post", "mlp.hook_pre")) else model.cfg.d_model
    return Direction(_unit(random_basis(d, 1, seed)[:, 0]), hook_name, "random", settings={"seed": seed})


# ------------------------------------------------------------------------------------------------ patching


@dataclass(frozen=True)
class PatchResult:
    """What one patch did to a set of pairs.

    Attributes:
        name: what was patched (e.g. ``"das"``, ``"full"``).
        hook_name: where.
        fldd: ``100 * (1 - mean LD_patched / mean LD_clean)``.
        interchange_accuracy: fraction of pairs whose patched argmax (over the answer tokens) is the source answer.
        ld_clean, ld_patched: ``[pair]`` logit differences ``logit(base answer) - logit(source answer)``.
        dimension: the patched subspace's dimension (the activation size for a full patch, 0 for none).
        strength: the interchange strength.
    """

    name: str
    hook_name: str
    fldd: float
    interchange_accuracy: float
    ld_clean: torch.Tensor
    ld_patched: torch.Tensor
    dimension: int
    strength: float
    axes: tuple[str, ...] = ("pair",)

    @property
    def n_pairs(self) -> int:
        return len(self.ld_clean)

    def summary(self) -> dict:
        return dict(
            name=self.name,
            hook=self.hook_name,
            dimension=self.dimension,
            fldd=self.fldd,
            interchange_accuracy=self.interchange_accuracy,
            ld_clean=float(self.ld_clean.mean()),
            ld_patched=float(self.ld_patched.mean()),
            n_pairs=self.n_pairs,
        )

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({"ld_clean": self.ld_clean.numpy(), "ld_patched": self.ld_patched.numpy()})

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` pairs the patch moved most (largest drop in logit difference)."""
        df = self.to_dataframe()
        df["drop"] = df["ld_clean"] - df["ld_patched"]
        return df.sort_values("drop", ascending=False).head(k)


def _ld(logits: torch.Tensor, pairs: PatchPairs) -> torch.Tensor:
    rows = torch.arange(len(logits))
    return logits[rows, pairs.base_values] - logits[rows, pairs.source_values]


@torch.no_grad()
def _patched_logits(model, pairs: PatchPairs, hook_name: str, basis, strength: float, batch_size: int, source=None):
    device = next(iter(model.parameters())).device
    out = []
    if basis is None:  # clean run
        for sl in _chunks(len(pairs), batch_size):
            out.append(_answer_logits(model, pairs.base_tokens[sl], pairs.base_positions[sl], pairs.answer_ids).cpu())
        return torch.cat(out)
    if source is None:
        source = activations(model, hook_name, pairs.source_tokens, pairs.source_positions, batch_size=batch_size)
    step = SubspaceInterchange(basis, strength)
    for sl in _chunks(len(pairs), batch_size):
        logits = run_with_intervention(
            model,
            hook_name,
            step,
            pairs.base_tokens[sl].to(device),
            source[sl],
            lambda t, _sl=sl: _answer_logits(model, t, pairs.base_positions[_sl], pairs.answer_ids),
            positions=pairs.base_positions[sl],
        )
        out.append(logits.cpu())
    return torch.cat(out)


def patch(
    model,
    pairs: PatchPairs,
    hook_name: str,
    direction: Direction | torch.Tensor | None = None,
    *,
    strength: float = 1.0,
    name: str | None = None,
    batch_size: int = 64,
    _clean: torch.Tensor | None = None,
    _source: torch.Tensor | None = None,
) -> PatchResult:
    """Patch each base prompt's last-position activation at ``hook_name`` from its source, inside a subspace.

    ``direction`` is a :class:`Direction`, a ``[d]`` vector (normalised here), a ``[d, k]`` orthonormal basis, or
    ``None`` for the full component (the identity basis). A ``[d, 0]`` basis or ``strength=0`` changes nothing.
    """
    _check_pairs(model, pairs, hook_name)
    source = (
        _source
        if _source is not None
        else activations(model, hook_name, pairs.source_tokens, pairs.source_positions, batch_size=batch_size)
    )
    d = source.shape[1]
    if direction is None:
        basis, label = torch.eye(d), "full"
    elif isinstance(direction, Direction):
        basis, label = direction.basis, direction.kind
    else:
        t = torch.as_tensor(direction).detach().float().cpu()
        basis = _unit(t)[:, None] if t.dim() == 1 else t
        label = "subspace"
        if basis.shape[1] > 0 and not torch.allclose(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-4):
            raise InputError("A [d, k] basis must have orthonormal columns (basis.T @ basis = I).")
    if basis.shape[0] != d:
        raise InputError(f"The direction has size {basis.shape[0]} but activations at {hook_name} have size {d}.")
    clean = _clean if _clean is not None else _patched_logits(model, pairs, hook_name, None, 1.0, batch_size)
    patched = _patched_logits(model, pairs, hook_name, basis, strength, batch_size, source=source)
    ld_clean, ld_patched = _ld(clean, pairs), _ld(patched, pairs)
    fldd = 100.0 * (1.0 - float(ld_patched.mean()) / float(ld_clean.mean()))
    iia = float((patched.argmax(-1) == pairs.source_values).float().mean())
    return PatchResult(name or label, hook_name, fldd, iia, ld_clean, ld_patched, int(basis.shape[1]), strength)


# ------------------------------------------------------------------------------------------------ separation


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


def _separation(name: str, acts: torch.Tensor, values: torch.Tensor, vector: torch.Tensor) -> Separation:
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
    _check_pairs(model, pairs, hook_name)
    acts, values = _clean_acts_and_values(model, pairs, hook_name, batch_size)
    return {name: _separation(name, acts, values, v.detach().float().cpu()) for name, v in vectors.items()}


# ------------------------------------------------------------------------------------------------ the checks


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
    _check_pairs(model, train, hook_name)
    _check_pairs(model, test, hook_name)
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
        clean = _patched_logits(model, pairs, hook_name, None, 1.0, 64)
        for obj, vec in objects.items():
            if split == "train" and obj not in train_objects:
                continue
            patches[f"{obj}/{split}"] = patch(model, pairs, hook_name, vec, name=obj, _clean=clean, _source=source)
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
