"""The closing-parenthesis task of Miller, Rai and Yao (2025): prompts, single-token labels, counterfactuals.

The paper's prompt for ``n`` nested calls and a number ``num`` is::

    "#print the string {num}\\nprint(" + "str(" * n + "{num}"

and the correct next token closes all ``n + 1`` open parentheses at once (``)``, ``))``, ``)))``, ``))))``).
Numbers are 100–999 sampled with a seed (``random.seed(20); random.sample(range(100, 1000), 500)``), and the
prompts of each ``n`` are split 70/30 into train and test (METHODS §2).

Three kinds of data live here:

- :func:`dataset` — the paper's prompts with labels checked against the tokenizer (the label must be exactly
  one token that follows the prompt's tokens, otherwise :class:`~codecircuits.errors.InputError`);
- :func:`pairs` — counterfactual prompts of the same token length whose answer is a different number of
  parens (``(`` replaced by ``((``, or a ``str(`` whose ``(`` is replaced by a character that opens nothing);
- :func:`mined` — positions in real held-out code just before a closing-paren token, grouped by how many
  parens the token closes and by the nesting depth there.

:func:`closed_dataset` adds prompts that *close* some calls before the answer
(``print(str(str({num}))+str({num}``: ``n_closed`` parens already closed, ``n_open`` still open), so the number
of open parens varies apart from the number of ``(`` tokens and the prompt's length (the counting heads' test).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..core.batching import bos_id
from ..errors import InputError

TEMPLATE = "#print the string {num}\nprint(" + "{calls}" + "{num}"
# a prompt that first closes `closed` str( calls, then opens `calls` more: "print(str({num})+str({num}"
CLOSED_TEMPLATE = "#print the string {num}\nprint(" + "{closed}" + "{num}" + "{closing}" + "+" + "{calls}" + "{num}"
CALL = "str("
SPLITS = ("train", "test")
TRAIN_FRACTION = 0.7
# characters tried, in order, in place of a "(" so that the prompt opens one paren fewer
NON_PAREN_REPLACEMENTS = (".", ",", "+", "_", "0")


def prompt_text(n: int, num: int) -> str:
    """The paper's prompt with ``n`` nested ``str(`` calls inside ``print(``."""
    if n < 0:
        raise InputError(f"n must be >= 0 (the number of nested str( calls), got {n}.")
    return TEMPLATE.format(num=num, calls=CALL * n)


def closed_prompt_text(n: int, n_closed: int, num: int) -> str:
    """A prompt that opens and closes ``n_closed`` nested ``str(`` calls, then opens ``n`` more inside ``print(``:
    ``n + 1`` parens are open at its end, ``n + 1 + n_closed`` were opened (``n_closed = 0``: ``print({num}+...``)."""
    if n < 0 or n_closed < 0:
        raise InputError(f"n and n_closed must be >= 0 (numbers of str( calls), got n={n}, n_closed={n_closed}.")
    return CLOSED_TEMPLATE.format(num=num, closed=CALL * n_closed, closing=")" * n_closed, calls=CALL * n)


def label_text(n_close: int) -> str:
    """The closing token for ``n_close`` parens: ``")" * n_close``."""
    return ")" * n_close


def _label_id(model, prompt: str, label: str) -> int:
    """The id of ``label`` as the single token that follows ``prompt``'s tokens, or a clear error."""
    p = model.to_tokens(prompt)[0].tolist()
    full = model.to_tokens(prompt + label)[0].tolist()
    if len(full) != len(p) + 1 or full[: len(p)] != p:
        pieces = model.tokenizer.convert_ids_to_tokens(full[len(p) - 1 :] if full[: len(p) - 1] == p[:-1] else full)
        raise InputError(
            f"The label {label!r} is not a single token after the prompt {prompt!r} for this tokenizer "
            f"(prompt+label ends in tokens {pieces}). The parenthesis task needs one token that closes all "
            f"{len(label)} parens: use fewer nested calls (n_values) or a tokenizer with that token."
        )
    return full[-1]


@dataclass(frozen=True)
class ParenPrompt:
    """One prompt: ``n_open`` parens are open before the answer, which closes them all with one token."""

    text: str
    number: int
    n_open: int  # parens open at the end of the prompt (= n nested calls + 1 for print)
    label: str
    label_id: int
    split: str
    n_closed: int = 0  # parens opened and closed before the open ones (closed_dataset); 0 for the paper's prompts

    @property
    def n_calls(self) -> int:
        return self.n_open - 1


@dataclass(frozen=True)
class ParensDataset:
    """Prompts of the paper's task; ``n_open`` (1–4) is the number of parens the answer must close."""

    prompts: tuple[ParenPrompt, ...]
    n_values: tuple[int, ...]
    seed: int
    n_numbers: int
    label_ids: dict[int, int] = field(default_factory=dict)  # n_open -> id of ")" * n_open

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[ParenPrompt]:
        return iter(self.prompts)

    @property
    def n_opens(self) -> tuple[int, ...]:
        return tuple(sorted({p.n_open for p in self.prompts}))

    @property
    def n_closeds(self) -> tuple[int, ...]:
        return tuple(sorted({p.n_closed for p in self.prompts}))

    def select(
        self,
        *,
        n_open: int | Iterable[int] | None = None,
        split: str | None = None,
        limit: int | None = None,
        n_closed: int | Iterable[int] | None = None,
    ):
        """A sub-dataset: some ``n_open`` (and ``n_closed``) values and/or one split, at most ``limit`` prompts per
        ``n_open`` (per ``(n_open, n_closed)`` cell when the dataset has closed calls)."""
        if split is not None and split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS} or None, got {split!r}.")
        keep = None if n_open is None else ({n_open} if isinstance(n_open, int) else set(n_open))
        keep_c = None if n_closed is None else ({n_closed} if isinstance(n_closed, int) else set(n_closed))
        counts: dict = {}
        out = []
        for p in self.prompts:
            if keep is not None and p.n_open not in keep:
                continue
            if keep_c is not None and p.n_closed not in keep_c:
                continue
            if split is not None and p.split != split:
                continue
            cell = p.n_open if p.n_closed == 0 and len(self.n_closeds) == 1 else (p.n_open, p.n_closed)
            if limit is not None and counts.get(cell, 0) >= limit:
                continue
            counts[cell] = counts.get(cell, 0) + 1
            out.append(p)
        if not out:
            raise InputError(f"No prompts left after selecting n_open={n_open!r}, split={split!r}.")
        return ParensDataset(tuple(out), self.n_values, self.seed, self.n_numbers, dict(self.label_ids))

    def one_length(self, model, limit: int | None = None) -> ParensDataset:
        """Per ``n_open``, the prompts of its most common token length (the first ``limit`` of them), so that
        :meth:`groups` gives one batch per count."""
        n_tok = {p: int(model.to_tokens(p.text).shape[1]) for p in self.prompts}
        out = []
        for k in self.n_opens:
            ps = [p for p in self.prompts if p.n_open == k]
            length = Counter(n_tok[p] for p in ps).most_common(1)[0][0]
            out += [p for p in ps if n_tok[p] == length][:limit]
        return ParensDataset(tuple(out), self.n_values, self.seed, self.n_numbers, dict(self.label_ids))

    def groups(self, model) -> dict[int, tuple[list[ParenPrompt], torch.Tensor]]:
        """``n_open -> (prompts, tokens [batch, pos])``; raises if prompts of one ``n_open`` differ in length."""
        from ..core.batching import to_tokens

        out = {}
        for k in self.n_opens:
            ps = [p for p in self.prompts if p.n_open == k]
            out[k] = (ps, to_tokens(model, [p.text for p in ps]))
        return out

    def by_length(self, model) -> list[tuple[list[ParenPrompt], torch.Tensor]]:
        """``(prompts, tokens [batch, pos])`` for each token length of the prompts (any mix of counts)."""
        from ..core.batching import to_tokens

        by: dict[int, list[ParenPrompt]] = {}
        for p in self.prompts:
            by.setdefault(int(model.to_tokens(p.text).shape[1]), []).append(p)
        return [(ps, to_tokens(model, [p.text for p in ps])) for _, ps in sorted(by.items())]

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(
            [
                dict(text=p.text, number=p.number, n_open=p.n_open, n_closed=p.n_closed, label=p.label, split=p.split)
                for p in self.prompts
            ]
        )


def dataset(
    model,
    n_values: Sequence[int] = (0, 1, 2, 3),
    n_numbers: int = 500,
    seed: int = 20,
    split: str | None = None,
) -> ParensDataset:
    """The paper's prompts for ``n`` nested ``str(`` calls (``n_values``), ``n_numbers`` numbers per ``n``.

    Numbers are ``random.Random(seed).sample(range(100, 1000), n_numbers)`` (the same numbers for every ``n``);
    the first 70% of them are ``"train"`` and the rest ``"test"``. The label of a prompt with ``n`` calls is
    ``")" * (n + 1)``, checked to be a single token following the prompt (an :class:`InputError` otherwise).
    """
    n_values = tuple(int(n) for n in n_values)
    if not n_values:
        raise InputError("n_values is empty: pass the numbers of nested calls to use, e.g. (0, 1, 2, 3).")
    if any(n < 0 for n in n_values):
        raise InputError(f"n_values must be >= 0, got {n_values}.")
    if not 1 <= n_numbers <= 900:
        raise InputError(f"n_numbers must be between 1 and 900 (numbers are 100-999), got {n_numbers}.")
    if split is not None and split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS} or None, got {split!r}.")
    numbers = random.Random(seed).sample(range(100, 1000), n_numbers)
    n_train = int(round(TRAIN_FRACTION * n_numbers))
    prompts, label_ids = [], {}
    for n in n_values:
        label = label_text(n + 1)
        for i, num in enumerate(numbers):
            s = "train" if i < n_train else "test"
            if split is not None and s != split:
                continue
            text = prompt_text(n, num)
            lid = _label_id(model, text, label)
            if label_ids.setdefault(n + 1, lid) != lid:
                raise InputError(f"The label {label!r} tokenizes differently after different prompts ({text!r}).")
            prompts.append(ParenPrompt(text, num, n + 1, label, lid, s))
    return ParensDataset(tuple(prompts), n_values, seed, n_numbers, label_ids)


def closed_dataset(
    model,
    n_values: Sequence[int] = (0, 1, 2, 3),
    closed_values: Sequence[int] = (0, 1, 2, 3),
    n_numbers: int = 500,
    seed: int = 20,
    split: str | None = None,
) -> ParensDataset:
    """Prompts that close ``n_closed`` (``closed_values``) ``str(`` calls before opening ``n`` (``n_values``) more
    (:func:`closed_prompt_text`), every pair of values for each number; numbers and splits as in :func:`dataset`.
    The label closes the ``n + 1`` open parens and is checked to be one token (an :class:`InputError` otherwise).
    """
    closed_values = tuple(int(c) for c in closed_values)
    if not closed_values or any(c < 0 for c in closed_values):
        raise InputError(f"closed_values must be numbers of closed str( calls >= 0, got {closed_values}.")
    base = dataset(model, n_values=n_values, n_numbers=n_numbers, seed=seed, split=split)
    prompts = []
    for p in base:
        for c in closed_values:
            text = closed_prompt_text(p.n_calls, c, p.number)
            lid = _label_id(model, text, p.label)
            if lid != base.label_ids[p.n_open]:
                raise InputError(f"The label {p.label!r} tokenizes differently after {text!r} than after {p.text!r}.")
            prompts.append(ParenPrompt(text, p.number, p.n_open, p.label, lid, p.split, c))
    return ParensDataset(tuple(prompts), base.n_values, seed, n_numbers, dict(base.label_ids))


def paren_token_ids(model, max_parens: int = 4) -> dict[int, int]:
    """``k -> id`` of the single token ``")" * k`` for ``k = 1..max_parens`` (an error if one is not one token)."""
    from ..core.inputs import single_token_id

    return {k: single_token_id(model, label_text(k)) for k in range(1, max_parens + 1)}


@torch.no_grad()
def predictions(model, ds: ParensDataset, *, batch_size: int = 64, progress: bool = False) -> dict[int, torch.Tensor]:
    """``n_open -> argmax token id`` at the last position of each prompt (in the order of ``ds``)."""
    out = {}
    groups = ds.groups(model)
    bar = tqdm(total=len(ds), disable=not progress, desc="parens accuracy")
    for k, (_, toks) in groups.items():
        preds = []
        for i in range(0, toks.shape[0], batch_size):
            logits = model(toks[i : i + batch_size])
            preds.append(logits[:, -1].argmax(-1).cpu())
            bar.update(min(batch_size, toks.shape[0] - i))
        out[k] = torch.cat(preds)
    bar.close()
    return out


def accuracy(model, ds: ParensDataset, *, batch_size: int = 64, progress: bool = False) -> dict[int, float]:
    """Top-1 accuracy per number of closing parens (``n_open``), as ``{n_open: accuracy}``."""
    preds = predictions(model, ds, batch_size=batch_size, progress=progress)
    groups = ds.groups(model)
    return {k: float((preds[k] == torch.tensor([p.label_id for p in groups[k][0]])).float().mean()) for k in preds}


# ----------------------------------------------------------------------------------------------------------------
# Counterfactual pairs


@dataclass(frozen=True)
class ParenPair:
    """A clean prompt and a same-length counterfactual whose correct answer closes a different number of parens."""

    clean: str
    corrupted: str
    n_open: int
    corrupted_n_open: int
    clean_id: int  # id of ")" * n_open
    corrupted_id: int  # id of ")" * corrupted_n_open
    kind: str  # "extra" (a "(" became "((") or "fewer" (a "(" became a character that opens nothing)
    position: int  # which "(" of the prompt (0 = the one after print) was changed


@dataclass(frozen=True)
class ParenPairs:
    """Counterfactual pairs; every clean/corrupted pair has the same token length (checked)."""

    pairs: tuple[ParenPair, ...]
    strategy: str

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[ParenPair]:
        return iter(self.pairs)

    @property
    def n_opens(self) -> tuple[int, ...]:
        return tuple(sorted({p.n_open for p in self.pairs}))

    def select(self, *, n_open: int | Iterable[int] | None = None, limit: int | None = None) -> ParenPairs:
        keep = None if n_open is None else ({n_open} if isinstance(n_open, int) else set(n_open))
        counts: dict[int, int] = {}
        out = []
        for p in self.pairs:
            if keep is not None and p.n_open not in keep:
                continue
            if limit is not None and counts.get(p.n_open, 0) >= limit:
                continue
            counts[p.n_open] = counts.get(p.n_open, 0) + 1
            out.append(p)
        if not out:
            raise InputError(f"No pairs left after selecting n_open={n_open!r}.")
        return ParenPairs(tuple(out), self.strategy)

    def one_length(self, model, limit: int | None = None) -> ParenPairs:
        """The pairs whose clean prompt has the most common token length (the first ``limit`` of them), so that
        :meth:`tokens` gives one batch."""
        n_tok = [int(model.to_tokens(p.clean).shape[1]) for p in self.pairs]
        length = Counter(n_tok).most_common(1)[0][0]
        return ParenPairs(tuple(p for p, n in zip(self.pairs, n_tok) if n == length)[:limit], self.strategy)

    def tokens(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean and corrupted tokens ``[batch, pos]`` (all pairs must share one length: select one ``n_open``)."""
        from ..core.batching import paired_tokens

        return paired_tokens(model, [p.clean for p in self.pairs], [p.corrupted for p in self.pairs])

    def answer_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(clean_ids, corrupted_ids)`` ``[batch]``: the correct token of each clean and corrupted prompt."""
        return (torch.tensor([p.clean_id for p in self.pairs]), torch.tensor([p.corrupted_id for p in self.pairs]))

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame([p.__dict__ for p in self.pairs])


def _paren_offsets(text: str) -> list[int]:
    return [i for i, c in enumerate(text) if c == "("]


def _same_length_or_error(model, clean: str, corrupted: str) -> None:
    a = model.to_tokens(clean).shape[1]
    b = model.to_tokens(corrupted).shape[1]
    if a != b:
        raise InputError(
            f"The counterfactual {corrupted!r} has {b} tokens but its clean prompt {clean!r} has {a} "
            f"({b - a:+d}); patching needs equal token lengths. Choose another strategy or replacement."
        )


def counterfactual(model, prompt: ParenPrompt, kind: str, position: int, replacement: str | None = None) -> ParenPair:
    """One counterfactual of ``prompt``: change its ``position``-th ``(`` (0 = the one after ``print``).

    ``kind="extra"`` turns that ``(`` into ``((`` (one more paren to close); ``kind="fewer"`` replaces it with
    ``replacement`` (a character that opens nothing; not allowed at position 0, which would leave no paren
    open). Raises :class:`InputError` if the counterfactual's token length differs from the prompt's or its
    answer is not a single token.
    """
    offs = _paren_offsets(prompt.text)
    if not 0 <= position < len(offs):
        raise InputError(f"position {position} out of range: the prompt {prompt.text!r} has {len(offs)} '('.")
    i = offs[position]
    if kind == "extra":
        text, n_new = prompt.text[:i] + "((" + prompt.text[i + 1 :], prompt.n_open + 1
    elif kind == "fewer":
        if position == 0 or prompt.n_open < 2:
            raise InputError("kind='fewer' needs a str( call to neutralise (position >= 1, at least 2 parens open).")
        if replacement is None or "(" in replacement or ")" in replacement:
            raise InputError(f"kind='fewer' needs a replacement character that is not a paren, got {replacement!r}.")
        text, n_new = prompt.text[:i] + replacement + prompt.text[i + 1 :], prompt.n_open - 1
    else:
        raise InputError(f"kind must be 'extra' or 'fewer', got {kind!r}.")
    _same_length_or_error(model, prompt.text, text)
    new_id = _label_id(model, text, label_text(n_new))
    return ParenPair(prompt.text, text, prompt.n_open, n_new, prompt.label_id, new_id, kind, position)


def _try(model, prompt, kind, position, replacement=None):
    try:
        return counterfactual(model, prompt, kind, position, replacement)
    except InputError:
        return None


def pairs(
    model,
    ds: ParensDataset | None = None,
    *,
    strategy: str = "auto",
    on_missing: str = "raise",
    **dataset_kwargs,
) -> ParenPairs:
    """A same-length counterfactual for every prompt of ``ds`` (built with :func:`dataset` if not given).

    ``strategy``: ``"extra"`` inserts one ``(`` (as the paper does) by turning a ``(`` into the single token
    ``((``; ``"fewer"`` neutralises one ``str(`` by replacing its ``(`` with a character that keeps the token
    length (tried in the order of ``NON_PAREN_REPLACEMENTS``); ``"auto"`` tries ``"extra"`` first and falls back
    to ``"fewer"`` (e.g. for 4 open parens, whose 5-paren answer is rarely one token). The changed ``(`` cycles
    over the prompt's parens from one prompt to the next. A prompt with no valid counterfactual raises an
    :class:`InputError` (``on_missing="raise"``) or is left out (``on_missing="skip"``).
    """
    if strategy not in ("auto", "extra", "fewer"):
        raise InputError(f"strategy must be 'auto', 'extra' or 'fewer', got {strategy!r}.")
    if on_missing not in ("raise", "skip"):
        raise InputError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}.")
    if ds is None:
        ds = dataset(model, **dataset_kwargs)
    kinds = ("extra", "fewer") if strategy == "auto" else (strategy,)
    out = []
    counter: dict[int, int] = {}
    for p in ds:
        n_paren = len(_paren_offsets(p.text))
        j = counter.get(p.n_open, 0)
        counter[p.n_open] = j + 1
        found = None
        for kind in kinds:
            positions = list(range(n_paren)) if kind == "extra" else list(range(1, n_paren))
            if not positions:
                continue
            start = j % len(positions)
            for pos in positions[start:] + positions[:start]:
                reps = (None,) if kind == "extra" else NON_PAREN_REPLACEMENTS
                for r in reps:
                    found = _try(model, p, kind, pos, r)
                    if found is not None:
                        break
                if found is not None:
                    break
            if found is not None:
                break
        if found is None:
            if on_missing == "raise":
                raise InputError(
                    f"No same-length counterfactual with a single-token answer for {p.text!r} "
                    f"(strategy {strategy!r}): '((' is not one token or the neighbouring answer "
                    f"{label_text(p.n_open + 1)!r}/{label_text(p.n_open - 1)!r} is not one token. "
                    "Pass on_missing='skip' to leave such prompts out."
                )
            continue
        out.append(found)
    if not out:
        raise InputError(f"No counterfactual pairs could be built (strategy {strategy!r}) for this tokenizer.")
    return ParenPairs(tuple(out), strategy)


# ----------------------------------------------------------------------------------------------------------------
# Prompts mined from real code


@dataclass(frozen=True)
class MinedPrompts:
    """Windows of real code that end just before a closing-paren token.

    ``tokens[i]`` is ``[BOS +] window`` tokens of code; the next token in the file is ``")" * n_close[i]``
    (``label_ids[i]``), and ``depth[i]`` parens were open at that point of the file (counted over the file's
    tokens; strings and comments are not excluded). ``sources[i]`` names the file.
    """

    tokens: torch.Tensor
    n_close: torch.Tensor
    depth: torch.Tensor
    label_ids: torch.Tensor
    sources: tuple[str, ...]
    window: int
    corpus: str
    candidates: dict[int, int]  # n_close -> how many positions the corpus had before sampling

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def select(self, n_close: int) -> MinedPrompts:
        sel = self.n_close == n_close
        if not sel.any():
            raise InputError(f"No mined prompts close {n_close} parens.")
        idx = sel.nonzero().flatten().tolist()
        return MinedPrompts(self.tokens[sel], self.n_close[sel], self.depth[sel], self.label_ids[sel],
                            tuple(self.sources[i] for i in idx), self.window, self.corpus, dict(self.candidates))

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(
            dict(n_close=self.n_close.tolist(), depth=self.depth.tolist(), label_id=self.label_ids.tolist(),
                 source=list(self.sources))
        )


def mined(
    model,
    corpus=None,
    *,
    counts: Sequence[int] = (1, 2, 3, 4),
    window: int = 32,
    max_per_count: int = 50,
    seed: int = 0,
    max_chars: int | None = None,
    progress: bool = False,
) -> MinedPrompts:
    """Positions of real held-out code just before a token that is exactly ``")" * k`` (``k`` in ``counts``).

    ``corpus``: a :class:`codecircuits.corpus.Corpus` (default: the standard library's ``"test"`` split).
    Each prompt is the ``window`` tokens before that position (BOS prepended as the model does), so prompts
    batch together. At most ``max_per_count`` positions per ``k`` are kept, sampled with ``seed``; only the
    first ``max_chars`` characters of the corpus are scanned when given (files in corpus order). Counts whose
    paren token is not a single token for this tokenizer are an :class:`InputError`.
    """
    from ..corpus import stdlib

    if window < 1:
        raise InputError(f"window must be >= 1 token, got {window}.")
    if max_per_count < 1:
        raise InputError(f"max_per_count must be >= 1, got {max_per_count}.")
    corpus = stdlib("test") if corpus is None else corpus
    ids = paren_token_ids(model, max(counts))
    wanted = {ids[k]: k for k in counts}
    vocab_parens: dict[int, tuple[int, int]] = {}  # token id -> ("(" count, ")" count)
    found: dict[int, list[tuple[list[int], int, str]]] = {k: [] for k in counts}
    seen = 0
    for f in tqdm(list(corpus), disable=not progress, desc="mining parens"):
        if max_chars is not None and seen >= max_chars:
            break
        seen += len(f.text)
        toks = model.to_tokens(f.text, prepend_bos=False)[0].tolist()
        depth = 0
        for i, t in enumerate(toks):
            if t not in vocab_parens:
                s = model.tokenizer.decode([t])
                vocab_parens[t] = (s.count("("), s.count(")"))
            if t in wanted and i >= window:
                found[wanted[t]].append((toks[i - window : i], depth, f.path))
            o, c = vocab_parens[t]
            depth = max(0, depth + o - c)
    rng = random.Random(seed)
    rows, n_close, depth_l, labels, sources = [], [], [], [], []
    for k in counts:
        cands = found[k]
        pick = rng.sample(range(len(cands)), min(max_per_count, len(cands)))
        for j in sorted(pick):
            w, d, src = cands[j]
            rows.append(w)
            n_close.append(k)
            depth_l.append(d)
            labels.append(ids[k])
            sources.append(src)
    if not rows:
        raise InputError(f"The corpus {corpus.name!r} has no position before a closing-paren token {counts}.")
    toks = torch.tensor(rows)
    bos = bos_id(model)
    if bos is not None:
        toks = torch.cat([torch.full((toks.shape[0], 1), bos), toks], 1)
    return MinedPrompts(toks.to(model.cfg.device), torch.tensor(n_close), torch.tensor(depth_l), torch.tensor(labels),
                        tuple(sources), window, corpus.name, {k: len(found[k]) for k in counts})
