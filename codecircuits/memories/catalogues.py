"""The concept catalogues: :class:`Concept` (a named regular expression over code) and the built-in concepts of
Python (:data:`CATALOGUE`), Java and Go (:data:`JAVA`, :data:`GO`; all three in :data:`CATALOGUES`).

:mod:`codecircuits.memories.concepts` scores FF keys against them and re-exports the names it uses; the catalogues
import nothing of it, so concepts are data below the scoring.

A concept that means the same thing in several languages has the same name in each catalogue (``kw_import``,
``kw_return``, ``comment``, ``string``, ``exceptions``, ``loops``, ``api_re``, ...), so the keys it labels can be
compared across languages (:mod:`codecircuits.memories.crosslang`); one that exists in only one language has a
name of its own (Go's ``concurrency``, Java's ``ngram_this``). :data:`SHARED` lists the names common to all three.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..errors import InputError
from .languages import C_COMMENT, GO_STRING, JAVA_STRING, PY_STRING, check_language

KINDS = ("shallow", "semantic")
SCOPES = ("token", "line")
REGIONS = ("string", "comment")
CODE = ("string", "comment")  # skip both: the concept is about code, not prose in strings and comments


@dataclass(frozen=True)
class Concept:
    """A named regular expression over code, ``kind`` shallow or semantic, matched under ``scope``."""

    name: str
    kind: str
    pattern: str
    scope: str = "token"
    description: str = ""
    skip: tuple[str, ...] = ()  # regions ("string", "comment") where a match may not start
    language: str = "python"  # the language of the files it is matched in (memories.languages)

    def __post_init__(self):
        check_language(self.language)
        bad = [r for r in self.skip if r not in REGIONS]
        if bad:
            raise InputError(f"Concept {self.name!r}: skip regions must be among {', '.join(REGIONS)}; got {bad}.")
        if self.kind not in KINDS:
            raise InputError(f"Concept {self.name!r}: kind must be one of {', '.join(KINDS)}; got {self.kind!r}.")
        if self.scope not in SCOPES:
            raise InputError(f"Concept {self.name!r}: scope must be one of {', '.join(SCOPES)}; got {self.scope!r}.")
        try:
            re.compile(self.pattern, re.MULTILINE)
        except re.error as e:
            raise InputError(
                f"Concept {self.name!r}: {self.pattern!r} is not a valid regular expression ({e})."
            ) from None

    @property
    def regex(self) -> re.Pattern:
        return re.compile(self.pattern, re.MULTILINE)


_STRING = PY_STRING

CATALOGUE: tuple[Concept, ...] = (
    # shallow: keywords, n-grams, layout, punctuation, literals
    Concept("kw_def", "shallow", r"\bdef\b", "line", "a line that defines a function"),
    Concept("kw_class", "shallow", r"\bclass\b", "line", "a line that defines a class"),
    Concept("kw_return", "shallow", r"\b(?:return|yield)\b", "line", "a return / yield line"),
    Concept("kw_import", "shallow", r"^[ \t]*(?:from[ \t]+\S+[ \t]+)?import\b[^\n]*", "token", "an import statement"),
    Concept("kw_if", "shallow", r"\b(?:if|elif|else)\b", "line", "a conditional line"),
    Concept("kw_literal", "shallow", r"\b(?:None|True|False)\b", "token", "None / True / False"),
    Concept("ngram_self", "shallow", r"\bself\.\w+", "token", "the n-gram self.<attribute>"),
    Concept("ngram_dunder", "shallow", r"\b__\w+__\b", "token", "a dunder name"),
    Concept("indentation", "shallow", r"^[ \t]+", "token", "leading whitespace of a line"),
    Concept("open_bracket", "shallow", r"[(\[{]", "token", "an opening bracket"),
    Concept("close_bracket", "shallow", r"[)\]}]", "token", "a closing bracket"),
    Concept("comma", "shallow", r",", "token", "a comma"),
    Concept("dot", "shallow", r"(?<=\w)\.(?=\w)", "token", "attribute access dot"),
    Concept("line_colon", "shallow", r":[ \t]*$", "token", "the colon that opens a block"),
    Concept("assign", "shallow", r"(?<![=!<>+\-*/%&|^:])=(?!=)", "token", "an assignment"),
    Concept("string", "shallow", _STRING, "token", "inside a string or docstring"),
    Concept("comment", "shallow", r"#[^\n]*", "token", "inside a comment"),
    Concept("number", "shallow", r"\b\d+(?:\.\d+)?\b", "token", "a number literal"),
    # semantic: API families and programming concepts
    Concept("api_os", "semantic", r"\bos\.\w+|\bimport[ \t]+os\b|\bfrom[ \t]+os\b", "line", "the os / os.path API"),
    Concept("api_sys", "semantic", r"\bsys\.\w+|\bimport[ \t]+sys\b", "line", "the sys API"),
    Concept("api_re", "semantic", r"\bre\.\w+|\bimport[ \t]+re\b", "line", "the re API"),
    Concept("api_json", "semantic", r"\bjson\.\w+|\bimport[ \t]+json\b", "line", "the json API"),
    Concept(
        "api_typing",
        "semantic",
        r"\btyping\b|\b(?:Optional|Union|List|Dict|Tuple|Any|Callable|Iterable|Iterator|Sequence|Mapping|TypeVar|Generic)\b",
        "line",
        "type hints (typing)",
    ),
    Concept("api_collections", "semantic",
            r"\bcollections\b|\b(?:defaultdict|OrderedDict|namedtuple|deque|Counter|ChainMap)\b", "line",
            "the collections API"),
    Concept("exceptions", "semantic", r"\b(?:try|except|finally|raise)\b|\b\w+(?:Error|Exception)\b", "line",
            "exception handling"),
    Concept("file_io", "semantic",
            r"\bopen\(|\.(?:read|readline|readlines|write|writelines|close|seek|tell|flush)\(|\bio\.\w+", "line",
            "file input / output"),
    Concept("arithmetic", "semantic", r"(?<=[\w)\]]) (?:\*\*|//|[-+*/%])=? (?=[\w(\[.])|\bmath\.\w+", "line",
            "arithmetic"),
    Concept("loops", "semantic", r"\b(?:for|while|break|continue)\b", "line", "loops and comprehensions"),
    Concept("async", "semantic", r"\b(?:async|await)\b|\basyncio\.\w+", "line", "async code"),
)
# keywords, names, operators and every semantic concept count only in code; strings and comments exclude each other
_PY_CODE_SHALLOW = {"kw_def", "kw_class", "kw_return", "kw_import", "kw_if", "kw_literal", "ngram_self", "ngram_dunder"}
_PY_CODE_SHALLOW |= {"assign", "number"}
_SKIP = {"string": ("comment",), "comment": ("string",)}


def with_regions(cat: Sequence[Concept], code_shallow: set[str], language: str = "python") -> tuple[Concept, ...]:
    """``cat`` in ``language`` with the regions each concept skips: strings and comments exclude each other, and
    the semantic concepts and the ``code_shallow`` ones count only in code."""
    return tuple(
        replace(
            c,
            language=language,
            skip=_SKIP.get(c.name, CODE if c.kind == "semantic" or c.name in code_shallow else ()),
        )
        for c in cat
    )


CATALOGUE = with_regions(CATALOGUE, _PY_CODE_SHALLOW)


def catalogue(kind: str | None = None, language: str = "python") -> tuple[Concept, ...]:
    """The built-in concepts of ``language`` (python, java or go), optionally of one kind. Concepts that mean the
    same in several languages share their name (``kw_import``, ``comment``, ``exceptions``, ...;
    :data:`SHARED`)."""
    if kind is not None and kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}.")
    check_language(language)
    cat = CATALOGUE if language == "python" else CATALOGUES[language]
    return tuple(c for c in cat if kind is None or c.kind == kind)


def get(name: str, concepts: Sequence[Concept] = CATALOGUE) -> Concept:
    for c in concepts:
        if c.name == name:
            return c
    raise InputError(f"No concept named {name!r}; known: {', '.join(c.name for c in concepts)}.")


_ASSIGN = r"(?<![=!<>+\-*/%&|^:])=(?!=)"
_ARITH = r"(?<=[\w)\]]) (?:<<|>>|[-+*/%])=? (?=[\w(\[.])"
_COMMON_SHALLOW = (
    Concept("kw_return", "shallow", r"\breturn\b", "line", "a return line"),
    Concept("kw_if", "shallow", r"\b(?:if|else|switch|case)\b", "line", "a conditional line"),
    *(get(n) for n in ("indentation", "open_bracket", "close_bracket", "comma", "dot")),  # as in Python
    Concept("block_open", "shallow", r"\{[ \t]*$", "token", "the brace that opens a block"),
    Concept("comment", "shallow", C_COMMENT, "token", "inside a comment"),
    Concept("number", "shallow", r"\b\d+(?:\.\d+)?[lLfFdD]?\b", "token", "a number literal"),
)

JAVA: tuple[Concept, ...] = (
    Concept(
        "kw_def",
        "shallow",
        r"^[ \t]*(?:(?:public|private|protected|static|final|abstract|synchronized|native|default)[ \t]+)+"
        r"[\w<>\[\]?, .]+[ \t]+\w+[ \t]*\(",
        "line",
        "a line that declares a method",
    ),
    Concept("kw_class", "shallow", r"\b(?:class|interface|enum|record)\b", "line", "a type declaration line"),
    Concept("kw_import", "shallow", r"^[ \t]*(?:import|package)\b[^\n]*", "token", "an import or package line"),
    Concept("kw_literal", "shallow", r"\b(?:null|true|false)\b", "token", "null / true / false"),
    Concept("ngram_this", "shallow", r"\bthis\.\w+", "token", "the n-gram this.<field>"),
    Concept("assign", "shallow", _ASSIGN, "token", "an assignment"),
    Concept("string", "shallow", JAVA_STRING, "token", "inside a string or char literal"),
    *_COMMON_SHALLOW,
    Concept(
        "api_os", "semantic", r"\b(?:System|Runtime)\.\w+|\bProcessBuilder\b", "line", "the System / Runtime API"
    ),
    Concept("api_re", "semantic", r"\b(?:Pattern|Matcher)\b|\bjava\.util\.regex\b", "line", "regular expressions"),
    Concept(
        "api_collections",
        "semantic",
        r"\b(?:List|ArrayList|LinkedList|Map|HashMap|TreeMap|Set|HashSet|TreeSet|Collection|Collections|Deque"
        r"|ArrayDeque|Queue|Iterator)\b",
        "line",
        "the collections framework",
    ),
    Concept("exceptions", "semantic", r"\b(?:try|catch|finally|throw|throws)\b|\b\w*(?:Exception|Error)\b", "line",
            "exception handling"),
    Concept(
        "file_io",
        "semantic",
        r"\b(?:File|Files|Path|Paths|\w*InputStream|\w*OutputStream|\w*Reader|\w*Writer)\b"
        r"|\.(?:read|write|close|flush)\(",
        "line",
        "file input / output",
    ),
    Concept("arithmetic", "semantic", _ARITH + r"|\bMath\.\w+", "line", "arithmetic"),
    Concept("loops", "semantic", r"\b(?:for|while|do|break|continue)\b", "line", "loops"),
    Concept("concurrency", "semantic",
            r"\b(?:synchronized|volatile)\b|\b(?:Thread|Executor\w*|\w*Future|\w*Lock|Atomic\w+)\b", "line",
            "threads and synchronisation"),
)

GO: tuple[Concept, ...] = (
    Concept("kw_def", "shallow", r"\bfunc\b", "line", "a line that declares a function or method"),
    Concept("kw_class", "shallow", r"\btype[ \t]+\w+[ \t]+(?:struct|interface)\b", "line", "a type declaration line"),
    Concept("kw_import", "shallow", r"^import[ \t]*\([\s\S]*?^\)|^[ \t]*(?:import|package)\b[^\n]*", "token",
            "an import (block) or package line"),
    Concept("kw_literal", "shallow", r"\b(?:nil|true|false)\b", "token", "nil / true / false"),
    Concept("assign", "shallow", r":=|" + _ASSIGN, "token", "an assignment or short declaration"),
    Concept("string", "shallow", GO_STRING, "token", "inside a string, raw string or rune"),
    *_COMMON_SHALLOW,
    Concept("api_os", "semantic", r"\bos\.\w+|\"os\"", "line", "the os API"),
    Concept("api_re", "semantic", r"\bregexp\.\w+|\"regexp\"", "line", "regular expressions"),
    Concept("api_collections", "semantic", r"\bmake\(|\bappend\(|\bmap\[|\bsort\.\w+|\bcontainer/\w+", "line",
            "slices, maps and containers"),
    Concept("exceptions", "semantic", r"\berr\b|\b(?:panic|recover)\(|\berrors\.\w+|\bfmt\.Errorf\b", "line",
            "error handling"),
    Concept("file_io", "semantic",
            r"\bos\.(?:Open|OpenFile|Create|ReadFile|WriteFile)\b|\b(?:io|bufio|ioutil)\.\w+|\.(?:Read|Write|Close)\(",
            "line", "file input / output"),
    Concept("arithmetic", "semantic", _ARITH + r"|\bmath\.\w+", "line", "arithmetic"),
    Concept("loops", "semantic", r"\b(?:for|range|break|continue)\b", "line", "loops"),
    Concept("concurrency", "semantic", r"\bgo[ \t]+\w|\bchan\b|<-|\bsync\.\w+|\bselect\b", "line",
            "goroutines, channels and synchronisation"),
)

# keywords, names, operators and every semantic concept count only in code; strings and comments exclude each other
_CODE_SHALLOW = {"kw_def", "kw_class", "kw_return", "kw_import", "kw_if", "kw_literal", "ngram_this", "assign"}
_CODE_SHALLOW |= {"number", "block_open"}
JAVA = with_regions(JAVA, _CODE_SHALLOW, "java")
GO = with_regions(GO, _CODE_SHALLOW, "go")
CATALOGUES = {"python": CATALOGUE, "java": JAVA, "go": GO}

#: concept names every catalogue has: the concepts compared across languages
SHARED: tuple[str, ...] = tuple(
    c.name for c in CATALOGUE if all(c.name in {x.name for x in cat} for cat in (JAVA, GO))
)

__all__ = [
    "CATALOGUE",
    "CATALOGUES",
    "CODE",
    "GO",
    "JAVA",
    "KINDS",
    "REGIONS",
    "SCOPES",
    "SHARED",
    "Concept",
    "catalogue",
    "get",
    "with_regions",
]
