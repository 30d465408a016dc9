"""Attention heads of the closing-parenthesis circuit: paren-promoting heads and counting heads.

- :func:`paren_promoters` (Miller et al., METHODS §2.3–2.4): a head *promotes* the ``k``-paren token on a
  prompt when its direct logit for that token is at least ``ratio`` × its largest direct logit among the
  paren tokens (and that largest logit is positive). Against the prompts' labels, each head gets a precision,
  recall and F1 per ``k``.
- :func:`counting_heads`: heads whose attention from the answer position to the ``(`` tokens, or whose
  output, tracks how many parens are open; and whether the count they promote is the right one.
- :func:`find_paren_heads`: both from one cached forward per paren count (what the parens and circuit studies
  run); :func:`random_heads`: the control sets of heads.
- :func:`count_tracking`: the same attention against the number of *open* parens with the prompt's length and
  its number of ``(`` tokens regressed out (a partial correlation), on prompts that close some parens first, so
  that attention which grows only because there are more paren tokens does not pass for counting.

Both read what :func:`codecircuits.lens.head_logits` and :func:`codecircuits.lens.run_cache` return, so one
forward pass serves the lens, the attributions and the heads.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import figures, intervals
from .core.sites import head_label, hook_name
from .errors import InputError
from .lens import HeadLogits, head_logits, run_cache


@dataclass(frozen=True)
class PromoterHeads:
    """Precision, recall and F1 of every head as a promoter of each paren count.

    ``precision/recall/f1[class, layer, head]``; ``classes[i]`` is the number of parens the ``i``-th token
    closes. ``mean_logit[class, layer, head]`` is the head's mean direct logit on the correct token over the
    prompts of that class, minus its mean over the other paren tokens (positive = promotes the right count).
    """

    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    mean_logit: torch.Tensor
    support: tuple[int, ...]  # prompts per class
    classes: tuple[int, ...]
    ratio: float
    axes: tuple[str, ...] = ("class", "layer", "head")

    def _ci(self, n_open: int) -> int:
        if n_open not in self.classes:
            raise InputError(f"No class {n_open}; the classes are {self.classes}.")
        return self.classes.index(n_open)

    def heads(self, n_open: int, k: int = 5, *, min_logit: float = 0.0, by: str = "f1") -> list[tuple[int, int]]:
        """The ``k`` heads with the highest F1 (``by="f1"``, ties broken by logit) or the highest mean relative
        logit (``by="logit"``) for ``n_open`` parens, among heads whose mean relative logit exceeds ``min_logit``."""
        if by not in ("f1", "logit"):
            raise InputError(f"by must be 'f1' or 'logit', got {by!r}.")
        i = self._ci(n_open)
        f1, lg = self.f1[i].flatten(), self.mean_logit[i].flatten().nan_to_num(-1e9)
        ok = lg > min_logit
        primary = f1 + 1e-6 * lg.clamp(-1e5, 1e5).sigmoid() if by == "f1" else lg
        key = torch.where(ok, primary, torch.full_like(f1, -float("inf")))
        order = key.argsort(descending=True)[:k]
        n_heads = self.f1.shape[-1]
        return [(int(j) // n_heads, int(j) % n_heads) for j in order if key[j] > -float("inf")]

    def macro_f1(self) -> torch.Tensor:
        """``[layer, head]``: each head's F1 averaged over the counts (the authors' ranking of general heads)."""
        return self.f1.mean(0)

    def general(self, *, min_f1: float = 0.5, min_counts: int = 2) -> list[tuple[int, int]]:
        """Heads that promote several counts: F1 >= ``min_f1`` for at least ``min_counts`` counts, ordered as the
        authors' follow-up code orders them (by how many counts they promote, then by macro-F1)."""
        n_counts = (self.f1 >= min_f1).sum(0)  # [layer, head]
        macro = self.macro_f1()
        n_heads = self.f1.shape[-1]
        keep = [(int(j) // n_heads, int(j) % n_heads) for j in (n_counts.flatten() >= min_counts).nonzero().flatten()]
        return sorted(keep, key=lambda lh: (-int(n_counts[lh]), -float(macro[lh]), lh))

    def to_dataframe(self):
        import pandas as pd

        rows = []
        n_layers, n_heads = self.f1.shape[1:]
        for i, c in enumerate(self.classes):
            for layer in range(n_layers):
                for h in range(n_heads):
                    rows.append(
                        dict(n_open=c, head=head_label(layer, h), layer=layer, head_index=h,
                             precision=float(self.precision[i, layer, h]), recall=float(self.recall[i, layer, h]),
                             f1=float(self.f1[i, layer, h]), mean_logit=float(self.mean_logit[i, layer, h]))
                    )
        return pd.DataFrame(rows)

    def top(self, k: int = 10, n_open: int | None = None):
        """The ``k`` rows of :meth:`to_dataframe` (one per count and head; only ``n_open``'s when given) with the
        largest F1, largest first, ties broken by the larger ``mean_logit`` (a stable sort)."""
        df = self.to_dataframe()
        if n_open is not None:
            self._ci(n_open)
            df = df[df.n_open == n_open]
        return df.sort_values(["f1", "mean_logit"], ascending=False, kind="stable").head(k)

    def plot(self, n_open: int | None = None):
        """A layer × head heatmap of each head's F1 as a promoter of ``n_open`` parens (default: the macro F1 over
        the counts, :meth:`macro_f1`)."""
        if n_open is None:
            values, what = self.macro_f1(), "macro F1 over the counts"
        else:
            values, what = self.f1[self._ci(n_open)], f"F1 for {n_open} parens"
        return figures.heatmap(values.float(), title=f"paren-promoting heads: {what}", y_title="layer", x_title="head",
                               vmin=0.0, vmax=1.0, value_label="F1")


def paren_promoters(
    head_logits: HeadLogits, labels: Sequence[int] | torch.Tensor, *, classes: Sequence[int] | None = None, ratio=0.8
) -> PromoterHeads:
    """Precision/recall/F1 of each head as a promoter of each paren token (METHODS §2.4).

    ``head_logits.values[batch, layer, head, token]`` are direct logits on the paren tokens; ``labels[b]`` is
    the index (into ``head_logits.token_ids``) of prompt ``b``'s correct token. ``classes`` names each token
    column (default 1, 2, ...: the number of parens it closes).
    """
    v = head_logits.values
    if v.dim() != 4:
        raise InputError(f"head_logits.values must be [batch, layer, head, token], got shape {tuple(v.shape)}.")
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.numel() != v.shape[0]:
        raise InputError(f"{labels.numel()} labels for {v.shape[0]} prompts: pass one label index per prompt.")
    n_tok = v.shape[-1]
    if labels.min() < 0 or labels.max() >= n_tok:
        raise InputError(f"Label indices must be in [0, {n_tok}) (columns of head_logits), got {labels.tolist()[:8]}.")
    if not 0 < ratio <= 1:
        raise InputError(f"ratio must be in (0, 1], got {ratio}.")
    classes = tuple(range(1, n_tok + 1)) if classes is None else tuple(int(c) for c in classes)
    if len(classes) != n_tok:
        raise InputError(f"{len(classes)} class names for {n_tok} token columns.")
    promotes = promoted(v, ratio)  # [b, l, h, t]
    onehot = torch.nn.functional.one_hot(labels, n_tok).bool()[:, None, None, :]  # [b, 1, 1, t]
    tp = (promotes & onehot).sum(0).float()  # [l, h, t]
    pred = promotes.sum(0).float()
    actual = onehot.sum(0).float().expand_as(tp)
    precision = torch.where(pred > 0, tp / pred.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0 * tp)
    # mean relative logit: correct token minus mean of the other paren tokens, averaged per class
    rel = torch.empty(n_tok, *v.shape[1:3])
    for t in range(n_tok):
        sel = labels == t
        if not sel.any():
            rel[t] = float("nan")
            continue
        vt = v[sel]
        others = [j for j in range(n_tok) if j != t]
        rel[t] = (vt[..., t] - vt[..., others].mean(-1)).mean(0) if others else vt[..., t].mean(0)
    support = tuple(int((labels == t).sum()) for t in range(n_tok))
    perm = (2, 0, 1)
    return PromoterHeads(
        precision.permute(*perm), recall.permute(*perm), f1.permute(*perm), rel, support, classes, float(ratio)
    )


def promoted(values: torch.Tensor, ratio: float = 0.8) -> torch.Tensor:
    """``[..., token]`` booleans: which tokens a head promotes, given its direct logits ``values[..., token]`` on
    the paren tokens: those whose logit is at least ``ratio`` x its largest, when that largest is positive."""
    mx = values.max(-1, keepdim=True).values
    return (values >= ratio * mx) & (mx > 0)


def promoters_of(
    head_logits: Sequence[HeadLogits], classes: Sequence[int], *, ratio: float = 0.8
) -> tuple[PromoterHeads, HeadLogits, torch.Tensor]:
    """:func:`paren_promoters` of prompts given as one :class:`HeadLogits` per class (``head_logits[i]``: the
    prompts whose correct token is column ``i``, of ``classes[i]`` parens). Returns the promoters, the head logits
    of all prompts in one :class:`HeadLogits` and each prompt's label (its class index)."""
    first = head_logits[0]
    merged = HeadLogits(torch.cat([h.values for h in head_logits]), first.token_ids, first.token_labels, True, -1)
    labels = torch.cat([torch.full((h.values.shape[0],), i) for i, h in enumerate(head_logits)])
    return paren_promoters(merged, labels, classes=classes, ratio=ratio), merged, labels


@dataclass(frozen=True)
class ParenHeads:
    """What :func:`find_paren_heads` finds, and the forward it ran (per group, in the order given).

    ``promoters`` and ``counting`` are the heads; ``head_logits`` holds every prompt's per-head direct logits on
    the paren tokens and ``labels`` each prompt's class index; ``logits`` and ``caches`` are each group's forward
    (for further readouts of the same run; drop the study's reference to free them)."""

    promoters: PromoterHeads
    counting: CountingHeads
    head_logits: HeadLogits
    labels: torch.Tensor
    group_head_logits: tuple[HeadLogits, ...]
    logits: tuple[torch.Tensor, ...]
    caches: tuple


@torch.no_grad()
def find_paren_heads(
    model, groups: Sequence[tuple[torch.Tensor, int]], token_ids: Sequence[int], *, ratio: float = 0.8
) -> ParenHeads:
    """The paren-promoting heads (:func:`paren_promoters`) and the counting heads (:func:`counting_heads`) of
    ``groups``, ``(tokens [batch, pos], n)`` with one group per paren count whose correct token is
    ``token_ids[i]`` (the ``i``-th group's), from one cached forward per group (:func:`codecircuits.lens.run_cache`
    with the attention patterns)."""
    if len(groups) != len(token_ids):
        raise InputError(f"{len(groups)} groups for {len(token_ids)} paren tokens: give one token per group.")
    logits, caches, hls = [], [], []
    for toks, _ in groups:
        out, cache = run_cache(model, toks, extra=("attn.hook_pattern",))
        logits.append(out)
        caches.append(cache)
        hls.append(head_logits(model, toks, token_ids, cache=cache))
    classes = [int(k) for _, k in groups]
    promoters, merged, labels = promoters_of(hls, classes, ratio=ratio)
    counting = counting_heads(
        model, list(groups), caches=caches, head_logits=hls, correct_index=list(range(len(groups)))
    )
    return ParenHeads(promoters, counting, merged, labels, tuple(hls), tuple(logits), tuple(caches))


def random_heads(
    model, k: int, *, exclude=(), n_draws: int = 1, seed: int = 0, rng: str = "torch"
) -> list[list[tuple[int, int]]]:
    """``n_draws`` sets of ``k`` distinct query heads ``(layer, head)``, drawn from the heads not in ``exclude``
    (all of them when fewer are left): the random control of an intervention on ``k`` chosen heads.

    ``rng="torch"``: one ``torch.Generator(seed)``, a ``randperm`` of the pool per draw, heads in drawn order (the
    parens study's draws); ``rng="python"``: one ``random.Random(seed)``, ``sample`` per draw, each set sorted
    (the CNA study's draws). The pool is every head, layer by layer, minus ``exclude``."""
    if rng not in ("torch", "python"):
        raise InputError(f"rng must be 'torch' or 'python', got {rng!r}.")
    skip = {tuple(h) for h in exclude}
    pool = [(a, b) for a in range(model.cfg.n_layers) for b in range(model.cfg.n_heads) if (a, b) not in skip]
    k = min(int(k), len(pool))
    if rng == "python":
        r = random.Random(seed)
        return [sorted(r.sample(pool, k)) for _ in range(n_draws)]
    gen = torch.Generator().manual_seed(int(seed))
    return [[pool[int(i)] for i in torch.randperm(len(pool), generator=gen)[:k]] for _ in range(n_draws)]


# ----------------------------------------------------------------------------------------------------------------
# counting heads


def paren_counts(model, tokens: torch.Tensor, char: str = "(") -> torch.Tensor:
    """``[batch, pos]``: how many ``char`` each token contains (``((`` counts 2)."""
    pieces = [model.tokenizer.convert_ids_to_tokens(row.tolist()) for row in tokens]
    return torch.tensor([[str(p).count(char) for p in row] for row in pieces])


@dataclass(frozen=True)
class CountingHeads:
    """How each head's attention and output follow the number of open parens, at the answer position.

    - ``attn_mass[group, layer, head]``: mean attention from the answer position to the tokens with a ``(``;
    - ``attn_corr[layer, head]``: Pearson correlation, over prompts, of that attention mass with the count;
    - ``per_paren[group, layer, head]``: ``attn_mass`` divided by the number of ``(`` (uniform attention over
      the open parens gives a falling ``per_paren`` and a flat ``attn_mass``);
    - ``output_corr[layer, head]``: Pearson correlation, over prompts, of the count with the count the head's
      output promotes (``sum_k k * softmax(direct logits on the k-paren tokens)``);
    - ``promotes_correct[group, layer, head]``: fraction of prompts where, among the paren tokens, the head's
      largest direct logit is the correct count.

    The output fields are None when no head logits were given.

    ``counts[i]`` is the number of open parens of group ``i``.
    """

    attn_mass: torch.Tensor
    per_paren: torch.Tensor
    attn_corr: torch.Tensor
    output_corr: torch.Tensor | None
    promotes_correct: torch.Tensor | None
    counts: tuple[int, ...]
    axes: tuple[str, ...] = ("count", "layer", "head")

    def score(self) -> torch.Tensor:
        """``[layer, head]``: |correlation of paren attention with the count| × sqrt(mean paren attention)."""
        mass = self.attn_mass.mean(0).clamp(0, 1)
        return self.attn_corr.nan_to_num(0).abs() * mass.sqrt()

    def heads(self, k: int = 5, *, by: str = "score") -> list[tuple[int, int]]:
        """The ``k`` heads with the largest ``score``, ``|attn_corr|`` or ``|output_corr|`` (``by``)."""
        if by == "output_corr" and self.output_corr is None:
            raise InputError("No output correlations: pass head_logits to counting_heads.")
        if by not in ("score", "attn_corr", "output_corr"):
            raise InputError(f"by must be 'score', 'attn_corr' or 'output_corr', got {by!r}.")
        vals = {"score": self.score(), "attn_corr": self.attn_corr, "output_corr": self.output_corr}[by]
        vals = vals.nan_to_num(0).abs()
        order = vals.flatten().argsort(descending=True)[:k]
        n_heads = vals.shape[1]
        return [(int(j) // n_heads, int(j) % n_heads) for j in order]

    def to_dataframe(self):
        import pandas as pd

        rows = []
        score = self.score()
        n_layers, n_heads = self.attn_corr.shape
        for layer in range(n_layers):
            for h in range(n_heads):
                row = dict(head=head_label(layer, h), layer=layer, head_index=h, score=float(score[layer, h]),
                           attn_corr=float(self.attn_corr[layer, h]))
                if self.output_corr is not None:
                    row["output_corr"] = float(self.output_corr[layer, h])
                for i, c in enumerate(self.counts):
                    row[f"attn_{c}"] = float(self.attn_mass[i, layer, h])
                    if self.promotes_correct is not None:
                        row[f"promotes_{c}"] = float(self.promotes_correct[i, layer, h])
                rows.append(row)
        return pd.DataFrame(rows)

    def top(self, k: int = 10, by: str = "score"):
        """The ``k`` rows of :meth:`to_dataframe` with the largest ``|by|`` (``score``, the default, is never
        negative; a correlation's sign is not the point), largest first."""
        return self.to_dataframe().sort_values(by, ascending=False, kind="stable", key=lambda s: s.abs()).head(k)

    def plot(self, by: str = "score"):
        """A layer × head heatmap of ``by``: ``"score"`` (default), ``"attn_corr"`` or ``"output_corr"``."""
        grids = {"score": self.score(), "attn_corr": self.attn_corr}
        if self.output_corr is not None:
            grids["output_corr"] = self.output_corr
        if by not in grids:
            raise InputError(f"plot(by={by!r}): choose one of {', '.join(map(repr, grids))}.")
        return figures.heatmap(grids[by].float(), title=f"counting heads: {by.replace('_', ' ')}", y_title="layer",
                               x_title="head", center=None if by == "score" else 0.0, value_label=by)


def _pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correlation of ``x[batch]`` with each column ``y[batch, ...]`` (NaN where ``y`` is constant)."""
    x = x.float() - x.float().mean()
    y = y - y.mean(0)
    num = (x.view(-1, *[1] * (y.dim() - 1)) * y).sum(0)
    den = x.norm() * y.norm(dim=0)
    return torch.where(den > 1e-12, num / den.clamp_min(1e-12), torch.full_like(num, float("nan")))


def counting_heads(
    model,
    groups: Sequence[tuple[torch.Tensor, int]],
    *,
    caches: Sequence | None = None,
    head_logits: Sequence[HeadLogits] | None = None,
    correct_index: Sequence[int] | None = None,
    pos: int = -1,
) -> CountingHeads:
    """Find heads that count open parens (METHODS §2.3, finding (c)).

    ``groups``: ``(tokens [batch, pos], n_open)`` per group (prompts of one count share a length). ``caches``
    (from :func:`codecircuits.lens.run_cache` with ``extra=("attn.hook_pattern",)``) reuse forward passes.
    With ``head_logits`` (one :class:`HeadLogits` per group, paren tokens as columns) and ``correct_index``
    (the column of each group's correct token), also report how often each head promotes the right count.
    """
    if not groups:
        raise InputError("counting_heads needs at least one group of (tokens, n_open).")
    if len({int(n) for _, n in groups}) < 2:
        raise InputError("counting_heads needs prompts with at least two different numbers of open parens.")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    masses, per_paren, counts_b, counts = [], [], [], []
    promotes = [] if head_logits is not None else None
    expected = [] if head_logits is not None else None
    for gi, (tokens, n_open) in enumerate(groups):
        cache = caches[gi] if caches is not None else run_cache(model, tokens, extra=("attn.hook_pattern",))[1]
        tokens = tokens.to(cache["blocks.0.hook_resid_pre"].device)
        pc = paren_counts(model, tokens).to(tokens.device)  # [b, pos]
        is_paren = (pc > 0).float()
        n_paren = pc.sum(-1).clamp_min(1).float()  # [b]
        m = []
        for layer in range(n_layers):
            pat = cache[hook_name("pattern", layer)][:, :, pos]  # [b, h, k]
            m.append((pat * is_paren[:, None]).sum(-1))  # [b, h]
        mass = torch.stack(m, 1).detach().float().cpu()  # [b, l, h]
        masses.append(mass)
        per_paren.append((mass / n_paren.cpu()[:, None, None]).mean(0))
        counts_b.append(torch.full((mass.shape[0],), float(n_open)))
        counts.append(int(n_open))
        if promotes is not None:
            v = head_logits[gi].values  # [b, l, h, t]
            if v.shape[0] != mass.shape[0] or v.shape[1:3] != (n_layers, n_heads):
                raise InputError(
                    f"head_logits[{gi}] has shape {tuple(v.shape)}; group {gi} has {mass.shape[0]} prompts."
                )
            promotes.append((v.argmax(-1) == int(correct_index[gi])).float().mean(0))
            k = torch.arange(1, v.shape[-1] + 1, dtype=torch.float32)
            expected.append((v.float().softmax(-1) * k).sum(-1))  # [b, l, h]
    mass_all = torch.cat(masses)
    count_all = torch.cat(counts_b)
    attn_corr = _pearson(count_all, mass_all)
    output_corr = _pearson(count_all, torch.cat(expected)) if expected is not None else None
    return CountingHeads(torch.stack([x.mean(0) for x in masses]), torch.stack(per_paren), attn_corr, output_corr,
                         torch.stack(promotes) if promotes is not None else None, tuple(counts))


# ----------------------------------------------------------------------------------------------------------------
# counting heads, with token count regressed out


def open_paren_counts(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(all, still_open)``, both ``[batch, pos]``: how many ``(`` each token holds, and how many of them are
    still unclosed at the end of the row (each ``)`` closes the latest open ``(``)."""
    pieces = [model.tokenizer.convert_ids_to_tokens(row.tolist()) for row in tokens]
    all_, open_ = [], []
    for row in pieces:
        stack: list[int] = []
        n_all = [0] * len(row)
        for i, p in enumerate(row):
            for ch in str(p):
                if ch == "(":
                    stack.append(i)
                    n_all[i] += 1
                elif ch == ")" and stack:
                    stack.pop()
        n_open = [0] * len(row)
        for i in stack:
            n_open[i] += 1
        all_.append(n_all)
        open_.append(n_open)
    return torch.tensor(all_), torch.tensor(open_)


def partial_correlation(x: torch.Tensor, y: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
    """Correlation of ``x[n]`` with each column of ``y[n, ...]`` after regressing both on ``covariates[n, c]``
    (least squares with an intercept); NaN where a residual is constant (e.g. ``x`` is a function of the
    covariates, so nothing is left to explain)."""
    x = torch.as_tensor(x).double().reshape(-1)
    y = torch.as_tensor(y).double()
    shape = y.shape[1:]
    y = y.reshape(y.shape[0], -1)
    n = x.shape[0]
    z = torch.ones(n, 1, dtype=torch.float64)
    if covariates is not None:
        c = torch.as_tensor(covariates).double().reshape(n, -1)
        z = torch.cat([z, c - c.mean(0)], 1)
    proj = z @ torch.linalg.pinv(z)  # [n, n] projection onto the covariates
    rx = x - proj @ x
    ry = y - proj @ y
    num = (rx[:, None] * ry).sum(0)
    den = rx.norm() * ry.norm(dim=0)
    scale = max(float(x.abs().max()), 1.0) * 1e-9
    ok = (den > 1e-12) & (rx.norm() > scale * n**0.5)
    out = torch.where(ok, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))
    return out.reshape(shape).float()


@dataclass(frozen=True)
class CountTracking:
    """Per prompt, each head's attention from the answer position to the ``(`` tokens, and how well it follows
    the number of *open* parens once the prompt's length and its number of ``(`` tokens are regressed out.

    - ``mass[prompt, layer, head]``: attention to all tokens holding a ``(`` (open or already closed);
    - ``open_mass`` / ``closed_mass``: to the still-open / the already-closed ``(`` tokens;
    - ``n_open``, ``n_parens`` (``(`` characters), ``n_tokens``: ``[prompt]``;
    - ``partial_corr[layer, head]``: correlation of ``mass`` with ``n_open`` given ``n_tokens`` and ``n_parens``
      (a head whose paren attention only grows with the number of paren tokens, by dilution, scores ~0);
    - ``raw_corr[layer, head]``: the plain correlation of ``mass`` with ``n_open`` (the older measure).

    On the paper's prompts alone ``n_open``, ``n_parens`` and ``n_tokens`` move together, so ``partial_corr`` is
    NaN: use prompts that close some parens first (:func:`codecircuits.tasks.parens.closed_dataset`).
    """

    mass: torch.Tensor
    open_mass: torch.Tensor
    closed_mass: torch.Tensor
    n_open: torch.Tensor
    n_parens: torch.Tensor
    n_tokens: torch.Tensor
    partial_corr: torch.Tensor
    raw_corr: torch.Tensor
    axes: tuple[str, ...] = ("prompt", "layer", "head")

    @property
    def covariates(self) -> torch.Tensor:
        return torch.stack([self.n_tokens, self.n_parens], 1).double()

    def heads(self, k: int = 5, *, by: str = "partial_corr") -> list[tuple[int, int]]:
        """The ``k`` heads with the largest ``|partial_corr|`` (or ``|raw_corr|``, ``by="raw_corr"``)."""
        if by not in ("partial_corr", "raw_corr"):
            raise InputError(f"by must be 'partial_corr' or 'raw_corr', got {by!r}.")
        vals = getattr(self, by).nan_to_num(0).abs()
        order = vals.flatten().argsort(descending=True)[:k]
        n_heads = vals.shape[1]
        return [(int(j) // n_heads, int(j) % n_heads) for j in order]

    def partial_interval(self, head: tuple[int, int], *, sign: float = 1.0,
                         n_resamples: int = 1000) -> intervals.Interval:
        """``sign`` x the partial correlation of ``head``'s paren attention with ``n_open`` (given ``n_tokens`` and
        ``n_parens``) with its bootstrap interval over prompts (``sign``: e.g. the sign it had where the head was
        chosen, so that the head's own direction is up)."""
        y = self.mass[:, head[0], head[1]]
        return intervals.statistic(lambda a, b, c: sign * intervals.partial_correlation(a, b, c), self.n_open, y,
                                   self.covariates, n_resamples=n_resamples)

    def mean_abs_partial_interval(self, heads: Sequence[tuple[int, int]], *,
                                  n_resamples: int = 1000) -> intervals.Interval:
        """The mean over ``heads`` (e.g. random heads: the control) of ``|partial correlation|``, with its bootstrap
        interval over prompts."""
        y = torch.stack([self.mass[:, a, b] for a, b in heads], 1)  # [n, heads]

        def stat(x, y, z):
            pcs = [intervals.partial_correlation(x, y[..., j], z).abs() for j in range(y.shape[-1])]
            return torch.stack(pcs, -1).mean(-1)

        return intervals.statistic(stat, self.n_open, y, self.covariates, n_resamples=n_resamples)

    def to_dataframe(self):
        import pandas as pd

        rows = []
        n_layers, n_heads = self.partial_corr.shape
        per_open = (self.open_mass / self.n_open.clamp_min(1)[:, None, None]).mean(0)
        n_closed = (self.n_parens - self.n_open).clamp_min(0)
        has_closed = n_closed > 0
        per_closed = (
            (self.closed_mass[has_closed] / n_closed[has_closed][:, None, None]).mean(0)
            if has_closed.any()
            else torch.full((n_layers, n_heads), float("nan"))
        )
        for layer in range(n_layers):
            for h in range(n_heads):
                rows.append(
                    dict(head=head_label(layer, h), layer=layer, head_index=h,
                         partial_corr=float(self.partial_corr[layer, h]), raw_corr=float(self.raw_corr[layer, h]),
                         paren_attn=float(self.mass[:, layer, h].mean()), per_open_paren=float(per_open[layer, h]),
                         per_closed_paren=float(per_closed[layer, h]))
                )
        return pd.DataFrame(rows)

    def top(self, k: int = 10, by: str = "partial_corr"):
        """The ``k`` rows of :meth:`to_dataframe` with the largest ``|by|`` (a correlation's sign is not the point;
        NaN counts as 0), largest first."""
        return self.to_dataframe().sort_values(
            by, ascending=False, kind="stable", key=lambda s: s.abs().fillna(0)
        ).head(k)

    def plot(self, by: str = "partial_corr"):
        """A layer × head heatmap of ``by``: ``"partial_corr"`` (default) or ``"raw_corr"``."""
        if by not in ("partial_corr", "raw_corr"):
            raise InputError(f"plot(by={by!r}): choose 'partial_corr' or 'raw_corr'.")
        return figures.heatmap(getattr(self, by).float(), title=f"count tracking: {by.replace('_', ' ')}",
                               y_title="layer", x_title="head", center=0.0, value_label=by)


def count_tracking(
    model,
    groups: Sequence[tuple[torch.Tensor, torch.Tensor | int]],
    *,
    caches: Sequence | None = None,
    pos: int = -1,
) -> CountTracking:
    """How each head's attention to the ``(`` tokens follows the number of open parens beyond token count.

    ``groups``: ``(tokens [batch, pos], n_open)`` (an int or one per prompt), one group per token length;
    ``caches`` (with ``attn.hook_pattern``, from :func:`codecircuits.lens.run_cache`) reuse forward passes.
    Open and closed ``(`` are told apart from the tokens themselves (:func:`open_paren_counts`).
    """
    if not groups:
        raise InputError("count_tracking needs at least one group of (tokens, n_open).")
    n_layers = model.cfg.n_layers
    masses, opens, closeds, n_open, n_parens, n_tokens = [], [], [], [], [], []
    for gi, (tokens, k) in enumerate(groups):
        cache = caches[gi] if caches is not None else run_cache(model, tokens, extra=("attn.hook_pattern",))[1]
        all_c, open_c = open_paren_counts(model, tokens)
        all_c, open_c = all_c.float(), open_c.float()
        is_paren, is_open = (all_c > 0).float(), (open_c > 0).float()
        is_closed = ((all_c - open_c) > 0).float()
        m, mo, mc = [], [], []
        for layer in range(n_layers):
            pat = cache[hook_name("pattern", layer)][:, :, pos].detach().float().cpu()  # [b, h, key]
            m.append((pat * is_paren[:, None]).sum(-1))
            mo.append((pat * is_open[:, None]).sum(-1))
            mc.append((pat * is_closed[:, None]).sum(-1))
        masses.append(torch.stack(m, 1))
        opens.append(torch.stack(mo, 1))
        closeds.append(torch.stack(mc, 1))
        b = tokens.shape[0]
        n_open.append(torch.as_tensor(k).float().expand(b) if torch.as_tensor(k).dim() == 0 else torch.as_tensor(k))
        n_parens.append(all_c.sum(-1))
        n_tokens.append(torch.full((b,), float(tokens.shape[1])))
    mass = torch.cat(masses)
    n_open_t = torch.cat(n_open).float()
    if n_open_t.unique().numel() < 2:
        raise InputError("count_tracking needs prompts with at least two different numbers of open parens.")
    n_parens_t, n_tokens_t = torch.cat(n_parens), torch.cat(n_tokens)
    cov = torch.stack([n_tokens_t, n_parens_t], 1)
    return CountTracking(mass, torch.cat(opens), torch.cat(closeds), n_open_t, n_parens_t, n_tokens_t,
                         partial_correlation(n_open_t, mass, cov), _pearson(n_open_t, mass))
