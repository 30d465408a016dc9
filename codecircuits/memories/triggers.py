"""The trigger-example scan: for every key, its top-K chunks by the key's maximum coefficient.

A chunk (:mod:`codecircuits.memories.chunks`) is the unit of a trigger example, as a sentence is in Geva et al.:
for each key the scan keeps the top-K chunks by the key's maximum coefficient in the chunk, and the trigger
example is the chunk's prefix that ends at that token.

On-disk format (``scan.safetensors``)
-------------------------------------
One safetensors file, written atomically (temporary file, fsync, ``os.replace``) at every checkpoint:

- tensor ``values``  float32 ``[layer, neuron, rank]``: the signed coefficient of each top-K trigger;
- tensor ``chunk``   int64   ``[layer, neuron, rank]``: the chunk it came from (-1 in unfilled slots);
- tensor ``pos``     int64   ``[layer, neuron, rank]``: the trigger token's index in the document's tokens;
- tensor ``chunk_doc`` / ``chunk_start`` int64 ``[chunk]``: the scan plan (document index and first token of
  each chunk, in visiting order);
- tensors ``act_sum`` / ``act_sq`` float64 ``[layer, neuron]`` (optional; absent in older files): each key's
  activation summed, and squared and summed, over the scanned document tokens;
- metadata ``codecircuits``: JSON with ``format`` (``"codecircuits.memories/1"``), ``model``, ``corpus``,
  ``settings`` (k, window, rank_by, layers, ...), ``docs`` (name and SHA-256 of each document's text),
  ``chunks_done`` and ``tokens_done``.

Ranks are sorted by descending score; ties keep the earlier chunk. :func:`load_scan` reads the file back
into a :class:`TriggerScan`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import figures
from ..core.batching import pad_id
from ..core.sites import hook_name
from ..errors import InputError
from .chunks import ChunkedCorpus, chunk_corpus

FORMAT = "codecircuits.memories/1"
RANK_BY = ("auto", "abs", "signed")


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
class ActivationStats:
    """Per key ``[layer, neuron]``: activation mean, standard deviation and RMS over ``tokens`` scanned tokens."""

    mean: torch.Tensor
    std: torch.Tensor
    rms: torch.Tensor
    layers: tuple[int, ...]
    tokens: int


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
    act_sum: torch.Tensor | None = None  # float64 [layer, neuron]: sum of each key's activation over the tokens
    act_sq: torch.Tensor | None = None  # float64 [layer, neuron]: sum of its square
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

    def activation_stats(self) -> ActivationStats:
        """Each key's activation mean, standard deviation and root mean square over the scanned tokens."""
        if self.act_sum is None or self.act_sq is None:
            raise InputError("This scan has no activation sums (written before they were kept); scan again.")
        n = max(1, self.tokens_done)
        mean = self.act_sum / n
        ms = self.act_sq / n
        return ActivationStats(
            mean=mean.float(), std=(ms - mean.square()).clamp(min=0).sqrt().float(), rms=ms.sqrt().float(),
            layers=self.layers, tokens=self.tokens_done,
        )

    def scores(self) -> torch.Tensor:
        """The ranking score ``[layer, neuron, rank]``: ``|m|`` or ``m`` by the scan's ``rank_by``."""
        return self.values.abs() if self.settings.get("rank_by") == "abs" else self.values

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` keys with the strongest top trigger, largest first, by the scan's ranking score (:meth:`scores`:
        ``|coefficient|`` or the signed coefficient, by its ``rank_by``): the rank-0 rows of :meth:`to_dataframe`,
        with the document's name."""
        s = self.scores()[..., 0]
        flat = s.flatten().nan_to_num(neginf=-np.inf)
        idx = torch.sort(flat, descending=True, stable=True).indices[: min(k, flat.numel())]
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

    def plot(self, k: int = 20) -> figures.Figure:
        """The ``k`` keys with the strongest top trigger (:meth:`top`) as bars of its coefficient."""
        df = self.top(k)
        df["key"] = [f"L{a}N{b}" for a, b in zip(df.layer, df.neuron)]
        return figures.top_bars(df, "coefficient", label="key", title=f"trigger scan: top {k} keys")

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
                TriggerExample(rank=r, doc=self.docs[d], chunk=c, pos=p, coefficient=float(self.values[li, neuron, r]),
                               prefix=text[a:e], trigger=text[int(off[p, 0]) : e], next_token=nxt)
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
    if scan.act_sum is not None and scan.act_sq is not None:
        tensors["act_sum"] = scan.act_sum.contiguous()
        tensors["act_sq"] = scan.act_sq.contiguous()
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
    return TriggerScan(values=t["values"], chunk=t["chunk"], pos=t["pos"], layers=tuple(settings["layers"]),
                       chunk_doc=t["chunk_doc"], chunk_start=t["chunk_start"],
                       docs=tuple(d["name"] for d in meta["docs"]), doc_sha=tuple(d["sha256"] for d in meta["docs"]),
                       model=meta["model"], corpus=meta["corpus"], settings=settings,
                       chunks_done=int(meta["chunks_done"]), tokens_done=int(meta["tokens_done"]),
                       act_sum=t.get("act_sum"), act_sq=t.get("act_sq"))


def _resolve_rank_by(model, rank_by: str) -> str:
    if rank_by not in RANK_BY:
        raise InputError(f"rank_by must be one of {', '.join(RANK_BY)}; got {rank_by!r}.")
    if rank_by == "auto":
        return "abs" if getattr(model.cfg, "gated_mlp", False) else "signed"
    return rank_by


def layer_set(model, layers) -> tuple[int, ...]:
    """The sorted distinct layers of ``layers`` (every layer when ``None``), checked against the model."""
    n = int(model.cfg.n_layers)
    if layers is None:
        return tuple(range(n))
    out = tuple(sorted({int(layer) for layer in layers}))
    bad = [layer for layer in out if not 0 <= layer < n]
    if bad or not out:
        raise InputError(f"layers must be a non-empty subset of 0..{n - 1}; got {list(layers)}.")
    return out


@dataclass
class TopK:
    """The running top-K of every key over some chunks, and its activation sums: the state a scan merges, batch
    by batch in one process, shard by shard over workers (:meth:`merge` is associative)."""

    score: torch.Tensor  # float32 [layer, neuron, k]: ranking score (-inf in unfilled slots)
    values: torch.Tensor
    chunk: torch.Tensor
    pos: torch.Tensor
    act_sum: torch.Tensor | None  # float64 [layer, neuron]
    act_sq: torch.Tensor | None
    tokens: int = 0

    @classmethod
    def empty(cls, n_layers: int, d_mlp: int, k: int, stats: bool = True) -> TopK:
        shape = (n_layers, d_mlp, k)
        zeros = torch.zeros((n_layers, d_mlp), dtype=torch.float64) if stats else None
        return cls(score=torch.full(shape, -torch.inf, dtype=torch.float32),
                   values=torch.zeros(shape, dtype=torch.float32), chunk=torch.full(shape, -1, dtype=torch.long),
                   pos=torch.full(shape, -1, dtype=torch.long), act_sum=zeros,
                   act_sq=None if zeros is None else zeros.clone(), tokens=0)

    def merge(self, later: TopK) -> TopK:
        """The top-K of both: a stable sort, so ties keep the earlier chunk (``later`` covers later chunks).

        The merge is associative, so merging shards' states in chunk order equals one pass over the chunks.
        """
        k = self.score.shape[-1]
        all_s = torch.cat([self.score, later.score], dim=-1)
        order = all_s.argsort(dim=-1, descending=True, stable=True)[..., :k]
        both = self.act_sum is not None and later.act_sum is not None
        return TopK(score=all_s.gather(-1, order),
                    values=torch.cat([self.values, later.values], dim=-1).gather(-1, order),
                    chunk=torch.cat([self.chunk, later.chunk], dim=-1).gather(-1, order),
                    pos=torch.cat([self.pos, later.pos], dim=-1).gather(-1, order),
                    act_sum=_add(self.act_sum, later.act_sum) if both else None,
                    act_sq=_add(self.act_sq, later.act_sq) if both else None, tokens=self.tokens + later.tokens)


def _add(acc: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
    """``acc`` plus ``later``; a ``later`` of per-batch sums ``[batch, ...]`` is added one batch at a time, in the
    order one process adds them, so sharded sums equal one process's bit for bit."""
    if later.dim() == acc.dim() + 1:
        for x in later:
            acc = acc + x
        return acc
    return acc + later


def scan_chunks(
    model,
    chunked: ChunkedCorpus,
    chunks: range,
    *,
    layers: tuple[int, ...],
    rank_by: str,
    k: int,
    batch_size: int,
    stats: bool = True,
) -> Iterator[TopK]:
    """Run ``chunks`` through the model in batches of ``batch_size`` and yield each batch's state (to merge)."""
    pad = pad_id(model)
    stop = max(layers) + 1
    first = 0 if chunked.bos is None else 1
    cs = torch.as_tensor(chunked.chunk_start)
    buf: dict[int, tuple] = {}
    mask_ref: list = [None]

    def make_hook(li: int):
        def hook(act, hook):
            a = act.detach().float()
            m = mask_ref[0].unsqueeze(-1)
            s = a.abs() if rank_by == "abs" else a
            s = s.masked_fill(~m, -torch.inf)
            best, arg = s.max(dim=1)  # [batch, d_mlp]
            sums = None
            if stats:
                d = a.double().masked_fill(~m, 0.0)
                sums = (d.sum((0, 1)), d.square().sum((0, 1)))
            buf[li] = (best, a.gather(1, arg.unsqueeze(1)).squeeze(1), arg, sums)
            return None

        return hook

    hooks = [(hook_name("post", layer), make_hook(i)) for i, layer in enumerate(layers)]
    n_l = len(layers)
    with torch.no_grad():
        for lo in range(chunks.start, chunks.stop, batch_size):
            ids = list(range(lo, min(lo + batch_size, chunks.stop)))
            toks, mask = chunked.batch(ids, pad)
            mask_ref[0] = mask.to(model.cfg.device)
            buf.clear()
            model.run_with_hooks(toks.to(model.cfg.device), fwd_hooks=hooks, stop_at_layer=stop)
            best = torch.stack([buf[i][0] for i in range(n_l)]).transpose(1, 2).cpu()  # [L, N, B]
            val = torch.stack([buf[i][1] for i in range(n_l)]).transpose(1, 2).cpu()
            arg = torch.stack([buf[i][2] for i in range(n_l)]).transpose(1, 2).cpu()
            b_chunk = torch.tensor(ids, dtype=torch.long)
            yield TopK(
                score=best,
                values=val,
                chunk=b_chunk.expand_as(arg).contiguous(),
                pos=arg - first + cs[b_chunk],  # token index in the document
                act_sum=torch.stack([buf[i][3][0] for i in range(n_l)]).cpu() if stats else None,
                act_sq=torch.stack([buf[i][3][1] for i in range(n_l)]).cpu() if stats else None,
                tokens=int(mask.sum()),
            )


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
    The same hooks sum each key's activation and its square over the scanned tokens
    (:meth:`TriggerScan.activation_stats`).

    With ``checkpoint`` (a file path), the state is written atomically every ``checkpoint_every`` chunks (at
    batch boundaries) and at the end; ``resume=True`` continues from that file, after checking that it came
    from the same model, settings, corpus texts and chunk plan; the result then equals an uninterrupted scan's
    exactly. ``callback(state)`` runs after every batch (progress reporting, or stopping early by raising).

    One process; ``codecircuits.distributed.run(memories.scan, ..., workers=N)`` shards the chunks over Ray
    workers, each with its own replica of the model: shards are whole batches in chunk order and their states
    merge exactly, so the result equals this process's scan (the same batches run on every worker). The
    checkpoint then holds the longest run of completed shards from the start, and resumes in either mode;
    ``callback`` runs as that run grows.
    """
    run = ScanRun(
        model, corpus, k=k, window=window, max_tokens=max_tokens, max_chunks=max_chunks, layers=layers,
        rank_by=rank_by, batch_size=batch_size, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
        resume=resume, callback=callback,
    )
    bar = tqdm(total=run.n_chunks, initial=run.done, desc="scan", unit="chunk", disable=not progress)
    try:
        for part in scan_chunks(model, run.chunked, run.remaining, **run.common):
            run.advance(part, int(part.chunk[0, 0, -1]) + 1)
            bar.update(part.chunk.shape[-1])
    finally:
        bar.close()
    return run.state()


class ScanRun:
    """One scan's plan and running state, checkpointed as it advances.

    :func:`scan` drives it over its batches in this process; ``codecircuits.distributed.run(memories.scan, ...,
    workers=N)`` drives it over shards of whole batches, merged in chunk order, so both write the same
    checkpoints and give the same :class:`TriggerScan`. The arguments are :func:`scan`'s (checked here); a
    ``resume`` continues from the checkpoint after checking that it came from the same model, settings, corpus
    texts and chunk plan.
    """

    def __init__(
        self, model, corpus, *, k, window, max_tokens, max_chunks, layers, rank_by, batch_size, checkpoint,
        checkpoint_every, resume, callback,
    ):
        if k < 1:
            raise InputError(f"k must be at least 1; got {k}.")
        if batch_size < 1 or checkpoint_every < 1:
            raise InputError("batch_size and checkpoint_every must be at least 1.")
        chunked = chunk_corpus(model, corpus, window=window, max_tokens=max_tokens, max_chunks=max_chunks)
        lays = layer_set(model, layers)
        rb = _resolve_rank_by(model, rank_by)
        self.chunked, self.layers, self.callback = chunked, lays, callback
        self.checkpoint_every = int(checkpoint_every)
        self.model_name = str(getattr(model.cfg, "model_name", "") or "model")
        self.settings = {"k": k, "window": chunked.window, "rank_by": rb, "layers": list(lays), "bos": chunked.bos}
        self.n_chunks = len(chunked)
        # the chunk plan's tensors, made once: every state (each checkpoint, each callback) shares them
        self.chunk_doc, self.chunk_start = torch.as_tensor(chunked.chunk_doc), torch.as_tensor(chunked.chunk_start)
        self.top = TopK.empty(len(lays), int(model.cfg.d_mlp), k)
        self.done = 0
        ckpt = Path(checkpoint) if checkpoint is not None else None
        if ckpt is not None and ckpt.is_dir():
            ckpt = ckpt / "scan.safetensors"
        self.checkpoint = ckpt
        if resume:
            if ckpt is None:
                raise InputError("resume=True needs a checkpoint path.")
            if ckpt.is_file():
                old = load_scan(ckpt)
                _check_resumable(old, self.model_name, self.settings, chunked)
                score = old.values.abs() if rb == "abs" else old.values.clone()
                self.top = TopK(score=torch.where(old.chunk >= 0, score, torch.full_like(score, -torch.inf)),
                                values=old.values.clone(), chunk=old.chunk.clone(), pos=old.pos.clone(),
                                act_sum=None if old.act_sum is None else old.act_sum.clone(),
                                act_sq=None if old.act_sq is None else old.act_sq.clone(), tokens=old.tokens_done)
                self.done = old.chunks_done
        self.last_checkpoint = self.done
        stats = self.top.act_sum is not None
        self.common = {"layers": lays, "rank_by": rb, "k": k, "batch_size": batch_size, "stats": stats}

    @property
    def remaining(self) -> range:
        """The chunks still to scan."""
        return range(self.done, self.n_chunks)

    def state(self) -> TriggerScan:
        """The scan so far."""
        chunked = self.chunked
        return TriggerScan(values=self.top.values, chunk=self.top.chunk, pos=self.top.pos, layers=self.layers,
                           chunk_doc=self.chunk_doc, chunk_start=self.chunk_start, docs=chunked.names,
                           doc_sha=chunked.sha, model=self.model_name, corpus=chunked.name,
                           settings=dict(self.settings), chunks_done=self.done, tokens_done=self.top.tokens,
                           act_sum=self.top.act_sum, act_sq=self.top.act_sq)

    def advance(self, part: TopK, upto: int) -> None:
        """Merge the state of the chunks ``done .. upto - 1`` (the next ones in order), checkpoint every
        ``checkpoint_every`` chunks and at the end, and call the callback."""
        self.top, self.done = self.top.merge(part), int(upto)
        if self.checkpoint is not None and (
            self.done - self.last_checkpoint >= self.checkpoint_every or self.done == self.n_chunks
        ):
            _save(self.state(), self.checkpoint)
            self.last_checkpoint = self.done
        if self.callback is not None:
            self.callback(self.state())

    def skipping(self, parts: Sequence[TopK], skipped: Sequence[tuple[int, int]]) -> TriggerScan:
        """The scan of every chunk but the ``skipped`` ranges ``[start, stop)`` (shards that failed): ``parts``,
        the states of the completed chunks after the first skipped one, merged in order. The checkpoint keeps
        only the chunks before the first skipped range, so a resume scans the rest again."""
        for part in parts:
            self.top = self.top.merge(part)
        self.done = self.n_chunks
        self.settings["skipped_chunks"] = [[int(a), int(b)] for a, b in skipped]
        return self.state()


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
        model.run_with_hooks(toks, fwd_hooks=[(hook_name("post", layer), hook)], stop_at_layer=layer + 1)
    first = 0 if chunked.bos is None else 1
    d, s = int(chunked.chunk_doc[chunk]), int(chunked.chunk_start[chunk])
    off, text = chunked.offsets[d], chunked.texts[d]
    n = toks.shape[1] - first
    strs = []
    for i in range(s, s + n):
        a = int(off[i, 0]) if i == s else int(off[i - 1, 1])  # keep whitespace between tokens
        strs.append(text[a : int(off[i, 1])])
    return strs, got["a"][first:].tolist()


__all__ = [
    "FORMAT",
    "ActivationStats",
    "RANK_BY",
    "ScanRun",
    "TopK",
    "TriggerExample",
    "TriggerScan",
    "chunk_activations",
    "layer_set",
    "load_scan",
    "scan",
    "scan_chunks",
]
