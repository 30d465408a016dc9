"""Checked conversions of user input: prompts to tokens, labels to single token ids, hook names.

Every method goes through these, so bad input fails the same clear way everywhere.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch

from .errors import HookNameError, InputError


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
        detail = "; ".join(f"{n} tokens: prompts {ix[:5]}{'...' if len(ix) > 5 else ''}" for n, ix in sorted(by_len.items()))
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
        raise InputError(f"{c.shape[0]} clean prompts but {k.shape[0]} corrupted prompts: pass one corrupted per clean.")
    if c.shape[1] != k.shape[1]:
        raise InputError(
            f"Clean prompts are {c.shape[1]} tokens long but corrupted prompts are {k.shape[1]} "
            f"(differ by {k.shape[1] - c.shape[1]:+d}). Patching needs equal lengths: make each corrupted "
            "prompt tokenize to the same number of tokens as its clean prompt."
        )
    return c, k


def check_pair_lengths(model, clean: Sequence[str], corrupted: Sequence[str], *, prepend_bos: bool | None = None) -> None:
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


def single_token_id(model, text: str) -> int:
    """The id of ``text`` if it is exactly one token (without BOS), else a clear error."""
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        pieces = model.tokenizer.convert_ids_to_tokens(ids)
        raise InputError(
            f"The label {text!r} is not a single token for this tokenizer: it splits into {len(ids)} tokens "
            f"{pieces}. Choose a label that is one token, or score only its first token explicitly."
        )
    return ids[0]


def check_hook_names(model, names: str | Sequence[str]) -> list[str]:
    """Return the names if the model has them all; otherwise an error with the closest real names."""
    if isinstance(names, str):
        names = [names]
    known = set(model.hook_dict)
    for n in names:
        if n not in known:
            close = difflib.get_close_matches(n, sorted(known), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise HookNameError(
                f"The model has no hook named {n!r}.{hint} Hook names look like 'blocks.3.attn.hook_z' or "
                "'blocks.0.hook_resid_pre'; `model.hook_dict` lists them all."
            )
    return list(names)


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-level BPE alphabet: printable stand-in character -> byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


_BYTES = _byte_decoder()


def token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """The text of each token id on its own, readable even when the token is part of a multi-byte character.

    ``tokenizer.decode([id])`` gives ``"\\ufffd"`` for a token that holds only some bytes of a UTF-8 character
    (common in byte-level BPE vocabularies); such tokens are shown as their bytes instead, e.g. ``"\\xe2\\x80"``
    (byte-level BPE) or the tokenizer's own ``"<0xE2>"`` (SentencePiece byte fallback).
    """
    out = []
    for i in ids:
        text = tokenizer.decode([int(i)])
        if "\ufffd" in text:
            raw = tokenizer.convert_ids_to_tokens(int(i)) or ""
            if raw and all(ch in _BYTES for ch in raw):
                data = bytes(_BYTES[ch] for ch in raw)
                text = data.decode("utf-8", errors="backslashreplace")
            elif raw:
                text = raw
        out.append(text)
    return out


def bos_id(model) -> int | None:
    """The token id that starts a prompt for this model, or ``None`` when it is tokenized without one.

    Follows the model's ``cfg.default_prepend_bos`` (the loader sets it per model: SmolLM2 without BOS, Gemma
    with ``<bos>``), so hand-built token sequences agree with ``model.to_tokens``.
    """
    if not getattr(model.cfg, "default_prepend_bos", True):
        return None
    return model.tokenizer.bos_token_id
