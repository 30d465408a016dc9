"""Are the same keys triggered by a concept in every language? (Haider et al. 2024's cross-language comparison.)

Each language's corpus is scanned on its own (:func:`codecircuits.memories.scan`) and scored against its own
catalogue (:func:`codecircuits.memories.concepts.key_scores`; the Java and Go catalogues share concept names with
the Python one, :data:`codecircuits.memories.catalogues.SHARED`). For each shared concept this compares the
sets of keys selected for it (``score >= tau`` and ``lift >= min_lift``) between languages:

- **Jaccard overlap** of every pair of languages, and the keys selected in all of them;
- its **chance level**: the same overlap between random key sets with the same number of keys in each layer as
  the real ones (``n_draws`` draws; mean and 95% range), so a concept whose keys sit in the same few layers in
  every language is not mistaken for one whose keys are the same;
- the **rank correlation** (Spearman) of the concept's score over all keys between two languages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import pandas as pd
import torch

from .. import figures
from ..errors import InputError
from .concepts import ConceptScores


@dataclass(frozen=True)
class ConceptOverlap:
    """One concept's keys across languages (pairs are named ``"python/java"``)."""

    concept: str
    n_keys: dict[str, int]  # selected keys per language
    in_all: int  # keys selected in every language
    jaccard: dict[str, float]
    chance_mean: dict[str, float]
    chance_high: dict[str, float]  # 97.5th percentile of the chance overlap
    score_rank_corr: dict[str, float]

    def above_chance(self, pair: str) -> bool:
        """Whether the observed overlap of ``pair`` lies above the 95% range of the layer-matched chance draws."""
        return self.jaccard[pair] > self.chance_high[pair]


@dataclass(frozen=True)
class CrossLanguage:
    """The comparison of :func:`compare_languages`: one :class:`ConceptOverlap` per shared concept."""

    languages: tuple[str, ...]
    overlaps: tuple[ConceptOverlap, ...]
    tau: float
    min_lift: float
    n_draws: int

    @property
    def pairs(self) -> list[str]:
        return [f"{a}/{b}" for a, b in combinations(self.languages, 2)]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per concept and pair of languages."""
        rows = []
        for o in self.overlaps:
            for p in self.pairs:
                a, b = p.split("/")
                rows.append(
                    {
                        "concept": o.concept,
                        "pair": p,
                        "keys_a": o.n_keys[a],
                        "keys_b": o.n_keys[b],
                        "jaccard": o.jaccard[p],
                        "chance_mean": o.chance_mean[p],
                        "chance_high": o.chance_high[p],
                        "above_chance": o.above_chance(p),
                        "score_rank_corr": o.score_rank_corr[p],
                        "in_all_languages": o.in_all,
                    }
                )
        return pd.DataFrame(rows)

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` rows of :meth:`to_dataframe` (concept and pair of languages) whose keys overlap most: the largest
        ``jaccard`` first."""
        return self.to_dataframe().sort_values("jaccard", ascending=False, kind="stable").head(k)

    def plot(self) -> figures.Figure:
        """A concept × pair-of-languages heatmap of the overlap (Jaccard) of the keys each selects."""
        df = self.to_dataframe()
        if not len(df):
            raise InputError("No shared concepts to plot.")
        grid = df.pivot(index="concept", columns="pair", values="jaccard")
        concepts = [o.concept for o in self.overlaps]
        grid = grid.reindex(index=concepts, columns=self.pairs)
        return figures.heatmap(grid.to_numpy(dtype=float), title="keys shared across languages (Jaccard)",
                               y_labels=concepts, x_labels=self.pairs, y_title="concept", x_title="languages",
                               vmin=0.0, vmax=1.0, value_label="jaccard")

    def shared_pairs(self) -> pd.DataFrame:
        """The rows of :meth:`to_dataframe` whose concept has keys in both languages of the pair."""
        df = self.to_dataframe()
        return df[(df["keys_a"] > 0) & (df["keys_b"] > 0)] if len(df) else df

    def summary(self) -> dict:
        """How many concept-pairs (with keys in both languages) overlap above chance, and the mean overlap."""
        df = self.shared_pairs()
        return {
            "concept_pairs": int(len(df)),
            "above_chance": int(df["above_chance"].sum()) if len(df) else 0,
            "mean_jaccard": float(df["jaccard"].mean()) if len(df) else float("nan"),
            "mean_chance": float(df["chance_mean"].mean()) if len(df) else float("nan"),
            "mean_score_rank_corr": float(df["score_rank_corr"].mean()) if len(df) else float("nan"),
        }


def _selected(sc: ConceptScores, name: str, tau: float, min_lift: float) -> torch.Tensor:
    """Bool ``[layer, neuron]``: the keys selected for ``name``."""
    ci = sc._ci(name)
    return (sc.scores[ci] >= tau) & (sc.lift()[ci] >= min_lift) & (sc.n_triggers > 0)


def _jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Jaccard of bool sets along the last two dims (leading dims are draws)."""
    inter = (a & b).flatten(-2).sum(-1).double()
    union = (a | b).flatten(-2).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def _random_like(sel: torch.Tensor, n_draws: int, gen: torch.Generator) -> torch.Tensor:
    """``[draw, layer, neuron]`` random key sets with the per-layer counts of ``sel``."""
    n_layers, d = sel.shape
    counts = sel.sum(-1)
    ranks = torch.rand((n_draws, n_layers, d), generator=gen).argsort(-1).argsort(-1)
    return ranks < counts.view(1, -1, 1)


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    if x.numel() < 3:
        return float("nan")
    rx = x.double().argsort().argsort().double()
    ry = y.double().argsort().argsort().double()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = (rx.square().sum() * ry.square().sum()).sqrt()
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def compare_languages(
    scores: Mapping[str, ConceptScores],
    concepts: Sequence[str] | None = None,
    *,
    tau: float = 0.5,
    min_lift: float = 2.0,
    n_draws: int = 200,
    seed: int = 0,
) -> CrossLanguage:
    """Compare the keys each concept selects in each language (``scores``: ``{language: ConceptScores}`` of the
    same model and layers). ``concepts``: the names to compare (default: every name all the scores share)."""
    langs = tuple(scores)
    if len(langs) < 2:
        raise InputError(f"compare_languages needs the scores of at least two languages; got {list(langs)}.")
    first = scores[langs[0]]
    for lang in langs[1:]:
        s = scores[lang]
        if tuple(s.layers) != tuple(first.layers) or s.scores.shape[1:] != first.scores.shape[1:]:
            raise InputError(
                f"The scores of {langs[0]} and {lang} cover different keys (layers {list(first.layers)} vs "
                f"{list(s.layers)}); scan the same model and layers in every language."
            )
    common = [c.name for c in first.concepts if all(c.name in scores[g].names for g in langs[1:])]
    names = list(concepts) if concepts is not None else common
    missing = [n for n in names if n not in common]
    if missing:
        raise InputError(f"Concepts {missing} are not scored in every language; shared: {', '.join(common)}.")
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for name in names:
        sel = {g: _selected(scores[g], name, tau, min_lift) for g in langs}
        rand = {g: _random_like(sel[g], n_draws, gen) for g in langs}
        jac, cm, ch, corr = {}, {}, {}, {}
        for a, b in combinations(langs, 2):
            p = f"{a}/{b}"
            jac[p] = float(_jaccard(sel[a], sel[b]))
            null = _jaccard(rand[a], rand[b])
            cm[p] = float(null.mean())
            ch[p] = float(torch.quantile(null, 0.975))
            sa, sb = scores[a], scores[b]
            both = (sa.n_triggers > 0) & (sb.n_triggers > 0)
            corr[p] = _spearman(sa.scores[sa._ci(name)][both], sb.scores[sb._ci(name)][both])
        in_all = torch.stack([sel[g] for g in langs]).all(0)
        out.append(
            ConceptOverlap(concept=name, n_keys={g: int(sel[g].sum()) for g in langs}, in_all=int(in_all.sum()),
                           jaccard=jac, chance_mean=cm, chance_high=ch, score_rank_corr=corr)
        )
    return CrossLanguage(languages=langs, overlaps=tuple(out), tau=tau, min_lift=min_lift, n_draws=n_draws)


__all__ = ["ConceptOverlap", "CrossLanguage", "compare_languages"]
