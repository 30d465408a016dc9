"""Neuron-level model repair (MINT, Gu et al., arXiv 2312.05356) with reversible value-vector edits.

A *repair case* is a line of real code that the model completes wrongly when teacher-forced along the
reference line. MINT fixes each wrong token by editing the value vectors (rows of the MLP output weights
``W_out[l][k]``) of a few neurons:

1. **locate**: score the neurons of the upper layers by gradient x activation on ``blocks.{l}.mlp.hook_post``
   with respect to ``softmax(logits)[target]`` (L2 norm over positions) and keep the global top candidates;
2. **direction**: the token's semantic basis ``s(t)``, a row of the pseudo-inverse of the unembedding,
   gives the patch direction ``delta = s(target) - s(argmax)``; per layer ``delta_l = delta (l+1)/L`` scaled by its
   range ``max(delta_l) - min(delta_l)``;
3. **plan**: simulate the edit of every candidate in one batched forward and choose the one whose simulated
   edit leaves the smallest gap ``p(argmax) - p(target)``;
4. **patch**: ``W_out[l][k] <- (W_out[l][k] + eps * delta_l) / (1 + eps)`` with ``eps = 0.01 * scale``;
5. repeat 3-4 until the target is the argmax or ``max_edits`` edits were made, then roll the token's edits back.

Every edit is recorded with the row before and after (:class:`NeuronEdit`), so :meth:`Edits.undo` restores the
weights bit for bit, :meth:`Edits.save` / :func:`load_edits` store and re-apply them, and
:func:`save_edited_model` writes a loadable checkpoint with the edits in it. :func:`sgd_repair` is the baseline
that fine-tunes the MLP output weights of the same layers with SGD.

Edits act on the weights the forward pass reads: in a ``TransformerBridge`` that is the wrapped Hugging Face
module ``model.blocks[l].mlp.out`` (``down_proj`` / ``dense_4h_to_h`` / ``c_proj`` / ``fc_out``), in the bridge's
processed (folded, centred) weight space.
"""

from __future__ import annotations

import glob
import json
import random
import shutil
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from codecircuits.errors import CheckpointError, InputError
from codecircuits.core.batching import bos_id

__all__ = [
    "CaseOutcome",
    "Edits",
    "NeuronEdit",
    "Probe",
    "RepairCase",
    "RepairResult",
    "TokenRepair",
    "apply_edit",
    "candidate_neurons",
    "edited",
    "evaluate_probes",
    "heldout_loss",
    "load_edits",
    "mint_repair",
    "mlp_out_weight",
    "repair_cases",
    "same_target_probes",
    "save_edited_model",
    "semantic_basis",
    "sgd_repair",
    "ResidCache",
    "WeightSnapshot",
    "probes_of",
    "upper_layers",
    "value_vector",
]


# ----------------------------------------------------------------------------------------------------------
# where the value vectors live


def _mlp_out_module(model, layer: int):
    if not 0 <= layer < model.cfg.n_layers:
        raise InputError(f"Layer {layer} is out of range: the model has layers 0..{model.cfg.n_layers - 1}.")
    out = model.blocks[layer].mlp.out
    return getattr(out, "_original_component", out)


def mlp_out_weight(model, layer: int) -> torch.Tensor:
    """The MLP output weight of ``layer`` as a ``[d_mlp, d_model]`` view (row k = value vector of neuron k).

    The view shares storage with the parameter the forward pass uses, so writing into it edits the model.
    """
    mod = _mlp_out_module(model, layer)
    w = mod.weight
    d_mlp, d_model = model.cfg.d_mlp, model.cfg.d_model
    if isinstance(mod, torch.nn.Linear) and tuple(w.shape) == (d_model, d_mlp):
        return w.T
    if tuple(w.shape) == (d_mlp, d_model) and not isinstance(mod, torch.nn.Linear):  # GPT-2 style Conv1D
        return w
    raise InputError(
        f"Cannot tell how the MLP output weight of layer {layer} ({type(mod).__name__}, shape {tuple(w.shape)}) maps "
        f"to [d_mlp={d_mlp}, d_model={d_model}]; repair supports Linear and Conv1D output projections."
    )


def value_vector(model, layer: int, neuron: int) -> torch.Tensor:
    """A copy of neuron ``neuron``'s value vector ``W_out[layer][neuron]`` (``[d_model]``)."""
    _check_neuron(model, neuron)
    return mlp_out_weight(model, layer)[neuron].detach().clone()


def _check_neuron(model, neuron: int) -> None:
    if not 0 <= neuron < model.cfg.d_mlp:
        raise InputError(f"Neuron {neuron} is out of range: the MLP has neurons 0..{model.cfg.d_mlp - 1}.")


def upper_layers(model, focus: str | Sequence[int] = "half") -> list[int]:
    """Layers MINT edits: ``"half"`` (upper half, the default), ``"quarter"`` (upper quarter), ``"last3"``,
    ``"all"``, or an explicit list."""
    n = model.cfg.n_layers
    if not isinstance(focus, str):
        layers = sorted({int(layer) for layer in focus})
        if not layers or layers[0] < 0 or layers[-1] >= n:
            raise InputError(f"Layers {list(focus)} must be a non-empty subset of 0..{n - 1}.")
        return layers
    start = {"all": 0, "half": n // 2, "quarter": (3 * n) // 4, "last3": max(0, n - 3)}.get(focus)
    if start is None:
        raise InputError(f"Unknown layer focus {focus!r}; use 'half', 'quarter', 'last3', 'all' or a list of layers.")
    return list(range(start, n))


# ----------------------------------------------------------------------------------------------------------
# reversible edits


@dataclass(frozen=True)
class NeuronEdit:
    """One value-vector edit: the row of ``W_out[layer]`` before and after (both ``[d_model]``, on CPU)."""

    layer: int
    neuron: int
    old: torch.Tensor
    new: torch.Tensor

    @property
    def delta_norm(self) -> float:
        return float((self.new - self.old).norm())

    @property
    def name(self) -> str:
        return f"L{self.layer}N{self.neuron}"


def apply_edit(model, layer: int, neuron: int, new_row: torch.Tensor) -> NeuronEdit:
    """Set ``W_out[layer][neuron] = new_row`` and return the record that undoes it exactly."""
    _check_neuron(model, neuron)
    w = mlp_out_weight(model, layer)
    new_row = torch.as_tensor(new_row)
    if new_row.shape != (model.cfg.d_model,):
        raise InputError(f"A value vector has shape ({model.cfg.d_model},); got {tuple(new_row.shape)}.")
    old = w[neuron].detach().clone()
    with torch.no_grad():
        w[neuron] = new_row.to(device=w.device, dtype=w.dtype)
    return NeuronEdit(layer, neuron, old.cpu(), w[neuron].detach().clone().cpu())


@dataclass(frozen=True)
class Edits:
    """An ordered set of value-vector edits made to one model; undo restores every row bit for bit."""

    edits: tuple[NeuronEdit, ...] = ()
    model_name: str = ""

    def __len__(self) -> int:
        return len(self.edits)

    def __iter__(self):
        return iter(self.edits)

    def __add__(self, other: Edits) -> Edits:
        return Edits(self.edits + tuple(other.edits), self.model_name or other.model_name)

    @property
    def neurons(self) -> list[tuple[int, int]]:
        """Distinct (layer, neuron) pairs in the order they were first edited."""
        seen: dict[tuple[int, int], None] = {}
        for e in self.edits:
            seen.setdefault((e.layer, e.neuron), None)
        return list(seen)

    def undo(self, model) -> None:
        """Restore the rows as they were before the first edit (in reverse order, so repeated edits unwind)."""
        for e in reversed(self.edits):
            w = mlp_out_weight(model, e.layer)
            with torch.no_grad():
                w[e.neuron] = e.old.to(device=w.device, dtype=w.dtype)

    def apply(self, model, *, check: bool = True) -> None:
        """Re-apply the edits to a model in the state they were made from (``check`` verifies the old rows)."""
        for e in self.edits:
            w = mlp_out_weight(model, e.layer)
            if check and not torch.equal(w[e.neuron].detach().cpu(), e.old.to(w.dtype)):
                raise CheckpointError(
                    f"The value vector {e.name} of this model is not the one the edits were made from; load the "
                    f"same base model ({self.model_name or 'unknown'}) or pass check=False to apply anyway."
                )
            with torch.no_grad():
                w[e.neuron] = e.new.to(device=w.device, dtype=w.dtype)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(
            [{"step": i, "layer": e.layer, "neuron": e.neuron, "delta_norm": e.delta_norm} for i, e in enumerate(self)]
        )

    def top(self, k: int = 10):
        df = self.to_dataframe()
        return df.sort_values("delta_norm", ascending=False).head(k) if len(df) else df

    def save(self, path: str | Path) -> Path:
        """Write the edits (old and new rows) to a safetensors file."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for i, e in enumerate(self.edits):
            tensors[f"{i}.old"] = e.old.contiguous()
            tensors[f"{i}.new"] = e.new.contiguous()
        meta = {
            "format": "codecircuits-edits-1",
            "model": self.model_name,
            "edits": json.dumps([[e.layer, e.neuron] for e in self.edits]),
        }
        save_file(tensors, str(path), metadata=meta)
        return path


def load_edits(path: str | Path, model=None, *, check: bool = True) -> Edits:
    """Read edits written by :meth:`Edits.save`; with ``model``, apply them to it as well."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"No edits file at {path}.")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "codecircuits-edits-1":
            raise CheckpointError(f"{path} is not a codecircuits edits file (Edits.save writes them).")
        where = json.loads(meta["edits"])
        edits = tuple(
            NeuronEdit(int(layer), int(neuron), f.get_tensor(f"{i}.old"), f.get_tensor(f"{i}.new"))
            for i, (layer, neuron) in enumerate(where)
        )
    result = Edits(edits, meta.get("model", ""))
    if model is not None:
        result.apply(model, check=check)
    return result


@contextmanager
def edited(model, edits: Edits):
    """Apply ``edits`` for the duration of a ``with`` block, then undo them exactly."""
    edits.apply(model)
    try:
        yield model
    finally:
        edits.undo(model)


def _raw_param_name(model, layer: int) -> str:
    target = _mlp_out_module(model, layer).weight
    for name, p in model.original_model.named_parameters():
        if p is target:
            return name.replace("._original_component", "")
    raise CheckpointError(f"Could not find the Hugging Face parameter behind the MLP output of layer {layer}.")


def save_edited_model(model, edits: Edits, out_dir: str | Path) -> Path:
    """Write a loadable checkpoint of ``model`` with ``edits`` applied, and the edits beside it.

    The bridge edits processed (folded, centred) weights, so the checkpoint is the model's source checkpoint with
    each edit's row change ``new - old`` added to the raw output-projection weights. ``load_model(out_dir)`` gives
    the edited model (bit-identical logits for RMSNorm models; for LayerNorm models the row change is centred by
    the loader, which leaves every LayerNorm reader unchanged). The edits are stored in
    ``out_dir/codecircuits_edits.safetensors`` so they can be undone after loading.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = Path(getattr(model, "codecircuits_path", "") or "")
    if not (src / "config.json").is_file():
        raise CheckpointError(
            "save_edited_model needs the model's source checkpoint (model.codecircuits_path, set by load_model); "
            "this model has none. Save the edits alone with Edits.save and re-apply them with load_edits."
        )
    out = Path(out_dir)
    if out.resolve() == src.resolve():
        raise InputError(f"Refusing to overwrite the source checkpoint {src}; choose another directory.")
    out.mkdir(parents=True, exist_ok=True)
    deltas: dict[str, dict[int, torch.Tensor]] = {}
    conv = {}
    for e in edits:
        name = _raw_param_name(model, e.layer)
        conv[name] = not isinstance(_mlp_out_module(model, e.layer), torch.nn.Linear)
        rows = deltas.setdefault(name, {})
        rows[e.neuron] = rows.get(e.neuron, torch.zeros_like(e.old)) + (e.new - e.old)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, out / f.name)
    for f in sorted(glob.glob(str(src / "*.safetensors"))):
        with safe_open(f, framework="pt") as h:
            meta = h.metadata()
            tensors = {k: h.get_tensor(k) for k in h.keys()}
        for name, rows in deltas.items():
            if name not in tensors:
                continue
            t = tensors[name]
            for k, d in rows.items():
                if conv[name]:
                    t[k] += d.to(t.dtype)
                else:
                    t[:, k] += d.to(t.dtype)
        save_file(tensors, str(out / Path(f).name), metadata=meta)
    edits.save(out / "codecircuits_edits.safetensors")
    return out


# ----------------------------------------------------------------------------------------------------------
# repair cases from held-out code


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


def _scan_lines(model, corpus, *, context_tokens: int, max_line_tokens: int, seed: int, limit: int):
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
        for li, start, end in rng.sample(lines, min(3, len(lines))):
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
def _greedy(model, tokens: torch.Tensor) -> torch.Tensor:
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
    progress: bool = True,
) -> tuple[list[RepairCase], list[RepairCase]]:
    """Repair cases from real code: lines whose teacher-forced greedy completion has 1..``max_errors`` wrong tokens.

    Returns ``(cases, scanned)``: the first ``n`` lines that need repair, and every line scanned (the pool that
    generalisation and specificity probes are drawn from; scanning goes on until it holds ``min_scanned`` lines).
    ``corpus`` is a :class:`codecircuits.corpus.Corpus`
    (e.g. ``corpus.stdlib("test")`` or ``corpus.humaneval()``).
    """
    from tqdm.auto import tqdm

    if n < 1:
        raise InputError("Ask for at least one repair case (n >= 1).")
    if max_errors < 1:
        raise InputError("max_errors must be at least 1.")
    cases, scanned = [], []
    bar = tqdm(total=n, desc="repair cases", disable=not progress)
    for src, line_no, line, ctx, ref in _scan_lines(
        model, corpus, context_tokens=context_tokens, max_line_tokens=max_line_tokens, seed=seed, limit=max_lines
    ):
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
) -> list[Probe]:
    """Generalisation probes for a fix to ``target``: held-out positions whose reference next token is ``target``.

    Scans the files of ``corpus`` (shuffled by ``seed``; paths in ``exclude`` skipped) for occurrences of
    ``target`` with ``context_tokens`` of preceding context, collects up to ``max_candidates`` of them (at most
    four per file, so one file cannot fill the set), predicts their next token in batches, and returns ``n``
    probes ordered: the same confusion first (greedy == ``wrong``), then other mistakes, then positions the model
    already gets right. Empty if the corpus never contains the token.
    """
    if n < 1:
        return []
    bos = bos_id(model)
    skip = set(exclude)
    files = [f for f in corpus if f.path not in skip]
    random.Random(seed).shuffle(files)
    contexts: list[tuple[int, ...]] = []
    for f in files[:max_files]:
        ids = model.tokenizer(f.text, add_special_tokens=False)["input_ids"]
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
            self._store[key] = _resid(self.model, t, self.layer)
        with torch.no_grad():
            return self.model(self._store[key], start_at_layer=self.layer)


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
def heldout_loss(model, tokens: torch.Tensor, *, cache: ResidCache | None = None) -> float:
    """Mean next-token cross-entropy of ``tokens`` ``[batch, pos]``."""
    cache = cache or ResidCache(model, 0)
    total, count = 0.0, 0
    for row in tokens:
        logits = cache.logits(row)[0].float()
        total += float(torch.nn.functional.cross_entropy(logits[:-1], row[1:].to(logits.device), reduction="sum"))
        count += row.numel() - 1
    return total / count


# ----------------------------------------------------------------------------------------------------------
# MINT


def semantic_basis(model, token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Rows of ``pinv(W_U)`` for ``token_ids`` (``[n, d_model]``): the residual direction that reads as the token.

    Uses ``pinv(W_U) = W_U^T (W_U W_U^T)^+``, so only a ``d_model x d_model`` matrix is inverted.
    """
    W_U = model.W_U.detach().float()
    gram_pinv = getattr(model, "_cc_gram_pinv", None)
    if gram_pinv is None or gram_pinv.shape[0] != W_U.shape[0]:
        gram_pinv = torch.linalg.pinv(W_U @ W_U.T, hermitian=True)
        model._cc_gram_pinv = gram_pinv  # cached on the model: d_model^2 floats
    ids = torch.as_tensor(list(token_ids) if not isinstance(token_ids, torch.Tensor) else token_ids, dtype=torch.long)
    return W_U[:, ids.to(W_U.device)].T @ gram_pinv


def _layer_directions(model, layers, target: int, argmax: int, semantics: str, medium: int | None):
    """MINT's per-layer patch direction ("traction"), range-normalised."""
    n = model.cfg.n_layers
    s = semantic_basis(model, [target, argmax])
    out = {}
    for layer in layers:
        r = (layer + 1) / n
        if semantics == "delta":
            d = (s[0] - s[1]) * r
        elif semantics == "basis":
            e = model.W_E[medium].detach().float()
            d = torch.lerp(e, s[0], r)
        else:
            raise InputError(f"Unknown semantics {semantics!r}; use 'delta' or 'basis'.")
        rng = float(d.max() - d.min())
        if rng > 1e-12:
            out[layer] = d / rng
    return out


def _resid(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """``blocks.{layer}.hook_resid_pre`` of ``tokens`` (edits of layers >= ``layer`` leave it unchanged)."""
    name = f"blocks.{layer}.hook_resid_pre"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=name, stop_at_layer=layer + 1)
    return cache[name]


def candidate_neurons(
    model,
    tokens: torch.Tensor,
    pos: int,
    target: int,
    layers: Sequence[int],
    k: int = 10,
    *,
    resid: torch.Tensor | None = None,
) -> list[tuple[int, int, float]]:
    """Top-``k`` (layer, neuron, score) by gradient x activation on ``mlp.hook_post`` w.r.t. p(target) at ``pos``,
    L2-normed over positions 0..pos. ``resid`` (``resid_pre`` of ``min(layers)``) skips the lower layers."""
    layers = sorted(layers)
    start = layers[0]
    names = [f"blocks.{layer}.mlp.hook_post" for layer in layers]
    acts: dict[str, torch.Tensor] = {}

    def keep(x, hook):
        acts[hook.name] = x
        return x

    if resid is None:
        resid = _resid(model, tokens, start)
    x = resid[:, : pos + 1].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model.run_with_hooks(x, start_at_layer=start, fwd_hooks=[(n, keep) for n in names])
        prob = logits[0, pos].float().softmax(-1)[target]
        grads = torch.autograd.grad(prob, [acts[n] for n in names])
    scores = torch.stack([(g * acts[n]).detach()[0].float().norm(dim=0) for n, g in zip(names, grads)])  # [L, d_mlp]
    top = scores.flatten().topk(min(k, scores.numel()))
    d_mlp = scores.shape[1]
    return [(layers[i // d_mlp], i % d_mlp, float(v)) for v, i in zip(top.values.tolist(), top.indices.tolist())]


@torch.no_grad()
def _simulate(model, tokens, pos, cands, rows_new, target: int, argmax: int, *, resid=None, start=None) -> torch.Tensor:
    """Gap p(argmax) - p(target) at ``pos`` for each candidate's simulated value-vector edit (row change
    ``rows_new[i]`` added to the neuron's value vector), in one batched forward from ``start``."""
    b = len(cands)
    start = min(c[0] for c in cands) if start is None else start
    if resid is None:
        resid = _resid(model, tokens, start)
    x = resid[:, : pos + 1].expand(b, -1, -1)
    post: dict[int, torch.Tensor] = {}
    by_layer: dict[int, list[int]] = {}
    for i, (layer, _, _) in enumerate(cands):
        by_layer.setdefault(layer, []).append(i)
    hooks = []
    for layer, idx in by_layer.items():

        def keep(x, hook, layer=layer):
            post[layer] = x
            return x

        def add(x, hook, layer=layer, idx=idx):
            for i in idx:
                _, k, _ = cands[i]
                x[i] = x[i] + post[layer][i, :, k, None] * rows_new[i].to(x.dtype)
            return x

        hooks += [(f"blocks.{layer}.mlp.hook_post", keep), (f"blocks.{layer}.hook_mlp_out", add)]
    probs = model.run_with_hooks(x, start_at_layer=start, fwd_hooks=hooks)[:, pos].float().softmax(-1)
    return probs[:, argmax] - probs[:, target]


@dataclass(frozen=True)
class TokenRepair:
    """The repair of one wrong token: where, what, the edits kept (empty if rolled back) and the steps tried."""

    index: int  # into the case's reference line
    target: int
    wrong: int
    fixed: bool
    steps: int
    edits: Edits
    candidates: tuple[tuple[int, int, float], ...]


@dataclass(frozen=True)
class RepairResult:
    """MINT on one case. The model is left edited; ``undo(model)`` restores it exactly."""

    case: RepairCase
    success: bool  # every reference token is the greedy prediction after the repair
    tokens: tuple[TokenRepair, ...]
    edits: Edits
    seconds: float
    predicted_after: tuple[int, ...]
    settings: dict = field(default_factory=dict)

    @property
    def n_edits(self) -> int:
        return len(self.edits)

    @property
    def n_neurons(self) -> int:
        return len(self.edits.neurons)

    def undo(self, model) -> None:
        self.edits.undo(model)

    def to_dataframe(self):
        import pandas as pd

        rows = []
        for t in self.tokens:
            rows.append(
                {
                    "index": t.index,
                    "target": t.target,
                    "wrong": t.wrong,
                    "fixed": t.fixed,
                    "steps": t.steps,
                    "neurons": ",".join(f"L{a}N{b}" for a, b in t.edits.neurons),
                }
            )
        return pd.DataFrame(rows)

    def top(self, k: int = 10):
        return self.edits.top(k)


def mint_repair(
    model,
    case: RepairCase,
    *,
    layers: str | Sequence[int] = "half",
    n_candidates: int = 10,
    max_edits: int = 10,
    scale: float = 1.0,
    semantics: str = "delta",
    orthogonalize: bool = False,
) -> RepairResult:
    """Repair ``case`` with MINT, token by token along the reference line (teacher-forced).

    Args:
        layers: which layers' neurons may be edited (default: the upper half).
        n_candidates: neurons located per wrong token by gradient x activation.
        max_edits: edits allowed per token before its edits are rolled back (MINT's ``MAX_PATCHING_NUM``).
        scale: the edit size is ``eps = 0.01 * scale`` (MINT's planning factor is 0.01; its benchmark uses 10x).
        semantics: ``"delta"`` (``s(target) - s(argmax)``) or ``"basis"`` (interpolate from the last token's input
            embedding to ``s(target)``).
        orthogonalize: project each direction off the directions already used in the same layer.
    """
    if max_edits < 1 or n_candidates < 1:
        raise InputError("max_edits and n_candidates must be at least 1.")
    if scale < 0:
        raise InputError(f"scale must be >= 0; got {scale}.")
    layer_list = upper_layers(model, layers)
    eps = 0.01 * scale
    t0 = time.perf_counter()
    tokens = case.tokens
    start = layer_list[0]
    resid = _resid(model, tokens, start)  # edits only touch layers >= start: compute the rest once

    def greedy() -> torch.Tensor:
        with torch.no_grad():
            return model(resid, start_at_layer=start).argmax(-1)[0].cpu()

    history: dict[int, list[torch.Tensor]] = {}
    repairs, kept = [], Edits(model_name=str(model.cfg.model_name))
    current = greedy()
    for i, target in enumerate(case.reference):
        pos = case.positions[i]
        wrong = int(current[pos])
        if wrong == target:
            continue
        medium = int(tokens[0, pos])
        dirs = _layer_directions(model, layer_list, target, wrong, semantics, medium)
        if orthogonalize:
            for layer, d in list(dirs.items()):
                u = d.clone()
                for h in history.get(layer, []):
                    u = u - (u @ h) * h
                if u.norm() > 1e-8:
                    dirs[layer] = u / u.norm() * d.norm()
        cands = candidate_neurons(model, tokens, pos, target, layer_list, n_candidates, resid=resid)
        cands = [c for c in cands if c[0] in dirs]
        token_edits: list[NeuronEdit] = []
        steps, argmax = 0, wrong
        while argmax != target and steps < max_edits and cands:
            deltas = []
            for layer, k, _ in cands:
                w = mlp_out_weight(model, layer)
                row = w[k].detach().float()
                new = (row + eps * dirs[layer].to(row.device)) / (1 + eps)
                deltas.append((new - row).to(w.dtype))
            gaps = _simulate(model, tokens, pos, cands, deltas, target, argmax, resid=resid, start=start)
            best = int(gaps.argmin())
            layer, k, _ = cands[best]
            w = mlp_out_weight(model, layer)
            row = w[k].detach().float()
            new = (row + eps * dirs[layer].to(row.device)) / (1 + eps)
            token_edits.append(apply_edit(model, layer, k, new))
            steps += 1
            argmax = int(greedy()[pos])
        fixed = argmax == target
        if not fixed:
            Edits(tuple(token_edits)).undo(model)
            token_edits = []
        else:
            for layer in {e.layer for e in token_edits}:
                d = dirs[layer]
                history.setdefault(layer, []).append(d / d.norm())
        te = Edits(tuple(token_edits), str(model.cfg.model_name))
        kept = kept + te
        repairs.append(TokenRepair(i, int(target), wrong, fixed, steps, te, tuple(cands)))
        current = greedy()
    after = tuple(int(current[p]) for p in case.positions)
    settings = dict(
        layers=layer_list if not isinstance(layers, str) else layers,
        n_candidates=n_candidates,
        max_edits=max_edits,
        scale=scale,
        semantics=semantics,
        orthogonalize=orthogonalize,
    )
    return RepairResult(
        case=case,
        success=after == tuple(case.reference),
        tokens=tuple(repairs),
        edits=kept,
        seconds=time.perf_counter() - t0,
        predicted_after=after,
        settings=settings,
    )


# ----------------------------------------------------------------------------------------------------------
# the SGD baseline


@dataclass(frozen=True)
class CaseOutcome:
    """The SGD baseline on one case: success, steps, time, and how many weights it changed."""

    case: RepairCase
    success: bool
    steps: int
    seconds: float
    changed_rows: int  # value vectors (rows of W_out) that changed
    predicted_after: tuple[int, ...]
    settings: dict = field(default_factory=dict)


class WeightSnapshot:
    """Copies of the MLP output weights of some layers, to restore them exactly after a baseline."""

    def __init__(self, model, layers: Sequence[int]):
        self.model = model
        self.saved = {layer: mlp_out_weight(model, layer).detach().clone() for layer in layers}

    def changed_rows(self) -> int:
        n = 0
        for layer, w0 in self.saved.items():
            n += int((mlp_out_weight(self.model, layer).detach() != w0).any(dim=1).sum())
        return n

    def restore(self) -> None:
        for layer, w0 in self.saved.items():
            with torch.no_grad():
                mlp_out_weight(self.model, layer).copy_(w0)


def sgd_repair(
    model,
    case: RepairCase,
    *,
    layers: str | Sequence[int] = "half",
    lr: float = 1e-2,
    steps: int = 10,
    snapshot: WeightSnapshot | None = None,
) -> tuple[CaseOutcome, WeightSnapshot]:
    """Baseline: SGD on the MLP output weights of ``layers`` with the cross-entropy of the case's wrong tokens
    (teacher-forced), ``steps`` steps at ``lr`` (MINT's baseline: lr 1e-2, ~10 steps).

    The model is left fine-tuned; the returned snapshot's ``restore()`` puts the weights back exactly.
    """
    if steps < 0 or lr < 0:
        raise InputError("steps and lr must be non-negative.")
    layer_list = upper_layers(model, layers)
    snap = snapshot or WeightSnapshot(model, layer_list)
    params = [_mlp_out_module(model, layer).weight for layer in layer_list]
    all_params = list(model.parameters())
    all_flags = [p.requires_grad for p in all_params]
    t0 = time.perf_counter()
    start = layer_list[0]
    resid = _resid(model, case.tokens, start)  # the layers below are frozen: run only the trained ones
    pos = torch.tensor([case.positions[i] for i in case.errors])
    tgt = torch.tensor([case.reference[i] for i in case.errors], device=model.cfg.device)
    try:
        for p in all_params:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                logits = model(resid, start_at_layer=start)[0, pos].float()
                torch.nn.functional.cross_entropy(logits, tgt).backward()
                opt.step()
    finally:
        for p, f in zip(all_params, all_flags):
            p.requires_grad_(f)
        for p in params:
            p.grad = None
    with torch.no_grad():
        after = model(resid, start_at_layer=start).argmax(-1)[0].cpu()
    pred = tuple(int(after[p]) for p in case.positions)
    out = CaseOutcome(
        case=case,
        success=pred == tuple(case.reference),
        steps=steps,
        seconds=time.perf_counter() - t0,
        changed_rows=snap.changed_rows(),
        predicted_after=pred,
        settings=dict(layers=layers if isinstance(layers, str) else layer_list, lr=lr, steps=steps),
    )
    return out, snap
