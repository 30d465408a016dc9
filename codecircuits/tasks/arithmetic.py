"""Arithmetic written as code: prompts whose next token is the first token of ``a op b`` (Yu & Ananiadou's
arithmetic-heads data, METHODS §3.3, moved into code the model has seen).

The paper's templates are prose (``The sum of n1 and n2 is``, ``n1+n2=``); a small code model is competent on
code-shaped ones instead. :data:`TEMPLATES` holds both kinds; :func:`dataset` builds every operand pair for the
chosen templates and operations, and checks that each label is the single token that follows the prompt's
tokens (an :class:`~codecircuits.errors.InputError` otherwise). Only the first token of the answer is scored
(for a tokenizer that splits digits, the answer's first digit).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.batching import prompt_batches
from ..errors import InputError

#: name -> template with ``{a}``, ``{op}`` and ``{b}``.
TEMPLATES = {
    "assert": "assert {a} {op} {b} == ",
    "comment": "x = {a} {op} {b}  # x == ",
    "print": "print({a} {op} {b})  # prints ",
    "bare": "{a}{op}{b}=",  # the paper's fourth template
    "prose": "The result of {a} {op} {b} is ",
}
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "//": lambda a, b: a // b}


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
    ) -> ArithmeticDataset:
        """A sub-dataset by template, operation, explicit indices, and/or a seeded random ``limit``."""
        ps = list(self.prompts) if indices is None else [self.prompts[i] for i in indices]
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

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame([p.__dict__ for p in self.prompts])


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


def dataset(
    model,
    templates: Sequence[str] = ("assert", "comment"),
    ops: Sequence[str] = ("+",),
    *,
    digits: int = 1,
    nonnegative: bool = True,
) -> ArithmeticDataset:
    """Every pair of ``digits``-digit operands for each template (a name in :data:`TEMPLATES` or a format string
    with ``{a}``, ``{op}``, ``{b}``) and operation in ``ops`` (``+ - * //``). ``nonnegative`` drops pairs whose
    answer is negative; ``//`` skips ``b = 0``."""
    if digits < 1 or digits > 3:
        raise InputError(f"digits must be 1, 2 or 3, got {digits}.")
    if not templates or not ops:
        raise InputError("Pass at least one template and one operation.")
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise InputError(f"Unknown operation(s) {bad}; choose from {', '.join(OPS)}.")
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits
    prompts = []
    for t in templates:
        fmt = TEMPLATES.get(t, t)
        if "{a}" not in fmt or "{b}" not in fmt:
            raise InputError(
                f"Template {t!r} is neither a name in {sorted(TEMPLATES)} nor a string with {{a}} and {{b}}."
            )
        for op in ops:
            for a in range(lo, hi):
                for b in range(lo, hi):
                    if op == "//" and b == 0:
                        continue
                    ans = OPS[op](a, b)
                    if nonnegative and ans < 0:
                        continue
                    text = fmt.format(a=a, b=b, op=op)
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
