"""Chunked corpora: documents tokenized and cut into the chunks a trigger scan visits, in order.

Each document is tokenized without special tokens and cut into consecutive, non-overlapping chunks of
``window - 1`` tokens; each chunk is run as its own sequence with the model's BOS token in front (when the
model prepends one, :func:`chunk_bos_id`), so a chunk of a long file sees only its own tokens as context. The
BOS position is never a trigger. Chunks are visited breadth-first across documents (the first chunk of every
document, then the second chunk of every document, ...), so a token budget (``max_tokens`` / ``max_chunks``)
covers many files rather than the first few.

Breadth-first visiting over-represents the start of each file (licence headers, module docstrings, imports) when
a budget ends in the first pass or two: 2,400 chunks of the JDK's 13,652 files are 2,400 licence comments.
``order="sample"`` plans a seeded uniform sample of the corpus's chunk slots instead: a character of the corpus
is drawn uniformly (files weighted by their length) and the chunk that holds it is taken, without repeats, so
every part of every file is as likely to be scanned as any other and the sample's make-up follows the corpus's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.batching import bos_id
from ..corpus import CodeFile, Corpus
from ..errors import InputError


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_bos_id(model) -> int | None:
    """The token a chunk starts with: the model's BOS (as ``model.to_tokens`` prepends it), or its EOS when the
    model prepends a start token but its tokenizer has no BOS; ``None`` when the model prepends nothing."""
    if not getattr(model.cfg, "default_prepend_bos", True):
        return None
    bos = bos_id(model)
    return bos if bos is not None else model.tokenizer.eos_token_id


@dataclass(frozen=True)
class ChunkedCorpus:
    """Tokenized documents and the chunks a scan visits, in order.

    ``ids[d]`` / ``offsets[d]`` are document ``d``'s token ids (no special tokens) and their character spans;
    chunk ``c`` holds ``ids[chunk_doc[c]][chunk_start[c] : chunk_start[c] + window - 1]``, run with BOS in front.
    """

    name: str
    names: tuple[str, ...]
    texts: tuple[str, ...]
    sha: tuple[str, ...]
    ids: tuple[np.ndarray, ...]
    offsets: tuple[np.ndarray, ...]
    chunk_doc: np.ndarray
    chunk_start: np.ndarray
    window: int
    bos: int | None

    @property
    def body(self) -> int:
        """Document tokens per chunk (``window`` less the BOS slot)."""
        return self.window - (self.bos is not None)

    def __len__(self) -> int:
        return len(self.chunk_doc)

    def chunk_ids(self, c: int) -> np.ndarray:
        d, s = int(self.chunk_doc[c]), int(self.chunk_start[c])
        return self.ids[d][s : s + self.body]

    def chunk_tokens(self, c: int) -> torch.Tensor:
        """Chunk ``c`` as the model sees it: ``[pos]`` with BOS in front when the model uses one."""
        body = torch.as_tensor(self.chunk_ids(c), dtype=torch.long)
        if self.bos is None:
            return body
        return torch.cat([torch.tensor([self.bos]), body])

    @property
    def n_tokens(self) -> int:
        """Document tokens covered by the chunks (BOS not counted)."""
        return int(sum(len(self.chunk_ids(c)) for c in range(len(self))))

    def batch(self, chunks: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded tokens ``[batch, pos]`` of ``chunks`` and a mask ``[batch, pos]`` of real document tokens."""
        rows = [self.chunk_tokens(int(c)) for c in chunks]
        n = max(len(r) for r in rows)
        toks = torch.full((len(rows), n), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.bool)
        first = 0 if self.bos is None else 1
        for i, r in enumerate(rows):
            toks[i, : len(r)] = r
            mask[i, first : len(r)] = True
        return toks, mask

    def flat_index(self) -> tuple[np.ndarray, int]:
        """Start of each document in the concatenation of all documents' tokens, and the total length."""
        lens = np.array([len(x) for x in self.ids], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(lens) else np.zeros(0, np.int64)
        return starts, int(lens.sum())


def _encode(tok, text: str) -> tuple[np.ndarray, np.ndarray]:
    """A document's token ids (no special tokens) and their character spans ``[token, 2]``."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return np.asarray(enc["input_ids"], dtype=np.int64), np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)


def _as_files(corpus) -> tuple[str, list[CodeFile]]:
    if isinstance(corpus, Corpus):
        return corpus.name, list(corpus.files)
    if isinstance(corpus, str):
        from .. import corpus as corpus_mod

        c = corpus_mod.load(corpus)
        return c.name, list(c.files)
    if isinstance(corpus, Sequence) and all(isinstance(t, str) for t in corpus):
        return "texts", [CodeFile(f"text{i}", t) for i, t in enumerate(corpus)]
    if isinstance(corpus, Sequence) and all(isinstance(t, CodeFile) for t in corpus):
        return "files", list(corpus)
    raise InputError(
        "A corpus must be a codecircuits.corpus.Corpus, a corpus spec such as 'stdlib:test' or a directory, "
        f"or a list of source texts; got {type(corpus).__name__}."
    )


def chunk_corpus(
    model,
    corpus,
    *,
    window: int = 128,
    max_tokens: int | None = None,
    max_chunks: int | None = None,
    min_tokens: int = 2,
    order: str = "breadth",
    seed: int = 0,
) -> ChunkedCorpus:
    """Tokenize ``corpus`` and plan its chunks breadth-first across documents, or as a seeded uniform sample of
    its chunk slots with ``order="sample"`` (see the module docstring).

    ``max_tokens`` / ``max_chunks`` cap the plan (whole chunks, in visiting order); chunks shorter than
    ``min_tokens`` document tokens are dropped. Documents are tokenized as the plan reaches them, so a budget
    that ends within the first pass over the documents tokenizes (and keeps) only the documents before that
    point: a 300k-token scan of a 60M-token corpus does not tokenize all of it. ``seed`` sets the sample
    (``order="sample"`` only).
    """
    if isinstance(corpus, ChunkedCorpus):
        return corpus
    if window < 2 or window > int(model.cfg.n_ctx):
        raise InputError(f"window must be between 2 and the model's context ({model.cfg.n_ctx}); got {window}.")
    name, files = _as_files(corpus)
    if not files:
        raise InputError(f"The corpus {name!r} has no documents.")
    bos = chunk_bos_id(model)
    tok = model.tokenizer
    if not getattr(tok, "is_fast", False):
        raise InputError("Chunking needs a fast tokenizer (character offsets); this model's tokenizer is slow.")
    ids, offs = [], []

    def tokenize(d: int) -> None:  # documents are tokenized when the plan first reaches them
        i, o = _encode(tok, files[d].text)
        ids.append(i)
        offs.append(o)

    body = window - (bos is not None)
    if order not in ("breadth", "sample"):
        raise InputError(f"order must be 'breadth' or 'sample'; got {order!r}.")
    if order == "sample":
        files, ids, offs, doc_l, start_l = _sampled_plan(
            files, tok, body, max_tokens=max_tokens, max_chunks=max_chunks, min_tokens=min_tokens, seed=seed
        )
        return _chunked(name, files, ids, offs, doc_l, start_l, window, bos, min_tokens, max_tokens, max_chunks)
    doc_l, start_l, total = [], [], 0
    depth, full = 0, False
    while not full:
        more = False
        for d in range(len(files)):
            if d == len(ids):
                tokenize(d)
            starts = range(0, len(ids[d]), body)
            if depth >= len(starts):
                continue
            more = True
            n = min(body, len(ids[d]) - starts[depth])
            if n < min_tokens:
                continue
            if (max_chunks is not None and len(doc_l) >= max_chunks) or (
                max_tokens is not None and total + n > max_tokens
            ):
                full = True
                break
            doc_l.append(d)
            start_l.append(starts[depth])
            total += n
        if not more:
            break
        depth += 1
    files = files[: len(ids)]  # a budget that ends in the first pass leaves the later documents out, untokenized
    return _chunked(name, files, ids, offs, doc_l, start_l, window, bos, min_tokens, max_tokens, max_chunks)


def _chunked(name, files, ids, offs, doc_l, start_l, window, bos, min_tokens, max_tokens, max_chunks):
    if not doc_l:
        raise InputError(
            f"The corpus {name!r} gives no chunk of at least {min_tokens} tokens within the budget "
            f"(max_tokens={max_tokens}, max_chunks={max_chunks})."
        )
    return ChunkedCorpus(name=name, names=tuple(f.path for f in files), texts=tuple(f.text for f in files),
                         sha=tuple(_sha(f.text) for f in files), ids=tuple(ids), offsets=tuple(offs),
                         chunk_doc=np.asarray(doc_l, dtype=np.int64), chunk_start=np.asarray(start_l, dtype=np.int64),
                         window=window, bos=bos)


def _sampled_plan(files, tok, body: int, *, max_tokens, max_chunks, min_tokens: int, seed: int):
    """A seeded uniform sample of chunk slots: draw a character of the corpus, take the chunk holding it.

    Returns the documents touched (in the order first drawn), their ids and offsets, and the plan. When the budget
    covers a large share of the corpus (or there is none), every document is tokenized and all chunk slots are
    visited in a seeded random order instead, which is the same distribution without rejection.
    """
    rng = np.random.default_rng(seed)
    lens = np.array([len(f.text) for f in files], dtype=np.float64)
    if lens.sum() == 0:
        raise InputError("The corpus's documents are all empty.")
    touched: dict[int, int] = {}
    ids, offs, kept = [], [], []

    def doc(f: int) -> int:
        if f not in touched:
            i, o = _encode(tok, files[f].text)
            touched[f] = len(kept)
            kept.append(files[f])
            ids.append(i)
            offs.append(o)
        return touched[f]

    def fits(n: int, count: int, total: int) -> bool:
        return not ((max_chunks is not None and count >= max_chunks) or (max_tokens is not None and total + n > max_tokens))

    doc_l, start_l, total = [], [], 0
    approx_tokens = lens.sum() / 3.0  # code is 3-4 characters per token; a high estimate of the corpus's size
    budget = min(x for x in (max_tokens, None if max_chunks is None else max_chunks * body, np.inf) if x is not None)
    if budget >= 0.25 * approx_tokens:  # a large share: enumerate every slot and shuffle
        slots = []
        for f in range(len(files)):
            d = doc(f)
            slots += [(d, s) for s in range(0, len(ids[d]), body) if min(body, len(ids[d]) - s) >= min_tokens]
        for i in rng.permutation(len(slots)):
            d, s = slots[i]
            n = min(body, len(ids[d]) - s)
            if not fits(n, len(doc_l), total):
                break
            doc_l.append(d)
            start_l.append(s)
            total += n
        return kept, ids, offs, doc_l, start_l
    p = lens / lens.sum()
    taken: set[tuple[int, int]] = set()
    misses = 0
    while misses < 10_000:
        for f in rng.choice(len(files), size=256, p=p):
            d = doc(int(f))
            char = int(rng.integers(len(files[f].text)))
            if len(ids[d]) == 0:
                misses += 1
                continue
            t = max(0, int(np.searchsorted(offs[d][:, 0], char, side="right")) - 1)
            s = (t // body) * body
            n = min(body, len(ids[d]) - s)
            if (d, s) in taken or n < min_tokens:
                misses += 1
                continue
            if not fits(n, len(doc_l), total):
                return kept, ids, offs, doc_l, start_l
            taken.add((d, s))
            doc_l.append(d)
            start_l.append(s)
            total += n
    return kept, ids, offs, doc_l, start_l


__all__ = ["ChunkedCorpus", "chunk_bos_id", "chunk_corpus"]
