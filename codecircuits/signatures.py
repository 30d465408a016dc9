"""Weight signatures (Cai, Zhang, Wang, "Robust Weight Signatures", ICML 2023), carried from vision to code.

From one base model, fine-tune briefly on clean code (the *standard* task vector ``a = theta_std - theta_pre``) and
on code under a distribution shift ``c`` (``Delta_c = theta_c - theta_pre``). The shift's signature, per weight
tensor and restricted to chosen layers, is its task vector with the standard component removed::

    RWS_c = Delta_c - (Delta_c . a / a . a) a

A base model is patched with ``theta = theta_base + sum_c alpha_c RWS_c`` (signatures compose by summation).
Patches are reversible: :class:`WeightPatch` keeps the tensors it replaced and ``undo`` restores them bit for bit.

Weights are named per block, ``blocks.{l}.<path inside the block>`` (e.g. ``blocks.3.mlp.out.weight``), the same
on every architecture, and are the tensors the bridge's forward pass reads (its processed weight space).
Code shifts that are real and keep the program's meaning: :func:`tabs_for_spaces` (tab indentation),
:func:`reindent` (2-space indentation), :func:`rename_locals` (a deterministic minifier-style renaming of local
names with the stdlib ``tokenize`` and ``ast`` modules), :func:`swap_quotes` (single-quoted strings become
double-quoted and back, checked to leave the AST unchanged) and :func:`strip_comments`; :data:`SHIFTS` names them
and :func:`shifted_texts` applies them. The code they shift is whole top-level functions and classes
(:func:`snippets_of`) of the standard library (:func:`code_snippets`) or of another corpus
(:func:`transfer_snippets`).

Evaluation is per document (:func:`doc_tokens`, :func:`doc_losses`), so bootstrap intervals can resample documents;
signatures are saved and loaded as safetensors (:func:`save`, :func:`load`) and compared with a matched-norm random
direction (:func:`random_like`); :func:`storage_sizes` compares the files with a full copy of the weights and
:func:`layer_profile` gives the norms and cosines by layer.
"""

from __future__ import annotations

import ast
import builtins
import functools
import io
import keyword
import math
import random
import re
import time
import tokenize
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from . import corpus as corpus_mod
from . import figures
from .errors import InputError

__all__ = [
    "SHIFTS",
    "FinetuneRun",
    "Signature",
    "TaskVector",
    "WeightPatch",
    "block_params",
    "code_snippets",
    "compose",
    "doc_losses",
    "doc_tokens",
    "finetune",
    "layer_profile",
    "lm_loss",
    "load",
    "random_like",
    "reindent",
    "save",
    "save_full_copy",
    "shifted_texts",
    "snippets_of",
    "storage_sizes",
    "strip_comments",
    "swap_quotes",
    "make_batches",
    "patch",
    "patched",
    "rename_locals",
    "signature",
    "snapshot",
    "tabs_for_spaces",
    "task_vector",
    "transfer_snippets",
]


# ----------------------------------------------------------------------------------------------------------
# naming the weights


def block_params(model, layers: Iterable[int] | None = None, kind: str = "mlp") -> dict[str, torch.nn.Parameter]:
    """The parameters of ``layers`` (default: all) of a ``kind``: ``"mlp"``, ``"mlp_out"`` (the output projection
    only), ``"attn"`` or ``"block"`` (everything in the block), named ``blocks.{l}.<path>``."""
    n = model.cfg.n_layers
    layer_list = list(range(n)) if layers is None else sorted({int(x) for x in layers})
    if not layer_list or layer_list[0] < 0 or layer_list[-1] >= n:
        raise InputError(f"Layers must be a non-empty subset of 0..{n - 1}; got {layers!r}.")
    prefix = {"mlp": "mlp.", "mlp_out": "mlp.out.", "attn": "attn.", "block": ""}.get(kind)
    if prefix is None:
        raise InputError(f"Unknown weight kind {kind!r}; use 'mlp', 'mlp_out', 'attn' or 'block'.")
    out: dict[str, torch.nn.Parameter] = {}
    for layer in layer_list:
        # each parameter is reachable both through the bridge (mlp.out) and the wrapped HF module
        # (mlp.down_proj); name it by the bridge path, the one with the fewest wrapper hops
        best: dict[int, tuple[int, str, torch.nn.Parameter]] = {}
        for name, p in model.blocks[layer].named_parameters(remove_duplicate=False):
            hops = name.count("_original_component")
            short = name.replace("_original_component.", "")
            if id(p) not in best or hops < best[id(p)][0]:
                best[id(p)] = (hops, short, p)
        for _, short, p in sorted(best.values(), key=lambda t: t[1]):
            if short.startswith(prefix):
                out[f"blocks.{layer}.{short}"] = p
    if not out:
        raise InputError(f"No {kind} parameters found in layers {layer_list}.")
    return out


def _layer_of(name: str) -> int:
    return int(name.split(".")[1])


def _params_by_name(model, names: Iterable[str]) -> dict[str, torch.nn.Parameter]:
    names = list(names)
    layers = sorted({_layer_of(n) for n in names})
    table = block_params(model, layers, "block")
    missing = [n for n in names if n not in table]
    if missing:
        raise InputError(f"The model has no weights named {missing[:3]}; names look like 'blocks.3.mlp.out.weight'.")
    return {n: table[n] for n in names}


def snapshot(model, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Copies (on CPU) of the named weights."""
    return {n: p.detach().cpu().clone() for n, p in _params_by_name(model, names).items()}


# ----------------------------------------------------------------------------------------------------------
# task vectors and signatures


@dataclass(frozen=True)
class TaskVector:
    """Per-tensor weight differences ``theta_ft - theta_pre`` (on CPU)."""

    name: str
    deltas: Mapping[str, torch.Tensor]

    @property
    def layers(self) -> list[int]:
        return sorted({_layer_of(n) for n in self.deltas})

    def norm(self) -> float:
        return math.sqrt(sum(float(d.double().pow(2).sum()) for d in self.deltas.values()))

    def restrict(self, layers: Iterable[int]) -> TaskVector:
        keep = set(layers)
        return TaskVector(self.name, {n: d for n, d in self.deltas.items() if _layer_of(n) in keep})

    def norm_profile(self) -> dict[int, float]:
        """L2 norm of the layer's deltas, per layer."""
        sq: dict[int, float] = {}
        for n, d in self.deltas.items():
            sq[_layer_of(n)] = sq.get(_layer_of(n), 0.0) + float(d.double().pow(2).sum())
        return {layer: math.sqrt(v) for layer, v in sorted(sq.items())}

    def storage_bytes(self, dtype: torch.dtype | None = None) -> int:
        size = torch.empty((), dtype=dtype).element_size() if dtype is not None else None
        return sum(d.numel() * (size or d.element_size()) for d in self.deltas.values())

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(
            [
                {"tensor": n, "layer": _layer_of(n), "numel": d.numel(), "norm": float(d.double().norm())}
                for n, d in self.deltas.items()
            ]
        )

    def top(self, k: int = 10):
        """The ``k`` rows of :meth:`to_dataframe` (tensors) with the largest delta ``norm`` (never negative), largest
        first."""
        return self.to_dataframe().sort_values("norm", ascending=False, kind="stable").head(k)

    def plot(self) -> figures.Figure:
        """The norm of the deltas per layer (:meth:`norm_profile`)."""
        prof = self.norm_profile()
        return figures.lines(list(prof), {self.name: list(prof.values())}, title=f"{self.name}: delta norm by layer",
                             x_title="layer", y_title="L2 norm")


def task_vector(model_or_state, base: Mapping[str, torch.Tensor], name: str = "task") -> TaskVector:
    """``theta - theta_base`` for every tensor of ``base`` (a :func:`snapshot`), from a model or another snapshot."""
    if isinstance(model_or_state, Mapping):
        now = model_or_state
        missing = [n for n in base if n not in now]
        if missing:
            raise InputError(f"The fine-tuned weights lack {missing[:3]}; take both snapshots over the same names.")
    else:
        now = snapshot(model_or_state, base.keys())
    deltas = {}
    for n, b in base.items():
        if now[n].shape != b.shape:
            raise InputError(f"{n} has shape {tuple(now[n].shape)} but the base has {tuple(b.shape)}.")
        deltas[n] = (now[n].detach().cpu().float() - b.float()).to(b.dtype)
    return TaskVector(name, deltas)


@dataclass(frozen=True)
class Signature(TaskVector):
    """A shift's weight signature: its task vector minus the projection on the standard one, per tensor."""

    cosines: Mapping[str, float] = field(default_factory=dict)  # cos(Delta_c, a) per tensor, before removal


def signature(shift: TaskVector, standard: TaskVector, *, layers: Iterable[int] | None = None, name=None) -> Signature:
    """``RWS = Delta_c - (Delta_c . a / a . a) a`` per tensor, over ``layers`` (default: all the task vectors share).

    Tensors where the standard task vector is zero keep ``Delta_c`` unchanged.
    """
    keep = set(layers) if layers is not None else None
    common = [n for n in shift.deltas if n in standard.deltas and (keep is None or _layer_of(n) in keep)]
    if not common:
        raise InputError(
            "The shift and standard task vectors share no tensors in the chosen layers; fine-tune the same weights "
            "for both and choose layers they cover."
        )
    out, cos = {}, {}
    for n in common:
        d, a = shift.deltas[n].double().flatten(), standard.deltas[n].double().flatten()
        aa = float(a @ a)
        proj = float(d @ a) / aa if aa > 0 else 0.0
        dn = float(d.norm())
        cos[n] = float(d @ a) / (dn * math.sqrt(aa)) if aa > 0 and dn > 0 else 0.0
        out[n] = (d - proj * a).view_as(shift.deltas[n]).to(shift.deltas[n].dtype)
    return Signature(name or f"{shift.name} signature", out, cos)


def compose(signatures: Sequence[TaskVector], alphas: Sequence[float] | None = None, name: str = "composed"):
    """``sum_c alpha_c RWS_c`` as one task vector (alphas default to 1)."""
    if not signatures:
        raise InputError("Compose at least one signature.")
    alphas = [1.0] * len(signatures) if alphas is None else list(alphas)
    if len(alphas) != len(signatures):
        raise InputError(f"{len(signatures)} signatures but {len(alphas)} alphas.")
    out: dict[str, torch.Tensor] = {}
    for s, a in zip(signatures, alphas):
        for n, d in s.deltas.items():
            out[n] = out[n] + a * d if n in out else a * d
    return TaskVector(name, out)


def random_like(tv: TaskVector, seed: int = 0, name: str | None = None) -> TaskVector:
    """A random direction with ``tv``'s norm in every tensor (Gaussian, rescaled per tensor): the matched-norm
    control for a signature."""
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for n, d in tv.deltas.items():
        r = torch.randn(d.shape, generator=gen, dtype=torch.float64)
        dn, rn = float(d.double().norm()), float(r.norm())
        out[n] = (r * (dn / rn if rn > 0 else 0.0)).to(d.dtype)
    return TaskVector(name or f"random like {tv.name}", out)


def save(tv: TaskVector, path, *, dtype: torch.dtype | None = None):
    """Write ``tv``'s tensors (optionally cast to ``dtype``, e.g. ``torch.float16``) to a safetensors file; returns
    the path. Its size on disk is the signature's real storage cost."""
    from pathlib import Path

    from safetensors.torch import save_file

    if not tv.deltas:
        raise InputError(f"{tv.name} has no tensors to save.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {n: (d.to(dtype) if dtype is not None else d).contiguous() for n, d in tv.deltas.items()}
    save_file(tensors, str(path), metadata={"name": tv.name, "kind": type(tv).__name__})
    return path


def load(path) -> TaskVector:
    """A task vector (or signature) written by :func:`save`, as float32 tensors."""
    from pathlib import Path

    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"No signature file at {path}; write one with codecircuits.signatures.save.")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        deltas = {n: f.get_tensor(n).float() for n in f.keys()}
    return TaskVector(meta.get("name", path.stem), deltas)


def save_full_copy(model, path):
    """Write a full copy of the model's weights (shared tensors once) to a safetensors file; returns the path, whose
    size on disk is what a signature file is compared with."""
    from pathlib import Path

    from safetensors.torch import save_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model.original_model, str(path))
    return path


def storage_sizes(model, sig: TaskVector, shallow: Iterable[int]) -> dict:
    """Sizes on disk (MiB) of safetensors files -- a full copy of the weights, the signature in float32 and float16
    and its ``shallow`` layers in float16 -- and the full copy's size over each (``ratio_full_to_*``)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        full = save_full_copy(model, tmp / "full.safetensors").stat().st_size
        f32 = save(sig, tmp / "sig.safetensors").stat().st_size
        f16 = save(sig, tmp / "sig16.safetensors", dtype=torch.float16).stat().st_size
        sh16 = save(sig.restrict(list(shallow)), tmp / "shallow16.safetensors", dtype=torch.float16).stat().st_size
    mib = 2**20
    return {
        "full_copy_file_mib": full / mib,
        "signature_file_mib": f32 / mib,
        "signature_fp16_file_mib": f16 / mib,
        "shallow_fp16_file_mib": sh16 / mib,
        "ratio_full_to_signature": full / f32,
        "ratio_full_to_signature_fp16": full / f16,
        "ratio_full_to_shallow_fp16": full / sh16,
        "signature_of": sig.name,
    }


def layer_profile(task_vectors: Mapping[str, TaskVector], signatures: Mapping[str, Signature], n_layers: int) -> dict:
    """Per layer (columns of a table, ``layer`` first): the norm of each task vector (``norm_tv_<name>``) and
    signature (``norm_sig_<name>``), and each shift's mean cosine with the standard task vector before its removal
    (``cos_<name>_clean``; NaN where no tensor of the layer was trained)."""
    prof: dict[str, list] = {"layer": list(range(n_layers))}
    for name, tv in task_vectors.items():
        prof[f"norm_tv_{name}"] = [tv.norm_profile().get(i, 0.0) for i in range(n_layers)]
    for c, sig in signatures.items():
        prof[f"norm_sig_{c}"] = [sig.norm_profile().get(i, 0.0) for i in range(n_layers)]
        cos: dict[int, list[float]] = {}
        for tname, v in sig.cosines.items():
            cos.setdefault(int(tname.split(".")[1]), []).append(v)
        prof[f"cos_{c}_clean"] = [sum(cos[i]) / len(cos[i]) if i in cos else math.nan for i in range(n_layers)]
    return prof


# ----------------------------------------------------------------------------------------------------------
# patching a model, reversibly


@dataclass(frozen=True)
class WeightPatch:
    """Record of a patch: the tensors it overwrote (on CPU). ``undo`` restores them exactly."""

    old: Mapping[str, torch.Tensor]
    alphas: tuple[float, ...]
    names: tuple[str, ...]

    def undo(self, model) -> None:
        params = _params_by_name(model, self.old.keys())
        with torch.no_grad():
            for n, t in self.old.items():
                params[n].copy_(t.to(device=params[n].device, dtype=params[n].dtype))


def patch(model, signatures: TaskVector | Sequence[TaskVector], alphas: float | Sequence[float] = 1.0) -> WeightPatch:
    """``theta <- theta + sum_c alpha_c RWS_c`` in place; returns the record that undoes it."""
    sigs = [signatures] if isinstance(signatures, TaskVector) else list(signatures)
    al = [float(alphas)] * len(sigs) if isinstance(alphas, (int, float)) else [float(a) for a in alphas]
    if len(al) != len(sigs):
        raise InputError(f"{len(sigs)} signatures but {len(al)} alphas.")
    names = sorted({n for s in sigs for n in s.deltas})
    params = _params_by_name(model, names)
    for s in sigs:
        for n, d in s.deltas.items():
            if params[n].shape != d.shape:
                raise InputError(f"{s.name}: {n} has shape {tuple(d.shape)}, the model's has {tuple(params[n].shape)}.")
    old = {n: params[n].detach().cpu().clone() for n in names}
    with torch.no_grad():
        for s, a in zip(sigs, al):
            for n, d in s.deltas.items():
                p = params[n]
                p.add_(d.to(device=p.device, dtype=p.dtype), alpha=a)
    return WeightPatch(old, tuple(al), tuple(s.name for s in sigs))


@contextmanager
def patched(model, signatures, alphas=1.0):
    """Patch for the duration of a ``with`` block, then restore the weights exactly."""
    rec = patch(model, signatures, alphas)
    try:
        yield model
    finally:
        rec.undo(model)


# ----------------------------------------------------------------------------------------------------------
# real code shifts


def tabs_for_spaces(text: str, width: int = 4) -> str:
    """Re-indent with tabs: each leading run of ``width`` spaces becomes a tab."""
    pat = re.compile(rf"^((?: {{{width}}})+)", re.M)
    return pat.sub(lambda m: "\t" * (len(m.group(1)) // width), text)


def reindent(text: str, width: int = 2, old: int = 4) -> str:
    """Re-indent with ``width`` spaces per level: each leading run of ``old`` spaces becomes ``width`` spaces."""
    if width < 1 or old < 1:
        raise InputError("Indentation widths must be at least 1.")
    pat = re.compile(rf"^((?: {{{old}}})+)", re.M)
    return pat.sub(lambda m: " " * (width * (len(m.group(1)) // old)), text)


def _same_ast(a: str, b: str) -> bool:
    try:
        return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b))
    except (SyntaxError, ValueError):
        return False


def _token_edits(text: str, edit) -> str:
    """Apply ``edit(token) -> str | None`` to the tokens of ``text``; unchanged where the text does not tokenize."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (SyntaxError, tokenize.TokenError, IndentationError, ValueError):
        return text
    lines = text.splitlines(keepends=True)
    edits = []
    for t in toks:
        new = edit(t)
        if new is not None and t.start[0] == t.end[0]:  # single-line tokens only
            edits.append((t.start[0], t.start[1], t.end[1], new))
    for row, c0, c1, new in sorted(edits, reverse=True):
        line = lines[row - 1]
        lines[row - 1] = line[:c0] + new + line[c1:]
    return "".join(lines)


def swap_quotes(text: str) -> str:
    """Single-line string literals change quote style: ``'x'`` becomes ``"x"`` and ``"x"`` becomes ``'x'`` where the
    body holds neither quote nor a backslash. The result is returned only if it parses to the same AST (else the
    text is returned unchanged)."""

    def edit(t):
        if t.type != tokenize.STRING:
            return None
        m = re.fullmatch(r"([rRbBuU]{0,2})(['\"])(.*)\2", t.string, re.S)
        if not m or len(m.group(3)) and m.group(3)[:2] == m.group(2) * 2:
            return None
        prefix, q, body = m.groups()
        if t.string.startswith(prefix + q * 3) or "'" in body or '"' in body or "\\" in body:
            return None
        other = '"' if q == "'" else "'"
        return f"{prefix}{other}{body}{other}"

    out = _token_edits(text, edit)
    return out if _same_ast(text, out) else text


def strip_comments(text: str) -> str:
    """Remove every ``#`` comment (the line's code stays; a comment-only line becomes blank). Returned only if the
    AST is unchanged."""

    def edit(t):
        return "" if t.type == tokenize.COMMENT else None

    out = _token_edits(text, edit)
    out = re.sub(r"[ \t]+$", "", out, flags=re.M)
    return out if _same_ast(text, out) else text


def _short_names():
    letters = "abcdefghijklmnopqrstuvwxyz"
    n = 1
    while True:
        for i in range(len(letters) ** n):
            s, k = "", i
            for _ in range(n):
                s = letters[k % 26] + s
                k //= 26
            yield s
        n += 1


def rename_locals(text: str) -> str:
    """Minifier-style renaming: every parameter and assigned name inside a function becomes ``a``, ``b``, ...

    Deterministic (in order of first appearance), consistent within each function, never reusing a short name
    within a file (so nested functions cannot shadow), skipping ``self``/``cls``,
    dunders, names declared ``global``/``nonlocal``, attribute names (after ``.``) and keyword arguments at call
    sites. Text that does not parse is returned unchanged.
    """
    try:
        tree = ast.parse(text)
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (SyntaxError, tokenize.TokenError, IndentationError, ValueError):
        return text
    reserved = set(keyword.kwlist) | set(dir(builtins)) | {"self", "cls"}
    used = {t.string for t in toks if t.type == tokenize.NAME}
    spans: list[tuple[tuple[int, int], tuple[int, int], dict[str, str]]] = []
    gen = (s for s in _short_names() if s not in used and s not in reserved)  # one supply per file: no shadowing
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        skip: set[str] = set()
        local: list[str] = []
        a = node.args
        for arg in a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]:
            local.append(arg.arg)
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Global, ast.Nonlocal)):
                skip.update(sub.names)
            elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                local.append(sub.id)
            elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and sub is not node:
                skip.add(sub.name)
        mapping: dict[str, str] = {}
        for name in local:
            if name in mapping or name in skip or name in reserved or name.startswith("__"):
                continue
            mapping[name] = next(gen)
        if mapping:
            end = (getattr(node, "end_lineno", node.lineno), getattr(node, "end_col_offset", 0))
            spans.append(((node.lineno, node.col_offset), end, mapping))
    if not spans:
        return text
    spans.sort(key=lambda s: (s[0], (-s[1][0], -s[1][1])))  # outer functions first, inner ones override
    call_kws = {(k.lineno, k.col_offset) for k in ast.walk(tree) if isinstance(k, ast.keyword) and k.arg}
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, int, int, str]] = []
    prev = None
    for t in toks:
        if t.type == tokenize.NAME and t.start not in call_kws:
            after_dot = prev is not None and prev.type == tokenize.OP and prev.string == "."
            if not after_dot:
                new = None
                for start, end, mapping in spans:
                    if start <= t.start <= end and t.string in mapping:
                        new = mapping[t.string]  # innermost (latest in sort order) wins
                if new is not None:
                    edits.append((t.start[0], t.start[1], t.end[1], new))
        if t.type not in (tokenize.NL, tokenize.COMMENT):
            prev = t
    for row, c0, c1, new in sorted(edits, reverse=True):
        line = lines[row - 1]
        lines[row - 1] = line[:c0] + new + line[c1:]
    return "".join(lines)


#: the code shifts, by name, in the order they are applied when combined ("all")
SHIFTS: dict[str, Callable[[str], str]] = {
    "rename": rename_locals,
    "quotes": swap_quotes,
    "nocomments": strip_comments,
    "tabs": tabs_for_spaces,
    "indent2": reindent,
}


def shifted_texts(texts: Sequence[str], shift: str, shifts: Sequence[str] | None = None) -> list[str]:
    """``texts`` under ``shift`` ("clean", a name of :data:`SHIFTS`, or "all": every one of ``shifts`` in turn)."""
    if shift == "clean":
        return list(texts)
    if shift == "all":
        out = list(texts)
        for s in [s for s in SHIFTS if s in (shifts or tuple(SHIFTS))]:
            out = [SHIFTS[s](t) for t in out]
        return out
    if shift == "both":  # the earlier study's name for tabs + rename
        return [tabs_for_spaces(rename_locals(t)) for t in texts]
    if shift not in SHIFTS:
        raise InputError(f"Unknown shift {shift!r}; choose from {', '.join(SHIFTS)}.")
    return [SHIFTS[shift](t) for t in texts]


# ----------------------------------------------------------------------------------------------------------
# the code: top-level functions and classes of a corpus


def snippets_of(files, n_chars: int | None, seed: int | None) -> list[str]:
    """Top-level functions and classes (200-6,000 characters, indented, with local names) of ``files`` (a seeded
    shuffle unless ``seed`` is None), up to ``n_chars``: code, not licence headers and imports."""
    files = list(files)
    if seed is not None:
        random.Random(seed).shuffle(files)
    out, total = [], 0
    for f in files:
        try:
            tree = ast.parse(f.text)
        except (SyntaxError, ValueError):
            continue
        lines = f.text.splitlines(keepends=True)
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            seg = "".join(lines[node.lineno - 1 : node.end_lineno]).rstrip()
            if not seg or len(seg) < 200 or len(seg) > 6000 or "    " not in seg or rename_locals(seg) == seg:
                continue
            out.append(seg + "\n")
            total += len(seg)
        if n_chars is not None and total >= n_chars:
            break
    return out


def code_snippets(split: str, n_chars: int | None, seed: int) -> list[str]:
    """:func:`snippets_of` the standard library's ``split`` (cached per process: reading the library takes seconds)."""
    return list(_stdlib_snippets(split, n_chars, seed))


@functools.lru_cache(maxsize=16)
def _stdlib_snippets(split, n_chars, seed) -> tuple[str, ...]:
    out = snippets_of([f for f in _stdlib_all() if corpus_mod.split_of(f.path) == split], n_chars, seed)
    if not out:
        raise InputError(f"No functions or classes found in stdlib:{split}.")
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _stdlib_all():
    return tuple(corpus_mod.stdlib())  # one pass over the library for every split


@functools.lru_cache(maxsize=4)
def _corpus_snippets(spec: str) -> tuple[str, ...]:
    return tuple(snippets_of(corpus_mod.load(spec), None, None))


def transfer_snippets(spec: str, seed: int) -> tuple[list[str], list[str]]:
    """The functions of the corpus ``spec`` (:func:`codecircuits.corpus.load`), shuffled (``seed``) and dealt
    alternately to fine-tuning and to evaluation."""
    found = list(_corpus_snippets(spec))
    if len(found) < 4:
        raise InputError(f"The transfer corpus {spec!r} has {len(found)} usable functions; it needs at least 4.")
    random.Random(seed).shuffle(found)
    return found[0::2], found[1::2]


# ----------------------------------------------------------------------------------------------------------
# brief fine-tuning


def make_batches(
    model, texts: Sequence[str], *, seq_len: int = 128, n: int | None = None, spread: bool = True
) -> torch.Tensor:
    """Tokenize and concatenate ``texts`` (each starting with BOS) and cut ``[n, seq_len]`` chunks.

    With ``n`` and ``spread`` (the default) the ``n`` chunks are spaced evenly over all the text, not its start.
    """
    if seq_len < 2:
        raise InputError("seq_len must be at least 2.")
    bos = model.tokenizer.bos_token_id
    ids: list[int] = []
    for t in texts:
        if bos is not None:
            ids.append(bos)
        ids.extend(model.tokenizer(t, add_special_tokens=False)["input_ids"])
        if n is not None and not spread and len(ids) >= n * seq_len:
            break
    total = len(ids) // seq_len
    if total < 1:
        raise InputError(f"The texts hold {len(ids)} tokens, fewer than one chunk of {seq_len}.")
    chunks = torch.tensor(ids[: total * seq_len]).view(total, seq_len)
    if n is None or n >= total:
        return chunks
    if not spread:
        return chunks[:n]
    return chunks[torch.linspace(0, total - 1, n).round().long()]


def lm_loss(model, tokens: torch.Tensor, *, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over ``tokens`` ``[n, pos]``."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, tokens.shape[0], batch_size):
            b = tokens[i : i + batch_size].to(model.cfg.device)
            logits = model(b).float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), b[:, 1:].flatten(), reduction="sum")
            total += float(loss)
            count += b[:, 1:].numel()
    return total / count


def doc_tokens(model, texts: Sequence[str], *, max_len: int = 128, min_len: int = 8) -> list[torch.Tensor]:
    """One token sequence per text (BOS first where the tokenizer has one), cut to ``max_len`` tokens; texts shorter
    than ``min_len`` tokens raise (every document must be scored)."""
    if max_len < 2:
        raise InputError("max_len must be at least 2.")
    bos = model.tokenizer.bos_token_id
    out = []
    for i, t in enumerate(texts):
        ids = ([bos] if bos is not None else []) + model.tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) < max(2, min_len):
            raise InputError(f"Document {i} has {len(ids)} tokens, fewer than {min_len}; drop short documents.")
        out.append(torch.tensor(ids[:max_len]))
    if not out:
        raise InputError("No documents to score.")
    return out


def doc_losses(model, docs: Sequence[torch.Tensor], *, batch_size: int = 16) -> torch.Tensor:
    """Mean next-token cross-entropy of each document (``[n_docs]``, float64); documents are right-padded into
    batches and the padding is masked out (a causal model's earlier positions do not see it)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(docs), batch_size):
            chunk = docs[i : i + batch_size]
            n = max(int(d.shape[0]) for d in chunk)
            b = torch.zeros(len(chunk), n, dtype=torch.long)
            mask = torch.zeros(len(chunk), n - 1, dtype=torch.bool)
            for j, d in enumerate(chunk):
                b[j, : d.shape[0]] = d
                mask[j, : d.shape[0] - 1] = True
            logits = model(b.to(model.cfg.device)).float().cpu()
            ce = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1), b[:, 1:].flatten(), reduction="none"
            ).view(len(chunk), n - 1)
            out.append((ce * mask).sum(1).double() / mask.sum(1).double())
    return torch.cat(out)


@dataclass(frozen=True)
class FinetuneRun:
    """A brief fine-tune: its task vector, loss curve and settings."""

    task_vector: TaskVector
    losses: tuple[float, ...]
    seconds: float
    settings: dict

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame({"step": range(len(self.losses)), "loss": self.losses})

    def top(self, k: int = 10):
        """The ``k`` rows of :meth:`to_dataframe` (steps) with the largest loss, largest first."""
        return self.to_dataframe().sort_values("loss", ascending=False, kind="stable").head(k)

    def plot(self) -> figures.Figure:
        """The training loss per step."""
        return figures.lines(list(range(len(self.losses))), {"loss": list(self.losses)},
                             title=f"fine-tune {self.task_vector.name}: loss", x_title="step", y_title="loss")


def finetune(
    model,
    tokens: torch.Tensor,
    params: Mapping[str, torch.nn.Parameter] | Sequence[str],
    *,
    steps: int = 40,
    lr: float = 1e-3,
    batch_size: int = 4,
    seed: int = 0,
    name: str = "finetune",
    restore: bool = True,
    progress: bool = True,
) -> FinetuneRun:
    """Fine-tune only ``params`` with Adam on next-token loss over ``tokens`` and return the task vector.

    With ``restore`` (the default) the weights are put back exactly afterwards, so several fine-tunes can start
    from the same base model in one process.
    """
    from tqdm.auto import tqdm

    if steps < 1:
        raise InputError("steps must be at least 1.")
    named = dict(params) if isinstance(params, Mapping) else _params_by_name(model, params)
    base = {n: p.detach().cpu().clone() for n, p in named.items()}
    all_params = list(model.parameters())
    flags = [p.requires_grad for p in all_params]
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    try:
        for p in all_params:
            p.requires_grad_(False)
        for p in named.values():
            p.requires_grad_(True)
        opt = torch.optim.Adam(list(named.values()), lr=lr)
        with torch.enable_grad():
            for _ in tqdm(range(steps), desc=name, disable=not progress):
                idx = torch.randint(0, tokens.shape[0], (batch_size,), generator=gen)
                b = tokens[idx].to(model.cfg.device)
                logits = model(b).float()
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), b[:, 1:].flatten())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
        tv = task_vector(model, base, name=name)
    finally:
        for p, f in zip(all_params, flags):
            p.requires_grad_(f)
        for p in named.values():
            p.grad = None
        if restore:
            with torch.no_grad():
                for n, p in named.items():
                    p.copy_(base[n].to(device=p.device, dtype=p.dtype))
    settings = dict(steps=steps, lr=lr, batch_size=batch_size, seq_len=int(tokens.shape[1]), seed=seed,
                    n_params=sum(p.numel() for p in named.values()), tensors=len(named))
    return FinetuneRun(tv, tuple(losses), time.perf_counter() - t0, settings)

