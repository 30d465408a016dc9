"""Real Java, Go and shell source from Debian's packages, fetched once into the cache (never committed).

Haider et al. (2024) study Java, Go and Python. Offline, Debian carries all three: the JDK's own sources
(``openjdk-17-source``: ``lib/src.zip``, about 15,000 Java files) and Go's standard library
(``golang-1.19-src``: about 8,900 Go files). The MINT repair study's shell task (line completion of shell
commands, an offline stand-in for MINT's intent-to-bash) reads real bash scripts: the ``bash-completion``
package's completion scripts (``usr/share/bash-completion/completions``, about 470 files that are not symlinks,
28,000 lines); they have no file suffix, so each is stored under its name plus ``.sh``. :func:`fetch` downloads a package with ``apt-get download`` (no
install, no root needed for that), unpacks it with ``dpkg-deb -x`` and keeps only the source files, under
``$CODECIRCUITS_CACHE/corpora/<language>``; a ``MANIFEST.json`` written last marks a complete copy, so an
interrupted fetch is redone, never used half-done.

:func:`codecircuits.corpus.debian` then reads a language's files as a :class:`~codecircuits.corpus.Corpus`, split
into train / validation / test by a hash of each file's path (as the standard library is), without test code
(``test`` / ``testdata`` directories, Go's ``_test.go`` files). ``codecircuits.corpus.load("java:test")`` and
``"go:train"`` reach it, so every command that takes ``--corpus`` takes them. This module only fetches and says
where the files are; it imports nothing of :mod:`codecircuits.corpus`, which reads them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError


@dataclass(frozen=True)
class Source:
    """Where a language's files come from: a Debian package, the path inside it, and the file suffix."""

    language: str
    package: str
    inner: str  # a directory of the unpacked package, or a zip archive in it
    suffix: str
    exclude_dirs: frozenset[str]
    any_file: bool = False  # keep every regular file (not symlinks), stored under its name + ``suffix``


SOURCES = {
    "java": Source("java", "openjdk-17-source", "usr/lib/jvm/openjdk-17/lib/src.zip", ".java",
                   frozenset({"test", "tests", "testdata", "demo", "sample"})),
    "go": Source("go", "golang-1.19-src", "usr/share/go-1.19/src", ".go",
                 frozenset({"test", "testdata"})),
    "shell": Source("shell", "bash-completion", "usr/share/bash-completion/completions", ".sh",
                    frozenset(), any_file=True),
}
MANIFEST = "MANIFEST.json"


def cache_root() -> Path:
    from .models.cache import cache_dir

    return Path(cache_dir()) / "corpora"


def source(language: str) -> Source:
    """Where ``language``'s files come from (an error naming the languages there are for any other)."""
    if language not in SOURCES:
        raise InputError(f"No Debian source corpus for {language!r}; choose one of {', '.join(SOURCES)}.")
    return SOURCES[language]


def root(language: str) -> Path:
    """The directory of a fetched language's files (it may not exist yet: see :func:`fetch`)."""
    return cache_root() / source(language).language


def fetched(language: str) -> bool:
    return (root(language) / MANIFEST).is_file()


def _keep(rel: str, src: Source) -> bool:
    parts = rel.split("/")
    if src.any_file:
        return not any(p in src.exclude_dirs for p in parts[:-1])
    if not rel.endswith(src.suffix) or any(p in src.exclude_dirs for p in parts[:-1]):
        return False
    return not (src.language == "go" and rel.endswith("_test.go"))


def _download(package: str, into: Path) -> Path:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise InputError(
            f"Fetching {package} needs apt-get and dpkg-deb (a Debian or Ubuntu machine); or pass deb= the path of "
            f"a downloaded {package} .deb file."
        )
    r = subprocess.run(["apt-get", "download", package], cwd=into, capture_output=True, text=True)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if r.returncode != 0 or not debs:
        raise InputError(
            f"`apt-get download {package}` failed ({(r.stderr or r.stdout).strip()[-300:]}). Run `apt-get update` "
            "if the package lists are missing, or pass deb= the path of the .deb file."
        )
    return debs[0]


def fetch(language: str, *, deb: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Download (or take ``deb``), unpack and cache a language's source files; returns their directory.

    Does nothing when a complete copy is cached (unless ``force``). The copy is built in a temporary directory
    beside the cache and renamed into place, then its manifest is written, so a fetch that stops half-way leaves
    nothing that looks complete.
    """
    src = source(language)
    dest = root(language)
    if fetched(language) and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{language}-", dir=dest.parent) as tmp:
        tmp = Path(tmp)
        deb_path = Path(deb) if deb is not None else _download(src.package, tmp)
        if not deb_path.is_file():
            raise InputError(f"{deb_path} is not a file; pass the path of a downloaded {src.package} .deb.")
        unpacked = tmp / "deb"
        r = subprocess.run(["dpkg-deb", "-x", str(deb_path), str(unpacked)], capture_output=True, text=True)
        if r.returncode != 0:
            raise InputError(f"`dpkg-deb -x {deb_path}` failed: {r.stderr.strip()[-300:]}")
        out = tmp / "files"
        inner = unpacked / src.inner
        n = 0
        if inner.suffix == ".zip":
            if not inner.is_file():
                raise InputError(f"{deb_path} has no {src.inner}; is it {src.package}?")
            with zipfile.ZipFile(inner) as z:
                for info in z.infolist():
                    if not info.is_dir() and _keep(info.filename, src):
                        target = out / info.filename
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(z.read(info))
                        n += 1
        else:
            if not inner.is_dir():
                raise InputError(f"{deb_path} has no {src.inner}/; is it {src.package}?")
            for p in sorted(inner.rglob("*" if src.any_file else f"*{src.suffix}")):
                rel = p.relative_to(inner).as_posix()
                if p.is_file() and not p.is_symlink() and _keep(rel, src):
                    target = out / (rel + src.suffix if src.any_file else rel)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(p, target)
                    n += 1
        if n == 0:
            raise InputError(f"{deb_path} holds no {src.suffix} files under {src.inner}.")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(out, dest)
        manifest = {"language": language, "package": src.package, "deb": deb_path.name, "files": n}
        (dest / (MANIFEST + ".tmp")).write_text(json.dumps(manifest, indent=1))
        os.replace(dest / (MANIFEST + ".tmp"), dest / MANIFEST)
    return dest


__all__ = ["SOURCES", "Source", "cache_root", "fetch", "fetched", "root", "source"]
