"""Tiny random models of every architecture family in the test matrix, built from configs (no downloads).

Used by the test-suite, the benchmarks' smoke runs and notebooks that want a fast model. Each model is saved
with a small byte-level BPE tokenizer (digits split, paren runs as single tokens) to a directory and loaded
through :func:`codecircuits.load_model`, the same path a user's checkpoint takes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

FAMILIES = ("llama", "gpt_neox", "codegen", "gpt_bigcode", "qwen2", "starcoder2")
# built on request for the checks that concern them, not part of every test's matrix
EXTRA_FAMILIES = ("gemma3",)
# clean/corrupted prompts of equal token length under the tiny tokenizer, first differing after a shared prefix
PAIR_CLEAN = ("print(str(str(123", "print(len(str(456", "print(str(str(789")
PAIR_CORRUPTED = ("print(str(len(123", "print(len(len(456", "print(str(len(789")


def toy_metric(logits):
    """A logit difference between two arbitrary tokens at the last position, per prompt (for tests)."""
    return logits[:, -1, 5] - logits[:, -1, 7]


_TOKENIZER_TEXT = [
    "def f(x):\n    return (x + 1)\n",
    "print(str(str(123)))\nprint(len(str(45)))\n",
    "#print the string 123\nprint(str(123))\n",
    "import os\nfor i in range(10):\n    if i % 2 == 0:\n        print(i)\n",
    "class A:\n    def __init__(self, a, b):\n        self.a = a\n        self.b = b\n",
    "assert 3 + 4 == 7\nx = [i * 2 for i in range(5)]\n",
]


def tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained on a few lines of Python; ``)``..``))))`` are single tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Split(Regex(r"\)+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_TOKENIZER_TEXT * 4 + [")", "))", ")))", "))))"] * 20, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def tiny_hf_model(
    family: str, vocab_size: int, *, n_layers: int = 2, d_model: int = 64, n_heads: int = 4, seed: int = 0
):
    """A small random Hugging Face causal LM of the given family."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    hf = dict(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
              num_attention_heads=n_heads, max_position_embeddings=256, **common)  # the Llama-like configs
    gpt = dict(n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=256, **common)  # the GPT-2-like ones
    gqa = max(1, n_heads // 2)
    gemma = dict(  # outside the main matrix: a norm after attention and after the MLP, q/k norms
        head_dim=d_model // n_heads,
        query_pre_attn_scalar=d_model // n_heads,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"] * (n_layers // 2) + ["full_attention"] * (n_layers % 2),
    )
    families = {
        "llama": (tf.LlamaConfig, hf | {"num_key_value_heads": n_heads}, tf.LlamaForCausalLM),
        "gpt_neox": (tf.GPTNeoXConfig, hf | {"intermediate_size": 4 * d_model, "rotary_pct": 0.25},
                     tf.GPTNeoXForCausalLM),
        "codegen": (tf.CodeGenConfig, gpt | {"rotary_dim": 8, "n_ctx": 256}, tf.CodeGenForCausalLM),
        "gpt_bigcode": (tf.GPTBigCodeConfig, gpt | {"multi_query": True}, tf.GPTBigCodeForCausalLM),
        "qwen2": (tf.Qwen2Config, hf | {"num_key_value_heads": gqa}, tf.Qwen2ForCausalLM),
        "starcoder2": (tf.Starcoder2Config, hf | {"num_key_value_heads": gqa}, tf.Starcoder2ForCausalLM),
        "gemma3": (tf.Gemma3TextConfig, hf | {"num_key_value_heads": gqa} | gemma, tf.Gemma3ForCausalLM),
    }
    if family not in families:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES + EXTRA_FAMILIES)}")
    config_cls, kwargs, cls = families[family]
    cfg = config_cls(**kwargs)
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    # random init is small; scale weights up a little so attention patterns and activations are not flat
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "norm" not in name:
                p.mul_(4.0)
    return model


def save_tiny_model(family: str, directory: str | Path | None = None, **kwargs) -> Path:
    """Write a tiny random model of ``family`` with its tokenizer to ``directory`` (a temp dir by default)."""
    directory = Path(directory or tempfile.mkdtemp(prefix=f"cc-tiny-{family}-"))
    tok = tiny_tokenizer()
    model = tiny_hf_model(family, len(tok), **kwargs)
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return directory


def tiny_model(family: str, directory: str | Path | None = None, **kwargs):
    """A tiny random model of ``family`` loaded through :func:`codecircuits.load_model`."""
    from .models import load_model

    path = save_tiny_model(family, directory, **kwargs)
    return load_model(path, device="cpu")
