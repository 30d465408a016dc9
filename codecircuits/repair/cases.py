"""Repair cases from held-out code and their evaluation: a :class:`RepairCase` is a line of real code that the
model completes wrongly when teacher-forced along it; :class:`Probe` is one teacher-forced next-token
prediction (generalisation and specificity probes); :class:`ResidCache` evaluates them after edits of the upper
layers by running only those layers.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int

from ..core.batching import bos_id, progress_bar
from ..core.runner import resid_at, run_from
from ..errors import InputError


@dataclass(frozen=True)
class RepairCase:
    """A line of real code, teacher-forced: ``context`` (with BOS) then the ``reference`` line's tokens.

    ``predicted[i]`` is the model's greedy next token before ``reference[i]`` (given ``context`` and
    ``reference[:i]``); the case needs repair where they differ.
    """

    source: str
    line_no: int
    line: str
    context: tuple[int, ...]
    reference: tuple[int, ...]
    predicted: tuple[int, ...]

    @property
    def tokens(self) -> torch.Tensor:
        """``[1, pos]``: context and reference line (the last reference token is only a label)."""
        return torch.tensor([self.context + self.reference[:-1]])

    @property
    def positions(self) -> list[int]:
        """Sequence positions whose next-token prediction is ``reference[i]``."""
        n = len(self.context)
        return [n - 1 + i for i in range(len(self.reference))]

    @property
    def errors(self) -> list[int]:
        """Indices into ``reference`` where the greedy prediction is wrong."""
        return [i for i, (r, p) in enumerate(zip(self.reference, self.predicted)) if r != p]


@dataclass(frozen=True)
class Probe:
    """One teacher-forced next-token prediction: ``tokens[:, :pos+1]`` should be followed by ``target``."""

    tokens: tuple[int, ...]
    pos: int
    target: int
    predicted: int


def _code_lines(text: str) -> list[tuple[int, int, int]]:
    """(line index, start offset of its code, end offset incl. newline) of lines worth completing."""
    out, offset = [], 0
    for i, line in enumerate(text.splitlines(keepends=True)):
        stripped = line.strip()
        if len(stripped) >= 8 and not stripped.startswith(("#", '"""', "'''")) and line.endswith("\n"):
            out.append((i, offset + len(line) - len(line.lstrip()), offset + len(line)))
        offset += len(line)
    return out


def _scan_lines(model, corpus, *, context_tokens: int, max_line_tokens: int, seed: int, limit: int,
                lines_per_file: int = 3):
    """Yield (source, line_no, line, context ids, reference ids) from random code lines, deterministically."""
    tok = model.tokenizer
    bos = bos_id(model)
    files = list(corpus)
    rng = random.Random(seed)
    rng.shuffle(files)
    yielded = 0
    for f in files:
        lines = _code_lines(f.text)
        lines = [ln for ln in lines if ln[1] > 200]  # need some context before the line
        if not lines:
            continue
        enc = tok(f.text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offs = enc["input_ids"], enc["offset_mapping"]
        for li, start, end in rng.sample(lines, min(lines_per_file, len(lines))):
            first = next((j for j, (a, _) in enumerate(offs) if a >= start), None)
            if first is None or first == 0:
                continue
            last = next((j for j, (a, _) in enumerate(offs) if a >= end), len(ids))
            ref = ids[first:last]
            if not 2 <= len(ref) <= max_line_tokens:
                continue
            ctx = ids[max(0, first - context_tokens) : first]
            ctx = ([bos] if bos is not None else []) + ctx
            yield f.path, li + 1, f.text[start:end].rstrip("\n"), tuple(ctx), tuple(ref)
            yielded += 1
            if yielded >= limit:
                return


@torch.no_grad()
def _greedy(model, tokens: Int[torch.Tensor, "1 pos"]) -> torch.Tensor:
    return model(tokens.to(model.cfg.device)).argmax(-1)[0].cpu()


def repair_cases(
    model,
    corpus,
    n: int = 30,
    *,
    context_tokens: int = 96,
    max_line_tokens: int = 16,
    max_errors: int = 2,
    seed: int = 0,
    max_lines: int = 2000,
    min_scanned: int = 0,
    lines_per_file: int = 3,
    progress: bool = True,
) -> tuple[list[RepairCase], list[RepairCase]]:
    """Repair cases from real code: lines whose teacher-forced greedy completion has 1..``max_errors`` wrong tokens.

    Returns ``(cases, scanned)``: the first ``n`` lines that need repair, and every line scanned (the pool that
    generalisation and specificity probes are drawn from; scanning goes on until it holds ``min_scanned`` lines).
    Each file gives at most ``lines_per_file`` random lines (files are visited in a seeded random order).
    ``corpus`` is a :class:`codecircuits.corpus.Corpus`
    (e.g. ``corpus.stdlib("test")`` or ``corpus.humaneval()``).
    """
    if n < 1:
        raise InputError("Ask for at least one repair case (n >= 1).")
    if max_errors < 1:
        raise InputError("max_errors must be at least 1.")
    if lines_per_file < 1:
        raise InputError("lines_per_file must be at least 1.")
    cases, scanned = [], []
    bar = progress_bar(n, "repair cases", progress)
    for src, line_no, line, ctx, ref in _scan_lines(model, corpus, context_tokens=context_tokens,
                                                    max_line_tokens=max_line_tokens, seed=seed, limit=max_lines,
                                                    lines_per_file=lines_per_file):
        toks = torch.tensor([ctx + ref[:-1]])
        pred = _greedy(model, toks)[len(ctx) - 1 :]
        case = RepairCase(src, line_no, line, ctx, ref, tuple(int(t) for t in pred))
        scanned.append(case)
        if len(cases) < n and 1 <= len(case.errors) <= max_errors:
            cases.append(case)
            bar.update(1)
        if len(cases) >= n and len(scanned) >= min_scanned:
            break
    bar.close()
    if not cases:
        raise InputError(
            f"No line of {getattr(corpus, 'name', 'the corpus')} needed repair (scanned {len(scanned)} lines); "
            "use a larger corpus or allow more errors per line."
        )
    return cases, scanned


def probes_of(cases: Iterable[RepairCase]) -> list[Probe]:
    """Every teacher-forced position of the cases as a probe."""
    out = []
    for c in cases:
        toks = c.context + c.reference[:-1]
        for pos, r, p in zip(c.positions, c.reference, c.predicted):
            out.append(Probe(toks, pos, r, p))
    return out


@torch.no_grad()
def same_target_probes(
    model,
    corpus,
    target: int,
    n: int = 8,
    *,
    wrong: int | None = None,
    context_tokens: int = 64,
    exclude: Iterable[str] = (),
    max_candidates: int = 64,
    max_files: int = 400,
    seed: int = 0,
    token_ids: Mapping[str, Sequence[int]] | None = None,
) -> list[Probe]:
    """Generalisation probes for a fix to ``target``: held-out positions whose reference next token is ``target``.

    Scans the files of ``corpus`` (shuffled by ``seed``; paths in ``exclude`` skipped) for occurrences of
    ``target`` with ``context_tokens`` of preceding context, collects up to ``max_candidates`` of them (at most
    four per file, so one file cannot fill the set), predicts their next token in batches, and returns ``n``
    probes ordered: the same confusion first (greedy == ``wrong``), then other mistakes, then positions the model
    already gets right. Empty if the corpus never contains the token. ``token_ids`` (path -> token ids of the
    file's text, e.g. from :func:`tokenize_files`) saves tokenizing the files again for every call.
    """
    if n < 1:
        return []
    bos = bos_id(model)
    skip = set(exclude)
    files = [f for f in corpus if f.path not in skip]
    random.Random(seed).shuffle(files)
    contexts: list[tuple[int, ...]] = []
    for f in files[:max_files]:
        ids = token_ids[f.path] if token_ids is not None and f.path in token_ids else (
            model.tokenizer(f.text, add_special_tokens=False)["input_ids"]
        )
        hits = [j for j in range(context_tokens, len(ids)) if ids[j] == target][:4]
        for j in hits:
            ctx = tuple(ids[j - context_tokens : j])
            contexts.append(((bos,) if bos is not None else ()) + ctx)
        if len(contexts) >= max_candidates:
            break
    contexts = contexts[:max_candidates]
    if not contexts:
        return []
    probes = []
    for i in range(0, len(contexts), 16):
        chunk = torch.tensor(contexts[i : i + 16], device=model.cfg.device)
        pred = model(chunk)[:, -1].argmax(-1).cpu()
        probes += [Probe(c, len(c) - 1, int(target), int(p)) for c, p in zip(contexts[i : i + 16], pred)]
    probes.sort(key=lambda p: (p.predicted != wrong, p.predicted == target))
    return probes[:n]


def tokenize_files(model, files: Iterable) -> dict[str, list[int]]:
    """path -> token ids (no special tokens) of each file's text, for :func:`same_target_probes`."""
    return {f.path: model.tokenizer(f.text, add_special_tokens=False)["input_ids"] for f in files}


class ResidCache:
    """``resid_pre`` of a layer for token sequences, computed once: evaluations after edits of layers >= ``layer``
    (which cannot change it) run only the layers from ``layer`` on."""

    def __init__(self, model, layer: int = 0):
        self.model, self.layer = model, layer
        self._store: dict[tuple[int, ...], torch.Tensor] = {}

    def logits(self, tokens: Sequence[int] | torch.Tensor) -> torch.Tensor:
        key = tuple(int(t) for t in (tokens.flatten().tolist() if isinstance(tokens, torch.Tensor) else tokens))
        t = torch.tensor([key])
        if self.layer == 0:
            with torch.no_grad():
                return self.model(t.to(self.model.cfg.device))
        if key not in self._store:
            self._store[key] = resid_at(self.model, t, self.layer)
        with torch.no_grad():
            return run_from(self.model, self._store[key], self.layer)


@torch.no_grad()
def evaluate_probes(model, probes: Sequence[Probe], *, cache: ResidCache | None = None) -> dict[str, torch.Tensor]:
    """For each probe: ``correct`` (greedy == target), ``logp`` (log p(target)) and ``argmax``, one forward per
    distinct token sequence (from ``cache.layer`` on, when a :class:`ResidCache` is given)."""
    cache = cache or ResidCache(model, 0)
    by_seq: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(probes):
        by_seq.setdefault(p.tokens, []).append(i)
    logp = torch.zeros(len(probes))
    argmax = torch.zeros(len(probes), dtype=torch.long)
    for toks, idx in by_seq.items():
        lp = cache.logits(toks)[0].float().log_softmax(-1).cpu()
        for i in idx:
            logp[i] = lp[probes[i].pos, probes[i].target]
            argmax[i] = lp[probes[i].pos].argmax()
    target = torch.tensor([p.target for p in probes], dtype=torch.long)
    return {"correct": argmax == target, "logp": logp, "argmax": argmax}


@torch.no_grad()
def heldout_loss(model, tokens: Int[torch.Tensor, "batch pos"], *, cache: ResidCache | None = None) -> float:
    """Mean next-token cross-entropy of ``tokens`` ``[batch, pos]``."""
    cache = cache or ResidCache(model, 0)
    total, count = 0.0, 0
    for row in tokens:
        logits = cache.logits(row)[0].float()
        total += float(torch.nn.functional.cross_entropy(logits[:-1], row[1:].to(logits.device), reduction="sum"))
        count += row.numel() - 1
    return total / count


def heldout_tokens(model, corpus, n_tokens: int, seq_len: int = 128) -> Int[torch.Tensor, "batch pos"]:
    """Rows of ``seq_len`` tokens (BOS first, where the model has one) cut from ``corpus``'s files in order, until
    they hold at least ``n_tokens``: the held-out text of :func:`heldout_loss`."""
    bos = bos_id(model)
    rows = []
    for f in corpus:
        ids = model.tokenizer(f.text, add_special_tokens=False)["input_ids"]
        body = seq_len - (bos is not None)
        for i in range(0, len(ids) - body, body):
            rows.append(([bos] if bos is not None else []) + ids[i : i + body])
            if len(rows) * seq_len >= n_tokens:
                return torch.tensor(rows)
    if not rows:
        raise InputError(f"The held-out corpus {corpus.name} is shorter than {seq_len} tokens.")
    return torch.tensor(rows)


def line_fixed(cache: ResidCache, case: RepairCase) -> bool:
    """Whether the model (as it is now) completes the whole line of ``case`` right, teacher-forced."""
    pred = cache.logits(case.tokens)[0].argmax(-1).cpu()
    return tuple(int(pred[p]) for p in case.positions) == tuple(case.reference)


__all__ = [
    "Probe",
    "RepairCase",
    "ResidCache",
    "evaluate_probes",
    "heldout_loss",
    "heldout_tokens",
    "line_fixed",
    "probes_of",
    "repair_cases",
    "same_target_probes",
    "tokenize_files",
]
