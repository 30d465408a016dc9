"""Syntax highlighting of Python code for the report, with the standard library's ``tokenize`` (no Pygments).

Every character of the input is kept: the highlighter only wraps tokens in ``<span class="hl-...">``. Code that
does not tokenize to the end (an unclosed bracket, as in the parenthesis prompts) is highlighted up to where
tokenizing stopped and shown plainly after that.
"""

from __future__ import annotations

import builtins
import io
import keyword
import tokenize

from ._util import esc

_BUILTINS = frozenset(n for n in dir(builtins) if not n.startswith("_"))
_SOFT_KEYWORDS = frozenset(getattr(keyword, "softkwlist", ()))
_CONSTANTS = frozenset({"True", "False", "None"})


def _line_offsets(text: str) -> list[int]:
    offsets = [0]
    for line in text.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    return offsets


def classify(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, css_class)`` character spans of the highlighted tokens of ``text``, in order."""
    offsets = _line_offsets(text)
    spans: list[tuple[int, int, str]] = []
    prev_name = ""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
                continue
            (r0, c0), (r1, c1) = tok.start, tok.end
            if r0 - 1 >= len(offsets) or r1 - 1 >= len(offsets):
                break
            start, end = offsets[r0 - 1] + c0, offsets[r1 - 1] + c1
            cls = None
            if tok.type == tokenize.COMMENT:
                cls = "hl-comment"
            elif tok.type == tokenize.STRING or tok.type in _FSTRING_TYPES:
                cls = "hl-string"
            elif tok.type == tokenize.NUMBER:
                cls = "hl-number"
            elif tok.type == tokenize.NAME:
                if tok.string in _CONSTANTS:
                    cls = "hl-constant"
                elif keyword.iskeyword(tok.string) or tok.string in _SOFT_KEYWORDS:
                    cls = "hl-keyword"
                elif prev_name in ("def", "class"):
                    cls = "hl-defname"
                elif tok.string in _BUILTINS:
                    cls = "hl-builtin"
                prev_name = tok.string
            elif tok.type == tokenize.OP:
                cls = "hl-op"
            if tok.type != tokenize.NAME:
                prev_name = ""
            if cls and end > start:
                spans.append((start, end, cls))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass  # keep what was classified; the rest is shown plainly
    return spans


_FSTRING_TYPES = frozenset(
    getattr(tokenize, n) for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END") if hasattr(tokenize, n)
)


def highlight_python(text: str) -> str:
    """``text`` as HTML with ``hl-*`` spans; escaping included, every character kept."""
    out, pos = [], 0
    for start, end, cls in classify(text):
        if start < pos:
            continue
        out.append(esc(text[pos:start]))
        out.append(f'<span class="{cls}">{esc(text[start:end])}</span>')
        pos = end
    out.append(esc(text[pos:]))
    return "".join(out)
