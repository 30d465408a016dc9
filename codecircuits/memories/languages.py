"""The source languages the memories study reads (Python, Java, Go): how a file's language is told from its
path, and each language's strings and comments, which concept matching must tell apart from code.

Strings and comments are found left to right with one alternation per language, so a comment marker inside a
string (``"// not a comment"``, ``'#'``) or a quote inside a comment is not misread.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from ..errors import InputError

LANGUAGES = ("python", "java", "go")

_EXTENSIONS = {".py": "python", ".pyi": "python", ".java": "java", ".go": "go"}

# Python: (prefixed) triple- and single-quoted strings; '#' comments
PY_STRING = r"[rbuRBUfF]{0,2}(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*')"
# Java: text blocks, strings and char literals; '//' and '/* */' comments
JAVA_STRING = r"\"\"\"[\s\S]*?\"\"\"|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])+'"
# Go: interpreted strings, raw strings and runes; the same comments as Java
GO_STRING = r"\"(?:\\.|[^\"\\\n])*\"|`[^`]*`|'(?:\\.|[^'\\\n])+'"
C_COMMENT = r"//[^\n]*|/\*[\s\S]*?\*/"

STRINGS = {"python": PY_STRING, "java": JAVA_STRING, "go": GO_STRING}
COMMENTS = {"python": r"#[^\n]*", "java": C_COMMENT, "go": C_COMMENT}
REGION_GRAMMARS = {
    lang: re.compile(rf"(?P<string>{STRINGS[lang]})|(?P<comment>{COMMENTS[lang]})") for lang in LANGUAGES
}


def check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise InputError(f"language must be one of {', '.join(LANGUAGES)}; got {language!r}.")
    return language


def language_of(path: str, default: str = "python") -> str:
    """The language of a source file from its extension (``default`` for any other name, e.g. ``text0``)."""
    for ext, lang in _EXTENSIONS.items():
        if str(path).endswith(ext):
            return lang
    return default


def corpus_language(paths: Iterable[str]) -> str:
    """The language most of ``paths`` are written in (Python when none has a known extension)."""
    counts = Counter(language_of(p, default="") for p in paths)
    counts.pop("", None)
    return counts.most_common(1)[0][0] if counts else "python"


__all__ = [
    "COMMENTS",
    "C_COMMENT",
    "GO_STRING",
    "JAVA_STRING",
    "PY_STRING",
    "LANGUAGES",
    "REGION_GRAMMARS",
    "STRINGS",
    "check_language",
    "corpus_language",
    "language_of",
]
