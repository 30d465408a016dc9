"""Arithmetic prompts whose next token is the first token of ``a op b`` (Yu & Ananiadou's arithmetic-heads data,
METHODS §3.3), in the paper's four plain templates and in code.

:data:`PAPER_TEMPLATES` are the paper's four (``The sum of n1 and n2 is``, ``Q: What is n1 plus n2? A:``,
``n1 plus n2 is``, ``n1+n2=``; the words follow the operation: sum/difference/product/ratio,
plus/minus/times/divides), :data:`CODE_TEMPLATES` the same sums written as code (``assert a + b == ``, ...).
Prose templates end in a space because digit tokenizers (SmolLM2, Llama) put the space before a number in a token
of its own. Operations: ``+ - * /`` (``/``: exact division, only pairs ``b`` divides; the paper's) and ``//``.
:func:`dataset` builds every operand pair (or ``n`` sampled ones per template and operation) and checks that each
label is the single token that follows the prompt's tokens (an :class:`~codecircuits.errors.InputError`
otherwise). Only the first token of the answer is scored (for a tokenizer that splits digits, its first digit).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.batching import prompt_batches
from ..errors import InputError

#: name -> template with ``{a}``, ``{op}`` and ``{b}`` (and ``{noun}``, ``{word}``: the operation's name, :data:`WORDS`).
TEMPLATES = {
    "assert": "assert {a} {op} {b} == ",
    "comment": "x = {a} {op} {b}  # x == ",
    "print": "print({a} {op} {b})  # prints ",
    "bare": "{a}{op}{b}=",  # the paper's fourth template
    "prose": "The result of {a} {op} {b} is ",
    # the paper's templates (METHODS §3.3)
    "sum": "The {noun} of {a} and {b} is ",
    "qa": "Q: What is {a} {word} {b}? A: ",
    "words": "{a} {word} {b} is ",
}
#: the paper's four templates, plain text
PAPER_TEMPLATES = ("sum", "qa", "words", "bare")
#: arithmetic written as code
CODE_TEMPLATES = ("assert", "comment", "print")
OPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a // b,  # exact division: only pairs where b divides a
    "//": lambda a, b: a // b,
}
#: the paper's four operations
PAPER_OPS = ("+", "-", "*", "/")
#: op -> (noun, word) of the paper's templates ("The ratio of n1 and n2", "n1 divides n2": the paper's wording)
WORDS = {
    "+": ("sum", "plus"),
    "-": ("difference", "minus"),
    "*": ("product", "times"),
    "/": ("ratio", "divides"),
    "//": ("quotient", "floor-divided by"),
}


@dataclass(frozen=True)
class ArithmeticPrompt:
    text: str
    a: int
    b: int
    op: str
    template: str
    answer: int
    label: str  # the text of the answer's first token
    label_id: int


@dataclass(frozen=True)
class ArithmeticDataset:
    """Prompts with single-token labels; ``texts`` and ``label_ids`` feed any method directly."""

    prompts: tuple[ArithmeticPrompt, ...]

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self):
        return iter(self.prompts)

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]

    @property
    def label_ids(self) -> torch.Tensor:
        return torch.tensor([p.label_id for p in self.prompts], dtype=torch.long)

    @property
    def templates(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.template for p in self.prompts))

    def select(
        self,
        *,
        template: str | Iterable[str] | None = None,
        op: str | Iterable[str] | None = None,
        indices: Sequence[int] | None = None,
        limit: int | None = None,
        seed: int = 0,
        exclude: ArithmeticDataset | None = None,
    ) -> ArithmeticDataset:
        """A sub-dataset by template, operation, explicit indices, and/or a seeded random ``limit``; ``exclude``
        drops the prompts of another dataset (a held-out split disjoint from a selection split)."""
        ps = list(self.prompts) if indices is None else [self.prompts[i] for i in indices]
        if exclude is not None:
            drop = set(exclude.prompts)
            ps = [p for p in ps if p not in drop]
        if template is not None:
            keep = {template} if isinstance(template, str) else set(template)
            ps = [p for p in ps if p.template in keep]
        if op is not None:
            keep = {op} if isinstance(op, str) else set(op)
            ps = [p for p in ps if p.op in keep]
        if limit is not None and limit < len(ps):
            ps = [ps[i] for i in sorted(random.Random(seed).sample(range(len(ps)), limit))]
        if not ps:
            raise InputError(f"No prompts left after selecting template={template!r}, op={op!r}.")
        return ArithmeticDataset(tuple(ps))

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.op for p in self.prompts))

    def split(self, n: int, *, by: str = "op", seed: int = 0) -> tuple[ArithmeticDataset, ArithmeticDataset]:
        """Two disjoint datasets: up to ``n`` random prompts per value of ``by`` (``"op"``, ``"template"`` or
        ``"all"``) and every other prompt (e.g. a selection split and a held-out split)."""
        if by not in ("op", "template", "all"):
            raise InputError(f"by must be 'op', 'template' or 'all', got {by!r}.")
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(self.prompts):
            groups.setdefault("all" if by == "all" else getattr(p, by), []).append(i)
        rng = random.Random(seed)
        first = sorted(i for ix in groups.values() for i in rng.sample(ix, min(n, len(ix))))
        rest = sorted(set(range(len(self))) - set(first))
        if not first or not rest:
            raise InputError(f"Cannot split {len(self)} prompts into {n} per {by} and the rest: one side is empty.")
        return ArithmeticDataset(tuple(self.prompts[i] for i in first)), ArithmeticDataset(
            tuple(self.prompts[i] for i in rest)
        )

    def per_op(self, n: int, ops: Iterable[str] | None = None, *, seed: int = 0) -> ArithmeticDataset:
        """Up to ``n`` random prompts of each operation of ``ops`` (default: every operation; all templates mixed),
        in the dataset's order."""
        idx = []
        rng = random.Random(seed)
        for op in self.ops if ops is None else ops:
            rows = [i for i, p in enumerate(self.prompts) if p.op == op]
            idx += rng.sample(rows, min(n, len(rows)))
        if not idx:
            raise InputError(f"No prompts of operations {tuple(ops or ())} left to draw {n} of each from.")
        return self.select(indices=sorted(idx))

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame([p.__dict__ for p in self.prompts])


def one_length(model, ds: ArithmeticDataset, n: int, seed: int = 0, *, per_op: bool = False) -> ArithmeticDataset:
    """``n`` random prompts of ``ds`` (``per_op``: ``n`` of each operation) of one token length, the length with the
    most operations (then the most prompts), so that a sweep or an attribution runs as one batch; warns when that
    length holds fewer prompts than asked for."""
    by_len: dict[int, list[int]] = {}
    for i, t in enumerate(ds.texts):
        by_len.setdefault(int(model.to_tokens(t).shape[1]), []).append(i)
    best = max(by_len.values(), key=lambda ix: (len({ds.prompts[i].op for i in ix}), len(ix)))
    rng = random.Random(seed)
    groups = {"": best} if not per_op else {
        f" of operation {op!r}": [i for i in best if ds.prompts[i].op == op]
        for op in dict.fromkeys(ds.prompts[i].op for i in best)
    }
    idx = []
    for what, rows in groups.items():
        if len(rows) < n:
            warnings.warn(
                f"Only {len(rows)} prompts{what} share one token length, fewer than the {n} asked for; the selection "
                f"uses {len(rows)}. Draw more prompts (in the CNA study: raise n_acc, --n-acc) or ask for fewer.",
                stacklevel=2,
            )
        idx += rng.sample(rows, min(n, len(rows)))
    return ds.select(indices=sorted(idx))


def _label_id(model, prompt: str, answer: str) -> tuple[int, str]:
    p = model.to_tokens(prompt)[0].tolist()
    full = model.to_tokens(prompt + answer)[0].tolist()
    if len(full) <= len(p) or full[: len(p)] != p:
        raise InputError(
            f"The answer {answer!r} does not start with a new token after the prompt {prompt!r} for this tokenizer "
            "(the prompt's last token merges with the answer). Use a template whose end the tokenizer keeps apart "
            "from digits (e.g. ending in '== ' for a tokenizer with a separate space token, or in '=')."
        )
    return full[len(p)], model.tokenizer.convert_ids_to_tokens(full[len(p)])


def pairs(op: str, digits: int = 1, *, nonnegative: bool = True) -> list[tuple[int, int]]:
    """Every operand pair ``(a, b)`` of ``digits``-digit numbers that ``op`` admits: ``//`` and ``/`` skip
    ``b = 0``, ``/`` keeps only the pairs ``b`` divides, ``nonnegative`` drops pairs whose answer is negative."""
    if op not in OPS:
        raise InputError(f"Unknown operation {op!r}; choose from {', '.join(OPS)}.")
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits
    out = []
    for a in range(lo, hi):
        for b in range(lo, hi):
            if op in ("//", "/") and b == 0:
                continue
            if op == "/" and a % b:
                continue
            if nonnegative and OPS[op](a, b) < 0:
                continue
            out.append((a, b))
    return out


def dataset(
    model,
    templates: Sequence[str] = ("assert", "comment"),
    ops: Sequence[str] = ("+",),
    *,
    digits: int = 1,
    nonnegative: bool = True,
    n: int | None = None,
    seed: int = 0,
) -> ArithmeticDataset:
    """Every pair of ``digits``-digit operands (:func:`pairs`) for each template (a name in :data:`TEMPLATES` or a
    format string with ``{a}``, ``{b}`` and optionally ``{op}``, ``{noun}``, ``{word}``) and operation in ``ops``
    (``+ - * / //``). ``n``: a seeded random sample of at most ``n`` pairs per template and operation instead of
    all of them (two-digit operands give 8,100 pairs per operation). ``nonnegative`` drops pairs whose answer is
    negative."""
    if digits < 1 or digits > 3:
        raise InputError(f"digits must be 1, 2 or 3, got {digits}.")
    if not templates or not ops:
        raise InputError("Pass at least one template and one operation.")
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise InputError(f"Unknown operation(s) {bad}; choose from {', '.join(OPS)}.")
    if n is not None and n < 1:
        raise InputError(f"n must be at least 1 (pairs per template and operation), got {n}.")
    prompts = []
    for ti, t in enumerate(templates):
        fmt = TEMPLATES.get(t, t)
        if "{a}" not in fmt or "{b}" not in fmt:
            raise InputError(
                f"Template {t!r} is neither a name in {sorted(TEMPLATES)} nor a string with {{a}} and {{b}}."
            )
        for oi, op in enumerate(ops):
            ab = pairs(op, digits, nonnegative=nonnegative)
            if n is not None and n < len(ab):
                rng = random.Random(f"{seed}-{ti}-{oi}")
                ab = [ab[i] for i in sorted(rng.sample(range(len(ab)), n))]
            noun, word = WORDS[op]
            for a, b in ab:
                ans = OPS[op](a, b)
                text = fmt.format(a=a, b=b, op=op, noun=noun, word=word)
                lid, label = _label_id(model, text, str(ans))
                prompts.append(ArithmeticPrompt(text, a, b, op, t, ans, label, lid))
    return ArithmeticDataset(tuple(prompts))


@torch.no_grad()
def predictions(model, ds: ArithmeticDataset, *, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """The model's top-1 next token for every prompt (in the order of ``ds``); prompts are batched by length."""
    out = torch.zeros(len(ds), dtype=torch.long)
    for ix, toks in tqdm(prompt_batches(model, ds.texts, batch_size), desc="arithmetic", disable=not progress):
        out[ix] = model(toks)[:, -1].argmax(-1).cpu()
    return out


def accuracy(model, ds: ArithmeticDataset, *, by: str = "template", batch_size: int = 64) -> dict[str, float]:
    """First-token accuracy per template (``by="template"``), per operation (``"op"``) or overall (``"all"``)."""
    if by not in ("template", "op", "all"):
        raise InputError(f"by must be 'template', 'op' or 'all', got {by!r}.")
    ok = (predictions(model, ds, batch_size=batch_size) == ds.label_ids).tolist()
    groups: dict[str, list[bool]] = {}
    for p, c in zip(ds.prompts, ok):
        groups.setdefault("all" if by == "all" else getattr(p, by), []).append(c)
    return {k: sum(v) / len(v) for k, v in groups.items()}
