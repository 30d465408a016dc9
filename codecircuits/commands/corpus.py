"""``codecircuits corpus``: fetch the Java, Go and shell corpora from Debian's packages, and list what is here."""

from __future__ import annotations

import argparse

NAME = "corpus"
HELP = (
    "fetch the Java / Go / shell source corpora (Debian's openjdk-17-source, golang-1.19-src, bash-completion) "
    "and list the corpora"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..debian_sources import SOURCES

    p.add_argument("action", choices=("fetch", "list"), help="fetch languages into the cache, or list the corpora")
    p.add_argument("languages", nargs="*", default=list(SOURCES), help=f"for fetch (default: {' '.join(SOURCES)})")
    p.add_argument("--deb", default=None, help="a downloaded .deb to unpack instead of `apt-get download` (one language)")
    p.add_argument("--force", action="store_true", help="fetch again even when a complete copy is cached")


def run(args) -> int:
    from .. import debian_sources as ds

    if args.action == "fetch":
        if args.deb and len(args.languages) != 1:
            raise SystemExit("--deb goes with exactly one language")
        for lang in args.languages:
            path = ds.fetch(lang, deb=args.deb, force=args.force)
            print(f"{lang}: {path}")
        return 0
    from .. import corpus as corpus_mod

    for lang in ds.SOURCES:
        if ds.fetched(lang):
            sizes = {s: len(corpus_mod.debian(lang, s)) for s in corpus_mod.SPLITS}
            print(f"{lang}: {ds.root(lang)} " + " ".join(f"{k} {v} files" for k, v in sizes.items()))
        else:
            print(f"{lang}: not fetched (codecircuits corpus fetch {lang})")
    print("python: the interpreter's standard library (stdlib:train|validation|test), always here")
    return 0
