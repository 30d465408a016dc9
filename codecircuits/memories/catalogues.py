"""The Java and Go concept catalogues (the Python one is :data:`codecircuits.memories.concepts.CATALOGUE`).

A concept that means the same thing in several languages has the same name in each catalogue (``kw_import``,
``kw_return``, ``comment``, ``string``, ``exceptions``, ``loops``, ``api_re``, ...), so the keys it labels can be
compared across languages (:mod:`codecircuits.memories.crosslang`); one that exists in only one language has a
name of its own (Go's ``concurrency``, Java's ``ngram_this``). :data:`SHARED` lists the names common to all three.
"""

from __future__ import annotations

from .concepts import CATALOGUE, Concept, get, with_regions
from .languages import C_COMMENT, GO_STRING, JAVA_STRING

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
    Concept(
        "exceptions",
        "semantic",
        r"\b(?:try|catch|finally|throw|throws)\b|\b\w*(?:Exception|Error)\b",
        "line",
        "exception handling",
    ),
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
    Concept(
        "concurrency",
        "semantic",
        r"\b(?:synchronized|volatile)\b|\b(?:Thread|Executor\w*|\w*Future|\w*Lock|Atomic\w+)\b",
        "line",
        "threads and synchronisation",
    ),
)

GO: tuple[Concept, ...] = (
    Concept("kw_def", "shallow", r"\bfunc\b", "line", "a line that declares a function or method"),
    Concept("kw_class", "shallow", r"\btype[ \t]+\w+[ \t]+(?:struct|interface)\b", "line", "a type declaration line"),
    Concept(
        "kw_import",
        "shallow",
        r"^import[ \t]*\([\s\S]*?^\)|^[ \t]*(?:import|package)\b[^\n]*",
        "token",
        "an import (block) or package line",
    ),
    Concept("kw_literal", "shallow", r"\b(?:nil|true|false)\b", "token", "nil / true / false"),
    Concept("assign", "shallow", r":=|" + _ASSIGN, "token", "an assignment or short declaration"),
    Concept("string", "shallow", GO_STRING, "token", "inside a string, raw string or rune"),
    *_COMMON_SHALLOW,
    Concept("api_os", "semantic", r"\bos\.\w+|\"os\"", "line", "the os API"),
    Concept("api_re", "semantic", r"\bregexp\.\w+|\"regexp\"", "line", "regular expressions"),
    Concept(
        "api_collections",
        "semantic",
        r"\bmake\(|\bappend\(|\bmap\[|\bsort\.\w+|\bcontainer/\w+",
        "line",
        "slices, maps and containers",
    ),
    Concept(
        "exceptions",
        "semantic",
        r"\berr\b|\b(?:panic|recover)\(|\berrors\.\w+|\bfmt\.Errorf\b",
        "line",
        "error handling",
    ),
    Concept(
        "file_io",
        "semantic",
        r"\bos\.(?:Open|OpenFile|Create|ReadFile|WriteFile)\b|\b(?:io|bufio|ioutil)\.\w+|\.(?:Read|Write|Close)\(",
        "line",
        "file input / output",
    ),
    Concept("arithmetic", "semantic", _ARITH + r"|\bmath\.\w+", "line", "arithmetic"),
    Concept("loops", "semantic", r"\b(?:for|range|break|continue)\b", "line", "loops"),
    Concept(
        "concurrency",
        "semantic",
        r"\bgo[ \t]+\w|\bchan\b|<-|\bsync\.\w+|\bselect\b",
        "line",
        "goroutines, channels and synchronisation",
    ),
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

__all__ = ["CATALOGUES", "GO", "JAVA", "SHARED"]
