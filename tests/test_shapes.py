"""The 7B shapes of ``codecircuits.shapes``: their parameter counts, and one layer of each at full width in bf16
(dtype, shapes, no float32 parameter, one forward pass, peak memory near the weights).

The CodeLlama layer (0.87 GiB of weights, ~20 s) runs in the fast suite; the Qwen2.5-Coder layer (2.5 GiB: its
152,064-token vocabulary) is marked slow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codecircuits import InputError
from codecircuits.shapes import SHAPES, get_shape, shape_config, shape_model


def test_parameter_counts_are_the_published_models():
    assert SHAPES["codellama-7b"].n_params() == 6_738_546_688  # CodeLlama-7b-hf
    assert SHAPES["qwen2.5-coder-7b"].n_params() == 7_615_616_512  # Qwen2.5-Coder-7B
    cfg = shape_config("qwen2.5-coder-7b", layers=2)
    assert (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.vocab_size) == (2, 4, 152064)
    assert shape_config("codellama-7b").rope_parameters["rope_theta"] == 1e6
    with pytest.raises(InputError, match="shape"):
        get_shape("llama-70b")
    with pytest.raises(InputError, match="layers"):
        shape_config("codellama-7b", layers=0)


def _check_one_layer(name):
    s = get_shape(name)
    model = shape_model(name, layers=1)
    params = list(model.original_model.parameters())
    assert {p.dtype for p in params} == {torch.bfloat16}
    assert sum(p.numel() for p in params) == s.n_params(1)
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_mlp, cfg.d_vocab) == (
        1, s.d_model, s.n_heads, s.d_mlp, s.d_vocab)
    assert (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) == s.n_kv_heads
    toks = model.to_tokens(["print(str(str(123"])
    assert int(toks.max()) < s.d_vocab
    with torch.no_grad():
        logits, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith(("hook_z", "mlp.hook_post")))
    assert logits.shape == (1, toks.shape[1], s.d_vocab) and logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all() and 0.1 < logits.float().std() < 10
    assert cache["blocks.0.attn.hook_z"].shape == (1, toks.shape[1], s.n_heads, s.d_model // s.n_heads)
    assert cache["blocks.0.mlp.hook_post"].shape[-1] == s.d_mlp
    # the unembedding is centred over the vocabulary, as compatibility mode's processing leaves it
    assert model.W_U.float().mean(-1).abs().max() < 1e-2


def test_codellama_one_layer_full_width():
    _check_one_layer("codellama-7b")


@pytest.mark.slow
def test_qwen_coder_one_layer_full_width():
    _check_one_layer("qwen2.5-coder-7b")


_PEAK = """
import torch
import transformer_lens.model_bridge, transformers
from codecircuits import shapes


def hwm():  # this process's peak resident set (VmHWM is per address space: a fork's parent does not count)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


before = hwm()
model = shapes.shape_model("codellama-7b", layers=1)
with torch.no_grad():
    model(model.to_tokens(["print(str(123"]))
print(hwm() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_no_float32_copy_while_building():
    """The build's peak memory over the imports is the bf16 weights and a little more, never a float32 copy."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _PEAK], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    grown = int(proc.stdout.split()[-1])
    weights = get_shape("codellama-7b").weight_bytes(1)  # 0.87 GiB; a float32 copy would add 1.73 GiB
    assert weights <= grown < weights + 0.35 * 2**30, (grown / 2**30, weights / 2**30)
