"""Where converted and downloaded checkpoints live, and how a complete one is recognised.

The cache directory is ``$CODECIRCUITS_CACHE`` when set, else ``$XDG_CACHE_HOME/codecircuits`` (by default
``~/.cache/codecircuits``). A converted model is a plain Hugging Face directory (``config.json``,
``model.safetensors``, tokenizer files) plus ``codecircuits-manifest.json``, written last, that records the
SHA-256 and size of every weight file. A directory whose manifest is missing or does not match its files is
partial or corrupt: it is never loaded, it is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

MANIFEST = "codecircuits-manifest.json"


def cache_dir() -> Path:
    """The root of codecircuits's cache (created on demand by the writers, not here)."""
    env = os.environ.get("CODECIRCUITS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "codecircuits"


def model_cache_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path, source: dict) -> None:
    """Record the weight files of a finished directory; call this last, after every file is written."""
    files = {}
    for p in sorted(directory.glob("*.safetensors")):
        files[p.name] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
    if not files:
        raise RuntimeError(f"{directory} has no .safetensors file to record")
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"source": source, "files": files}, indent=1))
    tmp.replace(directory / MANIFEST)


def is_complete(directory: Path) -> bool:
    """True when the directory has a manifest and every weight file matches its recorded hash."""
    man = directory / MANIFEST
    if not (directory / "config.json").is_file() or not man.is_file():
        return False
    try:
        files = json.loads(man.read_text())["files"]
    except (ValueError, KeyError):
        return False
    for name, rec in files.items():
        p = directory / name
        if not p.is_file() or p.stat().st_size != rec["bytes"] or _sha256(p) != rec["sha256"]:
            return False
    return bool(files)


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
