"""load_model fails well: unknown names, offline hub names, bad directories, remote code, pickles."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from codecircuits import (
    CheckpointError,
    ModelUnavailableError,
    UnknownModelError,
    UnsupportedArchitectureError,
    load_model,
)


def test_unknown_name_suggests_registry():
    with pytest.raises(UnknownModelError, match="smollm2-135m"):
        load_model("smollm2-13m")


_FRESH = """
import sys, time
import codecircuits
from codecircuits.errors import ModelUnavailableError
t = time.monotonic()
try:
    codecircuits.load_model(sys.argv[1])
except ModelUnavailableError as e:
    print(f"{time.monotonic() - t:.3f}")
    print(e)
"""


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "no-network"])
def test_hub_name_offline_fails_fast(tmp_path, offline):
    """In a fresh interpreter (nothing of transformers or TransformerLens imported yet), a hub name with no
    cached weights fails within 2 s with no network, and at once with HF_HUB_OFFLINE=1."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "hf"))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    else:  # an endpoint that refuses at once stands in for this machine's closed network
        env.pop("HF_HUB_OFFLINE", None)
        env["HF_ENDPOINT"] = "https://127.0.0.1:9"
    out = subprocess.run(
        [sys.executable, "-c", _FRESH, "codellama-7b"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout, out.stderr[-2000:]
    seconds, msg = out.stdout.split("\n", 1)
    assert float(seconds) < (0.5 if offline else 2.0), seconds
    assert "codellama/CodeLlama-7b-hf" in msg and "directory" in msg and "cache" in msg


def test_silent_hub_fails_fast(monkeypatch, tmp_path):
    """An endpoint that accepts connections but never answers must not hang the loader."""
    import socket

    import huggingface_hub.constants as c

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "ENDPOINT", f"https://127.0.0.1:{port}")
    t = time.monotonic()
    try:
        with pytest.raises(ModelUnavailableError, match="Salesforce/codegen-350M-mono"):
            load_model("Salesforce/codegen-350M-mono")
    finally:
        server.close()
    assert time.monotonic() - t < 2


def test_refused_hub_fails_fast(monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "ENDPOINT", "https://127.0.0.1:9")
    t = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="bigcode/starcoder2-3b"):
        load_model("starcoder2-3b")
    assert time.monotonic() - t < 2


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)


def _copy(tiny_dirs, tmp_path, family="llama"):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_dirs[family], d)
    return d


def test_remote_code_refused(tiny_dirs, tmp_path):
    d = _copy(tiny_dirs, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="trust_remote_code=True"):
        load_model(d)


def test_unsupported_architecture(tiny_dirs, tmp_path):
    d = _copy(tiny_dirs, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["FancyNewForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="FancyNewForCausalLM"):
        load_model(d)


def test_pickled_weights_refused(tiny_dirs, tmp_path):
    d = _copy(tiny_dirs, tmp_path)
    for p in d.glob("*.safetensors"):
        p.rename(p.with_name("pytorch_model.bin"))
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_model(d)
