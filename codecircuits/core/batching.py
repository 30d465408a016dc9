"""Batches of token ids: prompts to tokens, paired clean/corrupted tokens, prompts grouped by length, the pad and
BOS ids of a model, the one parser of memory budgets, and the progress bar of every long loop."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes of activations per batched forward


def parse_budget(budget, *, default: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Bytes from ``budget``: an int or float of bytes, a string like ``"2GB"``, ``"500MB"`` or ``"64KiB"``, or
    ``None`` for ``default``."""
    if budget is None:
        return int(default)
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        if budget <= 0:
            raise InputError(f"memory_budget must be positive, got {budget}.")
        return int(budget)
    s = str(budget).strip().upper().replace("IB", "B")
    for unit, mult in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024), ("B", 1)):
        if s.endswith(unit):
            try:
                value = float(s[: -len(unit)])
            except ValueError:
                break
            if value <= 0:
                raise InputError(f"memory_budget must be positive, got {budget!r}.")
            return int(value * mult)
    raise InputError(f"Cannot read memory_budget={budget!r}: give bytes (an int) or a string like '2GB' or '500MB'.")


def megabytes(mb: float) -> int:
    """Bytes of a budget given in MiB, through :func:`parse_budget`."""
    return parse_budget(f"{float(mb)}MB")


def budget_from_megabytes(memory_budget, memory_mb: float | None, where: str):
    """``memory_budget``, or the budget of the deprecated ``memory_mb`` (MiB) when one is given, with a warning
    that names the one name a memory limit has: ``memory_budget`` (bytes, or ``"256MB"``)."""
    if memory_mb is None:
        return memory_budget
    import warnings

    warnings.warn(
        f"{where}(memory_mb=...) is deprecated: pass memory_budget (bytes or a string like '{float(memory_mb):g}MB'), "
        "the one name of a memory limit across codecircuits.",
        DeprecationWarning,
        stacklevel=3,
    )
    return megabytes(memory_mb)


def pad_id(model) -> int:
    """The id to pad token rows with: the tokenizer's pad token, else its EOS, else its BOS, else 0."""
    tok = model.tokenizer
    for t in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id):
        if t is not None:
            return int(t)
    return 0


def progress_bar(total: int, desc: str, enabled: bool = True):
    """The progress bar of a long loop (tqdm; nothing is drawn when ``enabled`` is false)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def to_tokens(model, prompts: str | Sequence[str] | torch.Tensor, *, prepend_bos: bool | None = None) -> torch.Tensor:
    """Tokens ``[batch, pos]`` on the model's device; every prompt must have the same token length."""
    if isinstance(prompts, torch.Tensor):
        toks = prompts if prompts.dim() == 2 else prompts.unsqueeze(0)
        return toks.to(model.cfg.device)
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise InputError("No prompts given: pass at least one prompt.")
    rows = [model.to_tokens(p, prepend_bos=prepend_bos)[0] for p in prompts]
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        by_len: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            by_len.setdefault(len(r), []).append(i)
        detail = "; ".join(
            f"{n} tokens: prompts {ix[:5]}{'...' if len(ix) > 5 else ''}" for n, ix in sorted(by_len.items())
        )
        raise InputError(
            f"Prompts have different token lengths ({detail}). Batched methods need equal lengths: "
            "rephrase the prompts so they tokenize to the same length."
        )
    return torch.stack(rows).to(model.cfg.device)


def paired_tokens(model, clean, corrupted, *, prepend_bos: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and corrupted tokens of the same shape, or an error naming the pairs that differ and by how much."""
    c = to_tokens(model, clean, prepend_bos=prepend_bos)
    k = to_tokens(model, corrupted, prepend_bos=prepend_bos)
    if c.shape[0] != k.shape[0]:
        raise InputError(
            f"{c.shape[0]} clean prompts but {k.shape[0]} corrupted prompts: pass one corrupted per clean."
        )
    if c.shape[1] != k.shape[1]:
        raise InputError(
            f"Clean prompts are {c.shape[1]} tokens long but corrupted prompts are {k.shape[1]} "
            f"(differ by {k.shape[1] - c.shape[1]:+d}). Patching needs equal lengths: make each corrupted "
            "prompt tokenize to the same number of tokens as its clean prompt."
        )
    return c, k


def check_pair_lengths(
    model, clean: Sequence[str], corrupted: Sequence[str], *, prepend_bos: bool | None = None
) -> None:
    """Raise an error listing every clean/corrupted pair whose token lengths differ."""
    bad = []
    for i, (a, b) in enumerate(zip(clean, corrupted)):
        na = model.to_tokens(a, prepend_bos=prepend_bos).shape[1]
        nb = model.to_tokens(b, prepend_bos=prepend_bos).shape[1]
        if na != nb:
            bad.append(f"pair {i}: {a!r} has {na} tokens, {b!r} has {nb} ({nb - na:+d})")
    if bad:
        raise InputError(
            "Clean and corrupted prompts must have the same token length; these differ:\n  "
            + "\n  ".join(bad[:10])
            + ("\n  ..." if len(bad) > 10 else "")
        )


def bos_id(model) -> int | None:
    """The token id that starts a prompt for this model, or ``None`` when it is tokenized without one.

    Follows the model's ``cfg.default_prepend_bos`` (the loader sets it per model: SmolLM2 without BOS, Gemma
    with ``<bos>``), so hand-built token sequences agree with ``model.to_tokens``.
    """
    if not getattr(model.cfg, "default_prepend_bos", True):
        return None
    return model.tokenizer.bos_token_id


def prompt_batches(model, prompts, batch_size: int) -> list[tuple[list[int], torch.Tensor]]:
    """Tokenise prompts (strings or a token tensor) and group them into equal-length batches with their indices."""
    if isinstance(prompts, torch.Tensor):
        toks = prompts if prompts.dim() == 2 else prompts.unsqueeze(0)
        rows = list(toks.to(model.cfg.device))
    else:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise InputError("No prompts given: pass at least one prompt.")
        rows = [model.to_tokens(p)[0] for p in prompts]
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_len.setdefault(len(r), []).append(i)
    out = []
    for _, ix in sorted(by_len.items()):
        for s in range(0, len(ix), batch_size):
            sel = ix[s : s + batch_size]
            out.append((sel, torch.stack([rows[i] for i in sel])))
    return out


def n_prompts(batches) -> int:
    return sum(len(ix) for ix, _ in batches)


__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "bos_id",
    "check_pair_lengths",
    "megabytes",
    "n_prompts",
    "pad_id",
    "paired_tokens",
    "parse_budget",
    "progress_bar",
    "prompt_batches",
    "to_tokens",
]
