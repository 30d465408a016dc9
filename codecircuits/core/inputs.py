"""Checked conversions of user input: labels to single token ids, hook names, token ids to readable text.

Every method goes through these (and the prompt-to-token conversions in :mod:`codecircuits.core.batching`:
``to_tokens``, ``paired_tokens``, ``check_pair_lengths``), so bad input fails the same clear way everywhere.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from ..errors import HookNameError, InputError

__all__ = ["check_hook_names", "single_token_id", "token_texts"]


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
