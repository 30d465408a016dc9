"""Small helpers shared by the report builder: array conversion, escaping, number formatting, colour scales."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..figures.style import (  # noqa: F401  (the report's modules take them from here)
    NAN_COLOUR,
    PALETTE,
    ColourScale,
    esc,
    format_value,
    jsonable,
    to_array,
)

# special tokens shown as a small badge instead of their raw text
_SPECIAL_PREFIXES = ("<|", "<s>", "</s>", "<bos>", "<eos>", "<pad>", "<unk>")


def json_for_script(obj) -> str:
    """JSON that is safe to inline inside a ``<script>`` element (no ``</script>``, no ``<!--``)."""
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c")


def show_token(token: str) -> str:
    """A token's text made visible: newlines as ⏎, tabs as ⇥, a token of only spaces as ·, other invisible
    characters as escapes (``\\x1d``)."""
    if token == "":
        return "∅"
    text = token.replace("\n", "⏎").replace("\t", "⇥")
    if text.strip(" ") == "":
        return "·" * len(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text


def position_labels(tokens: Sequence[str]) -> list[str]:
    """Axis labels ``"3 print"`` for a sequence of tokens: the position, then the visible token text."""
    return [f"{i} {show_token(t)}" for i, t in enumerate(tokens)]


def is_special_token(token: str) -> bool:
    return token.startswith(_SPECIAL_PREFIXES) and token.endswith(">")
