"""Token windows streamed from our corpora for transcoder training and quality: no activations on disk.

Each corpus is cut into token windows by the memories study's chunker (:func:`codecircuits.memories.chunks.chunk_corpus`,
``order="sample"``: a seeded uniform sample of the corpus's windows, every part of every file equally likely, the
model's BOS in front when it uses one). The windows of all corpora are pooled, and each pass over the pool
("epoch") visits them in its own seeded permutation, so the stream is a pure function of ``(seed, position)``:
window ``p`` of the stream is ``pool[perm(seed, p // n)[p % n]]``. A run that stops at position ``p`` resumes by
rebuilding the pool and reading on from ``p``; nothing but the position is stored.

The default training corpora are the standard library's train split, HumanEval, and the train splits of the
Debian-sourced languages (Java, Go, shell) that are fetched; the default held-out corpora are the test splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.batching import pad_id
from ..errors import InputError
from ..memories.chunks import ChunkedCorpus, chunk_corpus


def default_corpora(split: str = "train") -> tuple[str, ...]:
    """``stdlib:{split}`` and the Debian languages' ``{lang}:{split}`` that are fetched; HumanEval with ``train``
    (it has no split of its own, so it is training data and never held out)."""
    from .. import debian_sources

    specs = [f"stdlib:{split}"]
    if split == "train":
        specs.append("humaneval")
    specs += [f"{lang}:{split}" for lang in debian_sources.SOURCES if debian_sources.fetched(lang)]
    return tuple(specs)


@dataclass
class TokenStream:
    """Windows of several chunked corpora, pooled and visited in seeded per-epoch permutations (module docstring)."""

    corpora: list[ChunkedCorpus]
    refs: np.ndarray  # [n, 2]: (corpus index, chunk index) of every window in the pool
    lengths: np.ndarray  # [n]: document tokens of each window (BOS not counted)
    seed: int
    pad: int
    names: tuple[str, ...] = ()
    _perms: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def tokens_per_epoch(self) -> int:
        return int(self.lengths.sum())

    @property
    def mean_window(self) -> float:
        return float(self.lengths.mean())

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.refs))}
        return self._perms[epoch]

    def window_ids(self, position: int) -> torch.Tensor:
        """Window ``position`` of the stream as the model sees it (BOS in front when the model uses one)."""
        n = len(self.refs)
        c, k = self.refs[self._perm(position // n)[position % n]]
        return self.corpora[int(c)].chunk_tokens(int(k))

    def batch(self, position: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows ``position .. position + batch_size - 1``: right-padded tokens ``[batch, pos]`` and the mask of
        real document tokens (BOS and padding excluded)."""
        rows = [self.window_ids(position + i) for i in range(batch_size)]
        width = max(len(r) for r in rows)
        toks = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        first = 0 if self.corpora[0].bos is None else 1
        for i, r in enumerate(rows):
            toks[i, : len(r)] = r
            mask[i, first : len(r)] = True
        return toks, mask


def token_stream(
    model,
    corpora: str | Sequence[str] | None = None,
    *,
    texts: Sequence[str] | None = None,
    tokens: int | None = None,
    window: int = 128,
    seed: int = 0,
    split: str = "train",
) -> TokenStream:
    """A :class:`TokenStream` over ``texts`` (a list of source texts) or ``corpora`` (corpus specs such as
    ``stdlib:train``, ``humaneval``, ``java:train``; default :func:`default_corpora` of ``split``). Each corpus
    contributes a seeded sample of at most ``tokens`` document tokens (all of it when smaller), so the pool mixes
    corpora in proportion to their sizes up to the budget."""
    if texts is not None:
        if isinstance(texts, str) or not len(texts):
            raise InputError("texts must be a non-empty list of source texts (or pass corpora=... instead)")
        sources: list = [list(texts)]
        names: tuple[str, ...] = ("texts",)
    else:
        specs = default_corpora(split) if corpora is None else ((corpora,) if isinstance(corpora, str) else tuple(corpora))
        if not specs:
            raise InputError("no corpora given: name at least one, such as 'stdlib:train'")
        sources, names = list(specs), tuple(specs)
    chunked = [
        chunk_corpus(model, src, window=window, max_tokens=tokens, order="sample", seed=seed) for src in sources
    ]
    refs, lengths = [], []
    for ci, cc in enumerate(chunked):
        for k in range(len(cc)):
            refs.append((ci, k))
            lengths.append(len(cc.chunk_ids(k)))
    return TokenStream(
        corpora=chunked,
        refs=np.asarray(refs, dtype=np.int64).reshape(-1, 2),
        lengths=np.asarray(lengths, dtype=np.int64),
        seed=seed,
        pad=pad_id(model),
        names=names,
    )


__all__ = ["TokenStream", "default_corpora", "token_stream"]
