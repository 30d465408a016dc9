"""The rank-1 edit of an MLP's output weights that a 1-D subspace patch at its ``hook_post`` amounts to
(Makelov, Lange, Nanda 2023, the section linking subspace patching to rank-1 fact editing; METHODS §5).

At ``blocks.{l}.mlp.hook_post`` the patch along a unit ``v`` turns the base activation ``w`` into
``w + ((u - w)·v) v``, so the MLP writes ``((u - w)·v) (vᵀ W_out)`` more into the residual stream. The same
output comes from editing the weights, ``W_out <- W_out + b aᵀ`` (``W_out`` is ``[d_mlp, d_model]``), with::

    a = ((u - w)·v) (vᵀ W_out)          # [d_model]: what the patch adds to the MLP output
    b with bᵀ w = 1                      # [d_mlp]: the key the edit responds to

for at that activation ``w (W_out + b aᵀ) = w W_out + a``. The paper takes ``b = Σ⁺ w / (wᵀ Σ⁺ w)`` with ``Σ`` the
second moment of the MLP's activations (the ROME key; ``rule="covariance"``); that edit also fires, a little, at
the prompt's other positions, so its logits are close to the patch's but not equal. ``rule="prompt"`` takes the
``b`` of least norm that is orthogonal to the base prompt's activations at its other positions (``b = P w /
(wᵀ P w)``, ``P`` the projection off their span), so the edited model's logits on that prompt *equal* the patched
model's: the exact equivalence. Each pair gets its own edit (``a`` depends on ``u - w``). The edit is applied to
the real weights (:func:`codecircuits.repair.edits.mlp_out_weight`) and undone bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from .. import figures, intervals
from ..core import sites
from ..core.runner import run_from
from ..errors import InputError
from .das import Direction, activations, unit_vector
from .interchange import patched_vocab_logits
from .pairs import PatchPairs, base_residual, check_pairs
from .stats import bootstrap_rows, fldd_rows

RULES = ("prompt", "covariance")


def mlp_layer(model, hook_name: str) -> int:
    """The layer of an ``mlp.hook_post`` hook; an error for any other hook (the edit needs ``W_out``)."""
    layer = sites.layer_of_hook(hook_name)
    if layer is None or hook_name != sites.hook_name("post", layer):
        raise InputError(
            f"The rank-1 edit is of an MLP's output weights: give blocks.<l>.mlp.hook_post, not {hook_name}."
        )
    return layer


def rank1_edit(
    w: Float[torch.Tensor, " d_mlp"],
    u: Float[torch.Tensor, " d_mlp"],
    v: Float[torch.Tensor, " d_mlp"],
    W_out: Float[torch.Tensor, "d_mlp d_model"],
    *,
    others: Float[torch.Tensor, "n d_mlp"] | None = None,
    sigma_pinv: Float[torch.Tensor, "d_mlp d_mlp"] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` of the edit ``W_out + b aᵀ`` equal to the patch of ``w`` from ``u`` along unit ``v``.

    ``sigma_pinv`` (``Σ⁺``): the paper's key ``b = Σ⁺w / (wᵀΣ⁺w)``. Otherwise ``b`` is the least-norm solution of
    ``bᵀw = 1`` orthogonal to ``others`` (the prompt's activations at its other positions; none: ``w / |w|²``).
    """
    w, u, v = (x.detach().double().cpu() for x in (w, u, v))
    W = W_out.detach().double().cpu()
    a = float((u - w) @ v) * (v @ W)
    if sigma_pinv is not None:
        k = sigma_pinv.double().cpu() @ w
    else:
        k = w.clone()
        if others is not None and len(others):
            X = others.detach().double().cpu()
            Qo, R = torch.linalg.qr(X.T)  # the span of the other positions' activations
            keep = R.diagonal().abs() > 1e-10 * max(1.0, float(R.diagonal().abs().max()))
            Qo = Qo[:, keep]
            k = k - Qo @ (Qo.T @ k)
    denom = float(w @ k)
    if abs(denom) < 1e-12:
        raise InputError("The base activation lies in the span the edit must ignore; no rank-1 key b exists.")
    return a, k / denom


def second_moment_pinv(model, pairs: PatchPairs, hook_name: str, *, rcond: float = 1e-6) -> torch.Tensor:
    """``Σ⁺``: the pseudo-inverse of the second moment of the activations at ``hook_name`` over every real
    (non-padding) position of the pairs' base and source prompts."""
    name = hook_name
    rows = []
    for toks, pos in ((pairs.base_tokens, pairs.base_positions), (pairs.source_tokens, pairs.source_positions)):
        with torch.no_grad():
            _, cache = model.run_with_cache(
                toks.to(model.cfg.device), names_filter=name, stop_at_layer=mlp_layer(model, hook_name) + 1
            )
        acts = cache[name].double().cpu()
        for i in range(len(toks)):
            rows.append(acts[i, : int(pos[i]) + 1])
    X = torch.cat(rows)
    return torch.linalg.pinv(X.T @ X / len(X), rtol=rcond)


@dataclass(frozen=True)
class EditResult:
    """The rank-1 weight edits of one direction on a set of pairs, beside the subspace patch.

    Attributes:
        hook_name, rule: where and which key ``b`` (``"prompt"``: exact; ``"covariance"``: the paper's).
        ld_clean, ld_patch, ld_edit: ``[pair]`` logit differences clean, with the patch, with the edit.
        max_logit_diff: ``[pair]`` the largest absolute difference over the whole vocabulary between the edited
            and the patched model's logits at the base prompt's last token.
        mlp_out_diff: ``[pair]`` the same for the MLP's output at that position (the edit's own equation).
    """

    hook_name: str
    rule: str
    ld_clean: torch.Tensor
    ld_patch: torch.Tensor
    ld_edit: torch.Tensor
    max_logit_diff: torch.Tensor
    mlp_out_diff: torch.Tensor

    @property
    def n_pairs(self) -> int:
        return len(self.ld_clean)

    @property
    def fldd_edit(self) -> intervals.Interval:
        return bootstrap_rows(fldd_rows, self.ld_clean, self.ld_edit)

    @property
    def fldd_patch(self) -> intervals.Interval:
        return bootstrap_rows(fldd_rows, self.ld_clean, self.ld_patch)

    @property
    def fldd_difference(self) -> intervals.Interval:
        """FLDD of the edit minus FLDD of the patch, resampled over pairs."""
        return bootstrap_rows(
            lambda c, e, p: fldd_rows(c, e) - fldd_rows(c, p), self.ld_clean, self.ld_edit, self.ld_patch
        )

    def summary(self) -> dict:
        return dict(hook=self.hook_name, rule=self.rule, n_pairs=self.n_pairs,
                    max_logit_diff=float(self.max_logit_diff.max()), max_mlp_out_diff=float(self.mlp_out_diff.max()),
                    fldd_edit=self.fldd_edit.to_json(), fldd_patch=self.fldd_patch.to_json(),
                    fldd_difference=self.fldd_difference.to_json())

    def to_dataframe(self):
        """One row per pair (the index): the logit difference clean, patched and edited, and the largest absolute
        difference between the edited and the patched model's logits (``max_logit_diff``) and MLP outputs."""
        import pandas as pd

        return pd.DataFrame(
            {
                "ld_clean": self.ld_clean.detach().cpu().double().numpy(),
                "ld_patch": self.ld_patch.detach().cpu().double().numpy(),
                "ld_edit": self.ld_edit.detach().cpu().double().numpy(),
                "max_logit_diff": self.max_logit_diff.detach().cpu().double().numpy(),
                "mlp_out_diff": self.mlp_out_diff.detach().cpu().double().numpy(),
            }
        )

    def top(self, k: int = 10):
        """The ``k`` pairs on which the edit and the patch differ most: the rows of :meth:`to_dataframe` with the
        largest ``max_logit_diff`` (never negative) first."""
        return self.to_dataframe().sort_values("max_logit_diff", ascending=False, kind="stable").head(k)

    def plot(self, k: int = 20) -> figures.Figure:
        """The ``k`` pairs on which the edit and the patch differ most (:meth:`top`), as bars."""
        df = self.top(k)
        df["pair"] = [f"pair {i}" for i in df.index]
        return figures.top_bars(df, "max_logit_diff", label="pair",
                                title=f"rank-1 edit ({self.rule}) against the patch at {self.hook_name}")


def edit_equivalence(
    model,
    pairs: PatchPairs,
    direction: Direction | torch.Tensor,
    hook_name: str | None = None,
    *,
    rule: str = "prompt",
    sigma_pinv: torch.Tensor | None = None,
    progress: bool = False,
) -> EditResult:
    """Edit ``W_out`` of the hook's MLP once per pair by :func:`rank1_edit`, run the base prompt, undo the edit,
    and compare with the 1-D subspace patch along ``direction`` (same pairs, same last position).

    ``rule="covariance"`` needs ``sigma_pinv`` (:func:`second_moment_pinv`, e.g. over the training pairs)."""
    from ..repair.edits import mlp_out_weight

    if rule not in RULES:
        raise InputError(f"rule must be one of {RULES}, got {rule!r}.")
    if rule == "covariance" and sigma_pinv is None:
        raise InputError("rule='covariance' needs sigma_pinv (second_moment_pinv of the training pairs).")
    if isinstance(direction, Direction):
        hook_name = hook_name or direction.hook_name
        v = direction.vector
    else:
        v = unit_vector(torch.as_tensor(direction))
    if hook_name is None:
        raise InputError("Give the hook (blocks.<l>.mlp.hook_post) of a direction passed as a tensor.")
    check_pairs(model, pairs, hook_name)
    layer = mlp_layer(model, hook_name)
    W_view = mlp_out_weight(model, layer)  # [d_mlp, d_model] view of the real parameter
    W_out = W_view.detach().clone()
    source = activations(model, hook_name, pairs.source_tokens, pairs.source_positions)
    clean = patched_vocab_logits(model, pairs, hook_name, None)
    patched = patched_vocab_logits(model, pairs, hook_name, v[:, None], 1.0, 64, source)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            pairs.base_tokens.to(model.cfg.device),
            names_filter=lambda n: n in (hook_name, sites.hook_name("mlp_out", layer)),
            stop_at_layer=layer + 1,
        )
    acts = cache[hook_name].float().cpu()
    mlp_out = cache[sites.hook_name("mlp_out", layer)].float().cpu()
    resid = base_residual(model, pairs.base_tokens, layer) if layer > 0 else None
    edited_logits, out_diff = [], []
    saved = W_view.detach().clone()
    for i in tqdm(range(len(pairs)), desc=f"rank-1 edits {hook_name}", disable=not progress, leave=False):
        p = int(pairs.base_positions[i])
        w = acts[i, p]
        a, b = rank1_edit(
            w, source[i], v, W_out, others=acts[i, :p], sigma_pinv=sigma_pinv if rule == "covariance" else None
        )
        patched_out = mlp_out[i, p].double() + float((source[i] - w).double() @ v.double()) * (
            v.double() @ W_out.double()
        )
        try:
            with torch.no_grad():
                W_view += torch.outer(b, a).to(W_view.dtype).to(W_view.device)
                store = {}

                def grab(act, hook, store=store, p=p):
                    store["out"] = act[0, p].detach().double().cpu()

                hooks = [(sites.hook_name("mlp_out", layer), grab)]
                toks = pairs.base_tokens[i : i + 1, : p + 1].to(model.cfg.device)
                if resid is not None:
                    logits = run_from(model, resid[i : i + 1, : p + 1], layer, fwd_hooks=hooks, read_positions=[p])[
                        0, 0
                    ]
                else:
                    with model.hooks(fwd_hooks=hooks):
                        logits = model(toks)[0, p]
        finally:
            with torch.no_grad():
                W_view.copy_(saved)
        edited_logits.append(logits.float().cpu())
        out_diff.append(float((store["out"] - patched_out).abs().max()))
    edited = torch.stack(edited_logits)
    ids = pairs.answer_ids
    rows = torch.arange(len(pairs))

    def ld(x):
        x = x[:, ids]
        return x[rows, pairs.base_values] - x[rows, pairs.source_values]

    return EditResult(hook_name, rule, ld(clean), ld(patched), ld(edited), (edited - patched).abs().max(dim=1).values,
                      torch.tensor(out_diff))


__all__ = ["RULES", "EditResult", "edit_equivalence", "mlp_layer", "rank1_edit", "second_moment_pinv"]
