"""Counterfactual (base, source) prompt pairs of a feature, right-padded, and what every subspace method does with
them: check them, batch them, read the answer logits at each base prompt's last token."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from ..core.inputs import check_hook_names, single_token_id
from ..core.runner import resid_at, run_from, run_with_hooks
from ..core.sites import UNEMBED_IN, layer_of_hook
from ..errors import InputError
from ..tasks import parens


@dataclass(frozen=True)
class PatchPairs:
    """Counterfactual (base, source) prompt pairs for a feature with a few values, each read at its last token.

    Prompts are right-padded to a common length; since the models are causal, padding after a prompt's last
    token changes nothing at that token, so prompts of different lengths batch together and base and source
    need not have the same length (only the last position is patched).

    Attributes:
        base_tokens, source_tokens: ``[pair, pos]`` token ids, right-padded.
        base_positions, source_positions: ``[pair]`` index of each prompt's last real token.
        base_values, source_values: ``[pair]`` the feature's value (an index into ``answer_ids``) per prompt.
        answer_ids: ``[value]`` the token the model should predict for each feature value.
        value_names: the answer strings, one per value.
        groups: a group name per pair (e.g. the template), used to split train from held-out pairs.
        base_prompts, source_prompts: the prompt texts.
        axes: axis names of the per-pair tensors.
    """

    base_tokens: torch.Tensor
    source_tokens: torch.Tensor
    base_positions: torch.Tensor
    source_positions: torch.Tensor
    base_values: torch.Tensor
    source_values: torch.Tensor
    answer_ids: torch.Tensor
    value_names: tuple[str, ...]
    groups: tuple[str, ...]
    base_prompts: tuple[str, ...]
    source_prompts: tuple[str, ...]
    axes: tuple[str, ...] = ("pair", "pos")

    @classmethod
    def from_prompts(
        cls,
        model,
        base: Sequence[str],
        source: Sequence[str],
        base_values: Sequence[int],
        source_values: Sequence[int],
        answers: Sequence[str],
        groups: Sequence[str] | None = None,
    ) -> PatchPairs:
        """Tokenize pairs; ``answers[k]`` is the (single-token) answer for feature value ``k``."""
        base, source = list(base), list(source)
        n = len(base)
        if n == 0:
            raise InputError("No pairs given: pass at least one (base, source) prompt pair.")
        if not (len(source) == len(base_values) == len(source_values) == n):
            raise InputError(
                f"Got {n} base prompts, {len(source)} source prompts, {len(base_values)} base values and "
                f"{len(source_values)} source values: pass one of each per pair."
            )
        answers = list(answers)
        if len(answers) < 2:
            raise InputError("A feature needs at least two values: pass one answer token per value.")
        answer_ids = [single_token_id(model, a) for a in answers]
        if len(set(answer_ids)) != len(answer_ids):
            raise InputError(f"The answers {answers} are not distinct tokens.")
        bv = torch.as_tensor(list(base_values), dtype=torch.long)
        sv = torch.as_tensor(list(source_values), dtype=torch.long)
        for name, v in (("base_values", bv), ("source_values", sv)):
            if ((v < 0) | (v >= len(answers))).any():
                raise InputError(f"{name} must be indices into the {len(answers)} answers, got {v.tolist()[:10]}.")
        same = (bv == sv).nonzero().flatten().tolist()
        if same:
            raise InputError(
                f"Pairs {same[:10]} have the same feature value in base and source; an interchange needs "
                "pairs whose values differ (their logit difference would be zero)."
            )
        groups = tuple(groups) if groups is not None else ("all",) * n
        if len(groups) != n:
            raise InputError(f"{len(groups)} group names for {n} pairs: pass one per pair.")
        bt, bp = _pad(model, base)
        st, sp = _pad(model, source)
        return cls(bt, st, bp, sp, bv, sv, torch.tensor(answer_ids), tuple(answers), groups, tuple(base), tuple(source))

    def __len__(self) -> int:
        return len(self.base_values)

    def subset(self, index) -> PatchPairs:
        """The pairs at ``index`` (a boolean mask, a list of indices or a slice)."""
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        if index.numel() == 0:
            raise InputError("The selection holds no pairs.")
        ix = index.tolist()
        return replace(self, base_tokens=self.base_tokens[index], source_tokens=self.source_tokens[index],
                       base_positions=self.base_positions[index], source_positions=self.source_positions[index],
                       base_values=self.base_values[index], source_values=self.source_values[index],
                       groups=tuple(self.groups[i] for i in ix), base_prompts=tuple(self.base_prompts[i] for i in ix),
                       source_prompts=tuple(self.source_prompts[i] for i in ix))

    def in_groups(self, names: Sequence[str]) -> PatchPairs:
        """The pairs whose group is one of ``names``."""
        names = set(names)
        return self.subset([i for i, g in enumerate(self.groups) if g in names])

    def swapped(self) -> PatchPairs:
        """Every pair with base and source exchanged."""
        return replace(self, base_tokens=self.source_tokens, source_tokens=self.base_tokens,
                       base_positions=self.source_positions, source_positions=self.base_positions,
                       base_values=self.source_values, source_values=self.base_values, base_prompts=self.source_prompts,
                       source_prompts=self.base_prompts)

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "group": self.groups,
                "base": self.base_prompts,
                "source": self.source_prompts,
                "base_answer": [self.value_names[v] for v in self.base_values.tolist()],
                "source_answer": [self.value_names[v] for v in self.source_values.tolist()],
            }
        )


def _pad(model, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [model.to_tokens(p)[0].cpu() for p in prompts]
    width = max(len(r) for r in rows)
    pad = getattr(model.tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, torch.tensor([len(r) - 1 for r in rows])


@torch.no_grad()
def answers_correct(model, prompts: Sequence[str], answer_id: int, batch_size: int = 64) -> list[bool]:
    """Whether the model's top-1 token after each prompt is ``answer_id`` (prompts of one token length run as one
    batch, and only the last position is unembedded)."""
    by_len: dict[int, list[int]] = {}
    toks = [model.to_tokens(p)[0] for p in prompts]
    for i, t in enumerate(toks):
        by_len.setdefault(len(t), []).append(i)
    ok = [False] * len(prompts)
    for _, ix in by_len.items():
        for s in range(0, len(ix), batch_size):
            part = ix[s : s + batch_size]
            last = run_with_hooks(model, torch.stack([toks[i] for i in part]), [(UNEMBED_IN, _last_only)])[:, -1]
            for i, p in zip(part, last.argmax(-1).tolist()):
                ok[i] = p == answer_id
    return ok


def _last_only(act, hook=None):
    return act[:, -1:]


def check_pairs(model, pairs: PatchPairs, hook_name: str) -> None:
    """Raise unless ``pairs`` is a :class:`PatchPairs` and ``hook_name`` a hook of the model."""
    if not isinstance(pairs, PatchPairs):
        raise InputError(f"Expected PatchPairs (see PatchPairs.from_prompts), got {type(pairs).__name__}.")
    check_hook_names(model, hook_name)


def batch_slices(n: int, size: int):
    """Consecutive slices of at most ``size`` of ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def start_layer(model, hook_name: str) -> int | None:
    """The layer a run that patches ``hook_name`` can start from (its block; ``None``: run from the tokens)."""
    layer = layer_of_hook(hook_name)
    return layer if layer is not None and 0 < layer < model.cfg.n_layers else None


def base_residual(model, tokens: Int[torch.Tensor, "batch pos"], layer: int | None) -> torch.Tensor | None:
    """``blocks.{layer}.hook_resid_pre`` of ``tokens`` (computed once, then every patch runs from ``layer``)."""
    return None if layer is None else resid_at(model, tokens, layer)


def last_logits(
    model,
    tokens: Int[torch.Tensor, "batch pos"],
    positions: Int[torch.Tensor, " batch"],
    fwd_hooks: Sequence = (),
    *,
    layer: int | None = None,
    resid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float logits ``[batch, vocab]`` at each prompt's ``positions``, with ``fwd_hooks`` installed.

    With ``resid`` (``blocks.{layer}.hook_resid_pre`` of ``tokens``, :func:`base_residual`) only the layers from
    ``layer`` on run (:func:`codecircuits.core.runner.run_from`) and only the positions read are unembedded; the
    hooks must then sit in those layers. Gradients flow unless the caller turns them off.
    """
    if resid is None:
        logits = run_with_hooks(model, tokens.to(model.cfg.device), fwd_hooks)
        rows = torch.arange(len(tokens), device=logits.device)
        return logits[rows, positions.to(logits.device)].float()
    read = sorted(set(int(p) for p in positions.tolist()))
    col = torch.as_tensor([read.index(int(p)) for p in positions.tolist()])
    logits = run_from(model, resid.to(model.cfg.device), layer, fwd_hooks=fwd_hooks, read_positions=read)
    rows = torch.arange(len(positions), device=logits.device)
    return logits[rows, col.to(logits.device)].float()


def answer_logits(
    model,
    tokens: Int[torch.Tensor, "batch pos"],
    positions: Int[torch.Tensor, " batch"],
    answer_ids: Int[torch.Tensor, " value"],
    fwd_hooks: Sequence = (),
    *,
    layer: int | None = None,
    resid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float logits ``[batch, value]`` of the answer tokens at each prompt's ``positions``, with ``fwd_hooks``
    (``layer`` / ``resid``: run from that layer, as in :func:`last_logits`)."""
    logits = last_logits(model, tokens, positions, fwd_hooks, layer=layer, resid=resid)
    return logits[:, answer_ids.to(logits.device)]


__all__ = [
    "PatchPairs",
    "answer_logits",
    "answers_correct",
    "base_residual",
    "batch_slices",
    "check_pairs",
    "last_logits",
    "start_layer",
]


#: the closing-paren prompt's templates (``{calls}``: the ``str(`` calls): the paper's, and its comment line reworded
#: (held-out templates); the code line is the paper's
PAREN_TEMPLATES = {
    "paper": "#print the string {num}\nprint({calls}{num}",
    "number": "#print the number {num}\nprint({calls}{num}",
    "show": "# show the string {num}\nprint({calls}{num}",
    "output": "# output the string {num}\nprint({calls}{num}",
    "value": "#print the value {num}\nprint({calls}{num}",
}


def paren_prompt(template: str, n_open: int, num: int) -> str:
    """``template`` with ``n_open`` open parens in all (``print(`` and ``n_open - 1`` ``str(`` calls) before
    ``num``."""
    return template.format(num=num, calls=parens.CALL * (n_open - 1))


def paren_pairs(model, values: tuple[int, int] = (2, 3), *, train_pairs: int = 32, test_pairs: int = 16,
                template_pairs: int = 6, templates: dict[str, str] | None = None,
                train_templates: Sequence[str] = ("paper",), n_numbers: int = 300, seed: int = 0,
                only_correct: bool = True, progress: bool = False) -> tuple[PatchPairs, PatchPairs, dict]:
    """Counterfactual pairs of the number of open parens (``values``: two counts) on the closing-paren prompts:
    ``(train, test, accuracy)``. ``train`` holds ``train_pairs`` pairs of the ``train_templates`` with train
    numbers; ``test`` their ``test_pairs`` pairs with held-out numbers and ``template_pairs`` of each other template
    (:data:`PAREN_TEMPLATES` by default), its ``groups`` naming each pair's template; ``accuracy`` is the clean
    model's, per template and value. A pair's base and source alternate between the two values; ``only_correct``
    keeps the prompts the model answers right."""
    templates = PAREN_TEMPLATES if templates is None else templates
    values = tuple(values)
    if len(values) != 2 or values[0] == values[1] or min(values) < 1:
        raise InputError(f"values must be two different numbers of open parens (>= 1), got {values}.")
    answers = [parens.label_text(v) for v in values]
    answer_ids = [single_token_id(model, a) for a in answers]
    numbers = random.Random(20).sample(range(100, 1000), n_numbers)
    n_train = int(round(parens.TRAIN_FRACTION * len(numbers)))
    split_numbers = {"train": numbers[:n_train], "test": numbers[n_train:]}
    rng = random.Random(seed)
    accuracy: dict = {}
    pools: dict = {}  # (template, split) -> value index -> [prompts the model gets right]
    for name, template in tqdm(templates.items(), desc="clean prompts", disable=not progress, leave=False):
        accuracy[name] = {}
        for split, nums in split_numbers.items():
            if name not in train_templates and split == "train":
                continue
            pools[(name, split)] = {}
            # enough numbers for distinct prompts in each pair, not the whole split
            want = train_pairs if split == "train" else (test_pairs if name in train_templates else template_pairs)
            nums = nums[: max(8, want + 4)]
            for k, v in enumerate(values):
                prompts = [paren_prompt(template, v, n) for n in nums]
                ok = answers_correct(model, prompts, answer_ids[k])
                pools[(name, split)][k] = [p for p, good in zip(prompts, ok) if good or not only_correct]
                accuracy[name].setdefault(v, []).extend(ok)
    accuracy = {t: {v: float(np.mean(ok)) for v, ok in d.items()} for t, d in accuracy.items()}

    def make(template: str, split: str, n: int) -> tuple[list, list, list, list, list]:
        pool = pools[(template, split)]
        base, source, bv, sv = [], [], [], []
        for i in range(n):
            a = i % 2  # alternate the direction of the interchange
            b = 1 - a
            if not pool[a] or not pool[b]:
                break
            base.append(rng.choice(pool[a]))
            source.append(rng.choice(pool[b]))
            bv.append(a)
            sv.append(b)
        return base, source, bv, sv, [template] * len(base)

    def pairs_of(parts) -> PatchPairs:
        cols = [sum((p[i] for p in parts), []) for i in range(5)]
        if not cols[0]:
            raise InputError(
                f"The model answers too few prompts correctly to build pairs for values {values}; accuracy per "
                f"template: {accuracy}."
            )
        return PatchPairs.from_prompts(model, cols[0], cols[1], cols[2], cols[3], answers, groups=cols[4])

    train = pairs_of([make(t, "train", train_pairs) for t in train_templates])
    test_parts = [make(t, "test", test_pairs) for t in train_templates]
    test_parts += [make(t, "test", template_pairs) for t in templates if t not in train_templates]
    test = pairs_of([p for p in test_parts if p[0]])
    return train, test, accuracy
