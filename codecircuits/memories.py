"""Feed-forward layers as key-value memories (Geva et al. 2021; Haider et al. 2024 on code models).

Terms
-----
A **key** is one neuron ``k`` of ``blocks.{l}.mlp.hook_post``; its **activation coefficient** at a position is
``m = hook_post[..., k]`` and its **value** is the row ``W_out[l][k]`` that the MLP adds to the residual stream,
scaled by ``m``. In a plain MLP (GPT-NeoX, CodeGen, GPTBigCode) ``m = act(x · W_in[:, k] + b_in[k])`` and the key
is the column ``W_in[:, k]``. In a gated MLP (Llama, Qwen2; SmolLM2) ``m = act(x · W_gate[:, k]) · (x · W_in[:, k])``:
the key is the pair (gate column, up column) and ``m`` can be large and negative, because the up projection's
sign is arbitrary (flipping ``W_in[:, k]`` and ``W_out[k]`` together leaves the model unchanged). Keys of gated
MLPs are therefore ranked by ``|m|`` (``rank_by="abs"``, the default for them) and plain ones by ``m``.

Chunking
--------
Each document is tokenized without special tokens and cut into consecutive, non-overlapping chunks of
``window - 1`` tokens; each chunk is run as its own sequence with the model's BOS token in front (when the
model prepends one), so a chunk of a long file sees only its own tokens as context. The BOS position is never a
trigger. Chunks are visited breadth-first across documents (the first chunk of every document, then the second
chunk of every document, ...), so a token budget (``max_tokens`` / ``max_chunks``) covers many files rather
than the first few. A chunk is the unit of a trigger example, as a sentence is in Geva et al.: for each key the
scan keeps the top-K chunks by the key's maximum coefficient in the chunk, and the trigger example is the
chunk's prefix that ends at that token.

On-disk format (``scan.safetensors``)
-------------------------------------
One safetensors file, written atomically (temporary file, fsync, ``os.replace``) at every checkpoint:

- tensor ``values``  float32 ``[layer, neuron, rank]``: the signed coefficient of each top-K trigger;
- tensor ``chunk``   int64   ``[layer, neuron, rank]``: the chunk it came from (-1 in unfilled slots);
- tensor ``pos``     int64   ``[layer, neuron, rank]``: the trigger token's index in the document's tokens;
- tensor ``chunk_doc`` / ``chunk_start`` int64 ``[chunk]``: the scan plan (document index and first token of
  each chunk, in visiting order);
- metadata ``codecircuits``: JSON with ``format`` (``"codecircuits.memories/1"``), ``model``, ``corpus``,
  ``settings`` (k, window, rank_by, layers, ...), ``docs`` (name and SHA-256 of each document's text),
  ``chunks_done`` and ``tokens_done``.

Ranks are sorted by descending score; ties keep the earlier chunk. :func:`load_scan` reads the file back
into a :class:`TriggerScan`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .corpus import CodeFile, Corpus
from .errors import InputError
from .inputs import bos_id, token_texts

FORMAT = "codecircuits.memories/1"
RANK_BY = ("auto", "abs", "signed")

# ------------------------------------------------------------------------------------------------------------
# chunked corpora


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _bos_id(model) -> int | None:
    """The model's BOS (as ``model.to_tokens`` prepends it), or its EOS when it prepends one but has no BOS."""
    if not getattr(model.cfg, "default_prepend_bos", True):
        return None
    bos = bos_id(model)
    return bos if bos is not None else model.tokenizer.eos_token_id


def _pad_id(model) -> int:
    tok = model.tokenizer
    for t in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id):
        if t is not None:
            return int(t)
    return 0


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


def _as_files(corpus) -> tuple[str, list[CodeFile]]:
    if isinstance(corpus, Corpus):
        return corpus.name, list(corpus.files)
    if isinstance(corpus, str):
        from . import corpus as corpus_mod

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
) -> ChunkedCorpus:
    """Tokenize ``corpus`` and plan its chunks breadth-first across documents (see the module docstring).

    ``max_tokens`` / ``max_chunks`` cap the plan (whole chunks, in visiting order); chunks shorter than
    ``min_tokens`` document tokens are dropped.
    """
    if isinstance(corpus, ChunkedCorpus):
        return corpus
    if window < 2 or window > int(model.cfg.n_ctx):
        raise InputError(f"window must be between 2 and the model's context ({model.cfg.n_ctx}); got {window}.")
    name, files = _as_files(corpus)
    if not files:
        raise InputError(f"The corpus {name!r} has no documents.")
    bos = _bos_id(model)
    tok = model.tokenizer
    if not getattr(tok, "is_fast", False):
        raise InputError("Chunking needs a fast tokenizer (character offsets); this model's tokenizer is slow.")
    ids, offs = [], []
    for f in files:
        enc = tok(f.text, add_special_tokens=False, return_offsets_mapping=True)
        ids.append(np.asarray(enc["input_ids"], dtype=np.int64))
        offs.append(np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2))
    body = window - (bos is not None)
    per_doc = [list(range(0, len(x), body)) for x in ids]
    doc_l, start_l, total = [], [], 0
    depth = 0
    while any(depth < len(p) for p in per_doc):
        for d, starts in enumerate(per_doc):
            if depth >= len(starts):
                continue
            n = min(body, len(ids[d]) - starts[depth])
            if n < min_tokens:
                continue
            if (max_chunks is not None and len(doc_l) >= max_chunks) or (
                max_tokens is not None and total + n > max_tokens
            ):
                break
            doc_l.append(d)
            start_l.append(starts[depth])
            total += n
        else:
            depth += 1
            continue
        break
    if not doc_l:
        raise InputError(
            f"The corpus {name!r} gives no chunk of at least {min_tokens} tokens within the budget "
            f"(max_tokens={max_tokens}, max_chunks={max_chunks})."
        )
    return ChunkedCorpus(
        name=name,
        names=tuple(f.path for f in files),
        texts=tuple(f.text for f in files),
        sha=tuple(_sha(f.text) for f in files),
        ids=tuple(ids),
        offsets=tuple(offs),
        chunk_doc=np.asarray(doc_l, dtype=np.int64),
        chunk_start=np.asarray(start_l, dtype=np.int64),
        window=window,
        bos=bos,
    )


# ------------------------------------------------------------------------------------------------------------
# the scan


@dataclass(frozen=True)
class TriggerExample:
    """One trigger example of a key: the chunk prefix ending at the token of maximum coefficient."""

    rank: int
    doc: str
    chunk: int
    pos: int  # index of the trigger token among the document's tokens
    coefficient: float
    prefix: str  # chunk text from its first token to the end of the trigger token
    trigger: str  # the trigger token's text
    next_token: str  # the document's next token ('' at the end)


@dataclass(frozen=True)
class TriggerScan:
    """The top-K trigger examples of every key (``[layer, neuron, rank]``), from :func:`scan` or :func:`load_scan`."""

    values: torch.Tensor  # float32 [layer, neuron, rank]: signed coefficient
    chunk: torch.Tensor  # int64 [layer, neuron, rank]: chunk index (-1 = unfilled)
    pos: torch.Tensor  # int64 [layer, neuron, rank]: trigger token index in its document
    layers: tuple[int, ...]
    chunk_doc: torch.Tensor  # int64 [chunk]
    chunk_start: torch.Tensor  # int64 [chunk]
    docs: tuple[str, ...]
    doc_sha: tuple[str, ...]
    model: str
    corpus: str
    settings: dict = field(default_factory=dict)
    chunks_done: int = 0
    tokens_done: int = 0
    axes: tuple[str, ...] = ("layer", "neuron", "rank")

    @property
    def k(self) -> int:
        return int(self.values.shape[-1])

    @property
    def complete(self) -> bool:
        return self.chunks_done == len(self.chunk_doc)

    def _li(self, layer: int) -> int:
        if layer not in self.layers:
            raise InputError(f"Layer {layer} was not scanned; scanned layers: {list(self.layers)}.")
        return self.layers.index(layer)

    def scores(self) -> torch.Tensor:
        """The ranking score ``[layer, neuron, rank]``: ``|m|`` or ``m`` by the scan's ``rank_by``."""
        return self.values.abs() if self.settings.get("rank_by") == "abs" else self.values

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` keys with the strongest top trigger (by the ranking score)."""
        s = self.scores()[..., 0]
        flat = s.flatten().nan_to_num(neginf=-np.inf)
        idx = flat.topk(min(k, flat.numel())).indices
        li, ni = idx // s.shape[1], idx % s.shape[1]
        return pd.DataFrame(
            {
                "layer": [self.layers[int(i)] for i in li],
                "neuron": ni.tolist(),
                "coefficient": self.values[li, ni, 0].tolist(),
                "chunk": self.chunk[li, ni, 0].tolist(),
                "doc": [self.docs[int(self.chunk_doc[c])] if c >= 0 else "" for c in self.chunk[li, ni, 0].tolist()],
                "pos": self.pos[li, ni, 0].tolist(),
            }
        )

    def to_dataframe(self, layer: int | None = None, neuron: int | None = None) -> pd.DataFrame:
        """Long table of trigger examples (one row per key and rank), optionally of one layer / neuron."""
        lis = range(len(self.layers)) if layer is None else [self._li(layer)]
        frames = []
        for li in lis:
            v, c, p = self.values[li], self.chunk[li], self.pos[li]
            ns = torch.arange(v.shape[0]) if neuron is None else torch.tensor([neuron])
            v, c, p = v[ns], c[ns], p[ns]
            n, r = torch.meshgrid(ns, torch.arange(self.k), indexing="ij")
            keep = (c >= 0).flatten()
            cd = self.chunk_doc[c.clamp(min=0)].flatten()
            frames.append(
                pd.DataFrame(
                    {
                        "layer": self.layers[li],
                        "neuron": n.flatten()[keep].numpy(),
                        "rank": r.flatten()[keep].numpy(),
                        "coefficient": v.flatten()[keep].numpy(),
                        "chunk": c.flatten()[keep].numpy(),
                        "doc": cd[keep].numpy(),
                        "pos": p.flatten()[keep].numpy(),
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)

    def check_corpus(self, chunked: ChunkedCorpus) -> None:
        """Raise unless ``chunked`` is the corpus and plan this scan ran on."""
        if tuple(chunked.sha) != tuple(self.doc_sha):
            raise InputError(
                f"This scan ran on corpus {self.corpus!r} ({len(self.docs)} documents); the corpus given "
                f"({chunked.name!r}, {len(chunked.names)} documents) has different texts. Pass the same corpus."
            )
        n = len(self.chunk_doc)
        if len(chunked) < n or not (
            np.array_equal(chunked.chunk_doc[:n], self.chunk_doc.numpy())
            and np.array_equal(chunked.chunk_start[:n], self.chunk_start.numpy())
        ):
            raise InputError("The corpus given was chunked differently (window or caps) from the scan's plan.")

    def examples(
        self, layer: int, neuron: int, chunked: ChunkedCorpus, *, k: int | None = None
    ) -> list[TriggerExample]:
        """The trigger examples of key (``layer``, ``neuron``), strongest first, with their text."""
        self.check_corpus(chunked)
        li = self._li(layer)
        if not 0 <= neuron < self.values.shape[1]:
            raise InputError(f"neuron must be in [0, {self.values.shape[1]}); got {neuron}.")
        out = []
        for r in range(self.k if k is None else min(k, self.k)):
            c = int(self.chunk[li, neuron, r])
            if c < 0:
                break
            d, s, p = int(self.chunk_doc[c]), int(self.chunk_start[c]), int(self.pos[li, neuron, r])
            off, text = chunked.offsets[d], chunked.texts[d]
            a, e = int(off[s, 0]), int(off[p, 1])
            nxt = text[int(off[p + 1, 0]) : int(off[p + 1, 1])] if p + 1 < len(off) else ""
            out.append(
                TriggerExample(
                    rank=r,
                    doc=self.docs[d],
                    chunk=c,
                    pos=p,
                    coefficient=float(self.values[li, neuron, r]),
                    prefix=text[a:e],
                    trigger=text[int(off[p, 0]) : e],
                    next_token=nxt,
                )
            )
        return out

    def next_token_ids(self, chunked: ChunkedCorpus) -> torch.Tensor:
        """The document token after each trigger, ``[layer, neuron, rank]`` (-1 at a document's end or unfilled)."""
        self.check_corpus(chunked)
        starts, total = chunked.flat_index()
        flat = np.concatenate(list(chunked.ids) + [np.array([-1])])
        lens = np.array([len(x) for x in chunked.ids] + [0])
        c = self.chunk.clamp(min=0).numpy()
        d = self.chunk_doc.numpy()[c]
        nxt = self.pos.numpy() + 1
        ok = (self.chunk.numpy() >= 0) & (nxt < lens[d])
        idx = np.where(ok, starts[d] + nxt, total)
        return torch.as_tensor(flat[idx])

    def trigger_token_ids(self, chunked: ChunkedCorpus) -> torch.Tensor:
        """The trigger token of each example, ``[layer, neuron, rank]`` (-1 where unfilled)."""
        self.check_corpus(chunked)
        starts, total = chunked.flat_index()
        flat = np.concatenate(list(chunked.ids) + [np.array([-1])])
        c = self.chunk.clamp(min=0).numpy()
        idx = np.where(self.chunk.numpy() >= 0, starts[self.chunk_doc.numpy()[c]] + self.pos.numpy(), total)
        return torch.as_tensor(flat[idx])

    def token_purity(self, chunked: ChunkedCorpus) -> torch.Tensor:
        """Per key, the share of its trigger examples whose trigger is its most common trigger token, ``[layer, neuron]``.

        1.0 means the key fires on one surface token (a lexical, shallow key); low values mean its triggers are
        different tokens that share something else.
        """
        ids = self.trigger_token_ids(chunked)
        filled = ids >= 0
        same = (ids.unsqueeze(-1) == ids.unsqueeze(-2)) & filled.unsqueeze(-1) & filled.unsqueeze(-2)
        mode = same.sum(-1).max(-1).values
        return mode.float() / filled.sum(-1).clamp(min=1)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the scan to ``path`` (a ``.safetensors`` file) atomically; returns the path."""
        return _save(self, Path(path))


def _meta(scan: TriggerScan) -> dict:
    return {
        "format": FORMAT,
        "model": scan.model,
        "corpus": scan.corpus,
        "settings": scan.settings,
        "docs": [{"name": n, "sha256": s} for n, s in zip(scan.docs, scan.doc_sha)],
        "chunks_done": scan.chunks_done,
        "tokens_done": scan.tokens_done,
    }


def _save(scan: TriggerScan, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "values": scan.values.contiguous(),
        "chunk": scan.chunk.contiguous(),
        "pos": scan.pos.contiguous(),
        "chunk_doc": scan.chunk_doc.contiguous(),
        "chunk_start": scan.chunk_start.contiguous(),
    }
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"codecircuits": json.dumps(_meta(scan))})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a scan is an ordinary data file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_scan(path: str | os.PathLike) -> TriggerScan:
    """Read a scan written by :func:`scan` / :meth:`TriggerScan.save` (format in the module docstring)."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "scan.safetensors"
    if not path.is_file():
        raise InputError(f"No scan file at {path}; run memories.scan(..., checkpoint={str(path)!r}) first.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("codecircuits", "{}"))
            t = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise InputError(f"{path} is not a readable scan file ({e}).") from None
    if meta.get("format") != FORMAT:
        raise InputError(
            f"{path} is not a codecircuits memories scan (format {meta.get('format')!r}, want {FORMAT!r})."
        )
    settings = meta["settings"]
    return TriggerScan(
        values=t["values"],
        chunk=t["chunk"],
        pos=t["pos"],
        layers=tuple(settings["layers"]),
        chunk_doc=t["chunk_doc"],
        chunk_start=t["chunk_start"],
        docs=tuple(d["name"] for d in meta["docs"]),
        doc_sha=tuple(d["sha256"] for d in meta["docs"]),
        model=meta["model"],
        corpus=meta["corpus"],
        settings=settings,
        chunks_done=int(meta["chunks_done"]),
        tokens_done=int(meta["tokens_done"]),
    )


def _resolve_rank_by(model, rank_by: str) -> str:
    if rank_by not in RANK_BY:
        raise InputError(f"rank_by must be one of {', '.join(RANK_BY)}; got {rank_by!r}.")
    if rank_by == "auto":
        return "abs" if getattr(model.cfg, "gated_mlp", False) else "signed"
    return rank_by


def _layers(model, layers) -> tuple[int, ...]:
    n = int(model.cfg.n_layers)
    if layers is None:
        return tuple(range(n))
    out = tuple(sorted({int(layer) for layer in layers}))
    bad = [layer for layer in out if not 0 <= layer < n]
    if bad or not out:
        raise InputError(f"layers must be a non-empty subset of 0..{n - 1}; got {list(layers)}.")
    return out


def scan(
    model,
    corpus,
    *,
    k: int = 20,
    window: int = 128,
    max_tokens: int | None = None,
    max_chunks: int | None = None,
    layers: Sequence[int] | None = None,
    rank_by: str = "auto",
    batch_size: int = 8,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 64,
    resume: bool = False,
    callback: Callable[[TriggerScan], None] | None = None,
    progress: bool = True,
) -> TriggerScan:
    """Stream ``corpus`` through ``model`` and keep, for every key, its top-``k`` trigger examples.

    Memory is ``O(layers × d_mlp × k)`` whatever the corpus size: each batch of ``batch_size`` chunks is
    reduced inside the ``hook_post`` hooks to one (max, argmax) per chunk and key, and merged into the running
    top-K with one stable sort per batch. The forward stops after the last scanned layer (no unembedding).

    With ``checkpoint`` (a file path), the state is written atomically every ``checkpoint_every`` chunks (at
    batch boundaries) and at the end; ``resume=True`` continues from that file, after checking that it came
    from the same model, settings, corpus texts and chunk plan; the result then equals an uninterrupted scan's
    exactly. ``callback(state)`` runs after every batch (progress reporting, or stopping early by raising).
    """
    if k < 1:
        raise InputError(f"k must be at least 1; got {k}.")
    if batch_size < 1 or checkpoint_every < 1:
        raise InputError("batch_size and checkpoint_every must be at least 1.")
    chunked = chunk_corpus(model, corpus, window=window, max_tokens=max_tokens, max_chunks=max_chunks)
    window = chunked.window
    lays = _layers(model, layers)
    rb = _resolve_rank_by(model, rank_by)
    d_mlp = int(model.cfg.d_mlp)
    name = str(getattr(model.cfg, "model_name", "") or "model")
    settings = {"k": k, "window": window, "rank_by": rb, "layers": list(lays), "bos": chunked.bos}
    n_chunks = len(chunked)
    cd = torch.as_tensor(chunked.chunk_doc)
    cs = torch.as_tensor(chunked.chunk_start)

    shape = (len(lays), d_mlp, k)
    values = torch.zeros(shape, dtype=torch.float32)
    score = torch.full(shape, -torch.inf, dtype=torch.float32)
    chunk_t = torch.full(shape, -1, dtype=torch.long)
    pos_t = torch.full(shape, -1, dtype=torch.long)
    done, tokens_done = 0, 0

    def state() -> TriggerScan:
        return TriggerScan(
            values=values,
            chunk=chunk_t,
            pos=pos_t,
            layers=lays,
            chunk_doc=cd,
            chunk_start=cs,
            docs=chunked.names,
            doc_sha=chunked.sha,
            model=name,
            corpus=chunked.name,
            settings=dict(settings),
            chunks_done=done,
            tokens_done=tokens_done,
        )

    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.is_dir():
        ckpt = ckpt / "scan.safetensors"
    if resume:
        if ckpt is None:
            raise InputError("resume=True needs a checkpoint path.")
        if ckpt.is_file():
            old = load_scan(ckpt)
            _check_resumable(old, name, settings, chunked)
            values, chunk_t, pos_t = old.values.clone(), old.chunk.clone(), old.pos.clone()
            score = values.abs() if rb == "abs" else values.clone()
            score = torch.where(chunk_t >= 0, score, torch.full_like(score, -torch.inf))
            done, tokens_done = old.chunks_done, old.tokens_done

    pad = _pad_id(model)
    stop = max(lays) + 1
    buf: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def make_hook(li: int, mask_ref: list):
        def hook(act, hook):
            a = act.detach().float()
            m = mask_ref[0].unsqueeze(-1)
            s = a.abs() if rb == "abs" else a
            s = s.masked_fill(~m, -torch.inf)
            best, arg = s.max(dim=1)  # [batch, d_mlp]
            buf[li] = (best, a.gather(1, arg.unsqueeze(1)).squeeze(1), arg)
            return None

        return hook

    mask_ref: list = [None]
    hooks = [(f"blocks.{layer}.mlp.hook_post", make_hook(i, mask_ref)) for i, layer in enumerate(lays)]
    first = 0 if chunked.bos is None else 1
    bar = tqdm(total=n_chunks, initial=done, desc="scan", unit="chunk", disable=not progress)
    last_ckpt = done
    try:
        with torch.no_grad():
            while done < n_chunks:
                ids = list(range(done, min(done + batch_size, n_chunks)))
                toks, mask = chunked.batch(ids, pad)
                mask_ref[0] = mask
                buf.clear()
                model.run_with_hooks(toks.to(model.cfg.device), fwd_hooks=hooks, stop_at_layer=stop)
                best = torch.stack([buf[i][0] for i in range(len(lays))]).transpose(1, 2).cpu()  # [L, N, B]
                val = torch.stack([buf[i][1] for i in range(len(lays))]).transpose(1, 2).cpu()
                arg = torch.stack([buf[i][2] for i in range(len(lays))]).transpose(1, 2).cpu()
                b_chunk = torch.tensor(ids, dtype=torch.long)
                b_pos = arg - first + cs[b_chunk]  # token index in the document
                all_s = torch.cat([score, best], dim=-1)
                order = all_s.argsort(dim=-1, descending=True, stable=True)[..., :k]
                score = all_s.gather(-1, order)
                values = torch.cat([values, val], dim=-1).gather(-1, order)
                chunk_t = torch.cat([chunk_t, b_chunk.expand_as(arg)], dim=-1).gather(-1, order)
                pos_t = torch.cat([pos_t, b_pos], dim=-1).gather(-1, order)
                done = ids[-1] + 1
                tokens_done += int(mask.sum())
                bar.update(len(ids))
                if ckpt is not None and (done - last_ckpt >= checkpoint_every or done == n_chunks):
                    _save(state(), ckpt)
                    last_ckpt = done
                if callback is not None:
                    callback(state())
    finally:
        bar.close()
    return state()


def _check_resumable(old: TriggerScan, name: str, settings: dict, chunked: ChunkedCorpus) -> None:
    if old.model != name:
        raise InputError(f"The checkpoint is a scan of model {old.model!r}, not {name!r}; use another path.")
    for key in ("k", "window", "rank_by", "layers", "bos"):
        if old.settings.get(key) != settings[key]:
            raise InputError(
                f"The checkpoint was written with {key}={old.settings.get(key)!r}, this scan has "
                f"{key}={settings[key]!r}; resume with the same settings or use another path."
            )
    if tuple(old.doc_sha) != tuple(chunked.sha):
        raise InputError("The checkpoint was written on a different corpus (document texts differ).")
    n = old.chunks_done
    if len(chunked) < n or not (
        np.array_equal(chunked.chunk_doc[:n], old.chunk_doc.numpy()[:n])
        and np.array_equal(chunked.chunk_start[:n], old.chunk_start.numpy()[:n])
    ):
        raise InputError(
            f"The checkpoint has {n} chunks done but this scan's plan has {len(chunked)} chunks or a different "
            "order; use a token budget at least as large as the checkpoint's."
        )


# ------------------------------------------------------------------------------------------------------------
# activations of one key along a chunk, for display


def chunk_activations(
    model, chunked: ChunkedCorpus, chunk: int, layer: int, neuron: int
) -> tuple[list[str], list[float]]:
    """Token strings and the coefficients of key (``layer``, ``neuron``) along ``chunk`` (BOS excluded)."""
    if not 0 <= chunk < len(chunked):
        raise InputError(f"chunk must be in [0, {len(chunked)}); got {chunk}.")
    toks = chunked.chunk_tokens(chunk).unsqueeze(0).to(model.cfg.device)
    got = {}

    def hook(act, hook):
        got["a"] = act[0, :, neuron].detach().float().cpu()

    with torch.no_grad():
        model.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", hook)], stop_at_layer=layer + 1)
    first = 0 if chunked.bos is None else 1
    d, s = int(chunked.chunk_doc[chunk]), int(chunked.chunk_start[chunk])
    off, text = chunked.offsets[d], chunked.texts[d]
    n = toks.shape[1] - first
    strs = []
    for i in range(s, s + n):
        a = int(off[i, 0]) if i == s else int(off[i - 1, 1])  # keep whitespace between tokens
        strs.append(text[a : int(off[i, 1])])
    return strs, got["a"][first:].tolist()


# ------------------------------------------------------------------------------------------------------------
# value vectors through the unembedding


@dataclass(frozen=True)
class ValueTokens:
    """The tokens each key's value vector promotes: ``W_out[l][k] @ W_U`` (top) and its negation (bottom).

    A positive coefficient adds ``W_out[l][k]``, promoting ``top_ids``; a negative one (common in gated MLPs)
    subtracts it, promoting ``bottom_ids``. For LayerNorm models the value is centred first (the final norm
    would); the final scale is positive and does not change the ranking, and ``b_U`` is left out.
    """

    top_ids: torch.Tensor  # [layer, neuron, k]
    top_logits: torch.Tensor
    bottom_ids: torch.Tensor  # [layer, neuron, k] most negative logits (promoted by a negative coefficient)
    bottom_logits: torch.Tensor
    layers: tuple[int, ...]
    neurons: tuple[int, ...] = ()  # the keys projected (axis "neuron" indexes this list)
    token_strs: tuple[str, ...] = field(repr=False, default=())
    axes: tuple[str, ...] = ("layer", "neuron", "k")

    def _index(self, layer: int, neuron: int) -> tuple[int, int]:
        if layer not in self.layers or neuron not in self.neurons:
            raise InputError(f"Key L{layer}N{neuron} was not projected; value_tokens(layers=..., neurons=...) it.")
        return self.layers.index(layer), self.neurons.index(neuron)

    def tokens(self, layer: int, neuron: int, *, sign: int = 1) -> list[str]:
        """The tokens key (``layer``, ``neuron``) promotes with a positive (``sign=1``) or negative coefficient."""
        li, ni = self._index(layer, neuron)
        ids = self.top_ids if sign >= 0 else self.bottom_ids
        return [self.token_strs[int(i)] for i in ids[li, ni]]

    def to_dataframe(self, layer: int | None = None) -> pd.DataFrame:
        rows = []
        for li, lay in enumerate(self.layers):
            if layer is not None and lay != layer:
                continue
            for n, neuron in enumerate(self.neurons):
                rows.append(
                    {
                        "layer": lay,
                        "neuron": neuron,
                        "promotes": " ".join(repr(self.token_strs[int(i)]) for i in self.top_ids[li, n]),
                        "top_logit": float(self.top_logits[li, n, 0]),
                        "promotes_if_negative": " ".join(repr(self.token_strs[int(i)]) for i in self.bottom_ids[li, n]),
                    }
                )
        return pd.DataFrame(rows)

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` keys whose value vector gives the largest single-token logit."""
        s = self.top_logits[..., 0]
        idx = s.flatten().topk(min(k, s.numel())).indices
        li, ni = idx // s.shape[1], idx % s.shape[1]
        return pd.DataFrame(
            {
                "layer": [self.layers[int(i)] for i in li],
                "neuron": [self.neurons[int(i)] for i in ni],
                "logit": s[li, ni].tolist(),
                "promotes": [self.tokens(self.layers[int(a)], self.neurons[int(b)]) for a, b in zip(li, ni)],
            }
        )


def value_tokens(
    model,
    *,
    k: int = 10,
    layers: Sequence[int] | None = None,
    neurons: Sequence[int] | None = None,
    batch: int = 512,
    progress: bool = True,
) -> ValueTokens:
    """Project value vectors ``W_out[l][n]`` through the unembedding and keep their top / bottom ``k`` tokens.

    All keys of ``layers`` (default: every layer), or only ``neurons`` (the same indices in every layer): a full
    projection costs ``d_mlp × d_model × d_vocab`` multiply-adds per layer.
    """
    from .lens import is_layernorm

    lays = _layers(model, layers)
    d_mlp = int(model.cfg.d_mlp)
    if neurons is None:
        nidx = torch.arange(d_mlp)
    else:
        nidx = torch.as_tensor(sorted({int(n) for n in neurons}), dtype=torch.long)
        if len(nidx) == 0 or nidx.min() < 0 or nidx.max() >= d_mlp:
            raise InputError(f"neurons must be a non-empty subset of 0..{d_mlp - 1}.")
    W_U = model.W_U.detach().float()
    k = min(k, W_U.shape[1])
    tops, topl, bots, botl = [], [], [], []
    with torch.no_grad():
        for layer in tqdm(lays, desc="values", disable=not progress):
            W = model.W_out[layer].detach().float()[nidx.to(model.W_out.device)]  # [neuron, d_model]
            if is_layernorm(model):
                W = W - W.mean(-1, keepdim=True)
            ti, tl, bi, bl = [], [], [], []
            for a in range(0, W.shape[0], batch):
                logits = W[a : a + batch] @ W_U
                t = logits.topk(k, dim=-1)
                b = logits.topk(k, dim=-1, largest=False)
                ti.append(t.indices), tl.append(t.values), bi.append(b.indices), bl.append(b.values)
            (
                tops.append(torch.cat(ti)),
                topl.append(torch.cat(tl)),
                bots.append(torch.cat(bi)),
                botl.append(torch.cat(bl)),
            )
    strs = tuple(token_texts(model.tokenizer, range(W_U.shape[1])))
    return ValueTokens(
        top_ids=torch.stack(tops).cpu(),
        top_logits=torch.stack(topl).cpu(),
        bottom_ids=torch.stack(bots).cpu(),
        bottom_logits=torch.stack(botl).cpu(),
        layers=lays,
        neurons=tuple(nidx.tolist()),
        token_strs=strs,
    )


def key_value_agreement(
    scan: TriggerScan, values: ValueTokens, chunked: ChunkedCorpus, *, rank: int = 0
) -> pd.DataFrame:
    """Per layer, the share of keys whose value promotes the token that follows their trigger example.

    Geva et al.'s key-value agreement: for each key's ``rank``-th trigger, is the document's next token among the
    value's top-k tokens (its bottom-k when the coefficient is negative)? ``chance`` is k / vocabulary size.
    """
    nxt = scan.next_token_ids(chunked)[..., rank][:, list(values.neurons)]  # [layer, projected neuron]
    sv = scan.values[:, list(values.neurons), rank]
    rows = []
    for li, layer in enumerate(scan.layers):
        if layer not in values.layers:
            continue
        vi = values.layers.index(layer)
        neg = sv[li] < 0
        ids = torch.where(neg.unsqueeze(-1), values.bottom_ids[vi], values.top_ids[vi])
        ok = nxt[li] >= 0
        hit = (ids == nxt[li].unsqueeze(-1)).any(-1) & ok
        rows.append(
            {
                "layer": layer,
                "agreement": float(hit.sum()) / max(int(ok.sum()), 1),
                "keys": int(ok.sum()),
                "chance": values.top_ids.shape[-1] / len(values.token_strs),
            }
        )
    return pd.DataFrame(rows)
