"""7B-shaped models without downloads: CodeLlama-7b's and Qwen2.5-Coder-7B's shapes with random weights, in bf16.

A 7B model's *shape* (layers, widths, heads, vocabulary) is enough to measure what a method needs in memory and
time, and to find the places that assume float32 or a small model. :func:`shape_model` builds one as a
``TransformerBridge`` in compatibility mode, like :func:`codecircuits.load_model` returns, without ever holding a
full-precision copy of the weights:

1. the Hugging Face model is constructed on the ``meta`` device (no memory), cast to ``dtype`` there, and
   allocated with ``to_empty`` directly on ``device``, in ``dtype``;
2. each tensor is filled in place: linear weights ``N(0, 1/fan_in)``, embeddings ``N(0, 1)``, norm gains 1,
   query/key biases small, value biases 0, and the unembedding centred over the vocabulary (its column means are
   computed in float32 over row chunks of at most :data:`CHUNK_ROWS` rows);
3. the weights are then already in the form TransformerLens's weight processing (``fold_ln``,
   ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``) gives, which for these RMSNorm models
   is the identity on them; so the bridge is put in compatibility mode with ``no_processing=True``. (The
   processing itself would upcast the whole state dict to float32: 27 GB for CodeLlama-7b's shape.)

``layers=`` builds the same widths with fewer layers (tests use 1 or 2). The tokenizer is the tiny byte-level one of
:func:`codecircuits.testing.tiny_tokenizer` (320 tokens; every id is below both vocabularies); the logits still
cover the model's whole vocabulary.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from dataclasses import dataclass

import torch

from .errors import InputError

CHUNK_ROWS = 4096  # rows of the unembedding centred at once (float32 scratch: CHUNK_ROWS x d_model x 4 bytes)


@dataclass(frozen=True)
class Shape:
    """One model shape: its Hugging Face family and configuration."""

    name: str
    family: str  # "llama" or "qwen2"
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    d_vocab: int
    rope_theta: float
    n_ctx: int
    norm_eps: float
    qkv_bias: bool

    def n_params(self, layers: int | None = None) -> int:
        """Parameters of this shape with ``layers`` layers (all of them by default)."""
        n_layers = self.n_layers if layers is None else layers
        d_head = self.d_model // self.n_heads
        attn = 2 * self.d_model * self.n_heads * d_head + 2 * self.d_model * self.n_kv_heads * d_head
        if self.qkv_bias:
            attn += self.n_heads * d_head + 2 * self.n_kv_heads * d_head
        per_layer = attn + 3 * self.d_model * self.d_mlp + 2 * self.d_model
        return n_layers * per_layer + 2 * self.d_vocab * self.d_model + self.d_model

    def weight_bytes(self, layers: int | None = None, dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes of this shape's weights in ``dtype``."""
        return self.n_params(layers) * torch.finfo(dtype).bits // 8


SHAPES: dict[str, Shape] = {
    # CodeLlama-7b-hf's config.json: Llama, 32 x 4096, MHA, 11008 MLP, 32016 tokens, rope theta 1e6, 16k context
    "codellama-7b": Shape("codellama-7b", "llama", 32, 4096, 11008, 32, 32, 32016, 1e6, 16384, 1e-5, False),
    # Qwen2.5-Coder-7B's config.json: Qwen2, 28 x 3584, 28 query / 4 KV heads, 18944 MLP, 152064 tokens, qkv bias
    "qwen2.5-coder-7b": Shape("qwen2.5-coder-7b", "qwen2", 28, 3584, 18944, 28, 4, 152064, 1e6, 32768, 1e-6, True),
}


def get_shape(name: str) -> Shape:
    """The :class:`Shape` called ``name`` (a key of :data:`SHAPES`)."""
    if name not in SHAPES:
        raise InputError(f"Unknown model shape {name!r}; choose one of {', '.join(SHAPES)}.")
    return SHAPES[name]


def shape_config(name: str, *, layers: int | None = None):
    """The Hugging Face config of shape ``name``, with ``layers`` layers (all of them by default)."""
    import transformers as tf

    s = get_shape(name)
    n_layers = s.n_layers if layers is None else int(layers)
    if n_layers < 1:
        raise InputError(f"layers must be at least 1, got {layers}.")
    common = dict(
        vocab_size=s.d_vocab, hidden_size=s.d_model, intermediate_size=s.d_mlp, num_hidden_layers=n_layers,
        num_attention_heads=s.n_heads, num_key_value_heads=s.n_kv_heads, max_position_embeddings=s.n_ctx,
        rms_norm_eps=s.norm_eps, rope_theta=s.rope_theta, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,  # the tiny tokenizer's <|endoftext|>
    )
    if s.family == "llama":
        return tf.LlamaConfig(**common)
    return tf.Qwen2Config(**common, use_sliding_window=False)


def _model_class(family: str):
    import transformers as tf

    return {"llama": tf.LlamaForCausalLM, "qwen2": tf.Qwen2ForCausalLM}[family]


def fresh_rotary_buffers(model, device) -> None:
    """Recompute the rotary embeddings' ``inv_freq`` buffers (meta tensors have no values), in float32."""
    for module in model.modules():
        if hasattr(module, "inv_freq") and hasattr(module, "config"):
            fresh = type(module)(config=module.config)
            for name, buf in fresh.named_buffers(recurse=False):
                module.register_buffer(name, buf.to(device), persistent=False)


@torch.no_grad()
def center_rows_mean(w: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> None:
    """Subtract the mean over dim 0 from ``w`` in place, the mean accumulated in float32 over row chunks."""
    total = torch.zeros(w.shape[1], dtype=torch.float32, device=w.device)
    for i in range(0, w.shape[0], chunk_rows):
        total += w[i : i + chunk_rows].float().sum(0)
    mean = (total / w.shape[0]).to(w.dtype)
    for i in range(0, w.shape[0], chunk_rows):
        w[i : i + chunk_rows] -= mean


@torch.no_grad()
def init_processed(model, seed: int = 0) -> None:
    """Fill every parameter of a Llama/Qwen2 causal LM in place with random values already in processed form."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)  # fold_ln moves RMSNorm gains into the next weights and sets them to 1
        elif name.endswith("v_proj.bias"):
            p.zero_()  # fold_value_biases moves b_V into b_O
        elif name.endswith(".bias"):
            p.normal_(0.0, 0.02, generator=g)
        elif "embed_tokens" in name:
            p.normal_(0.0, 1.0, generator=g)
        else:  # [out, in] linear weights, lm_head included
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]), generator=g)
    center_rows_mean(model.get_output_embeddings().weight)  # center_unembed: W_U's mean over the vocabulary


def shape_hf_model(
    name: str, *, layers: int | None = None, device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16, seed: int = 0,
):
    """The Hugging Face model of shape ``name`` with random weights, allocated in ``dtype`` on ``device`` only."""
    if not dtype.is_floating_point:
        raise InputError(f"dtype must be a floating-point dtype, got {dtype}.")
    cfg = shape_config(name, layers=layers)
    cfg.dtype = dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = _model_class(get_shape(name).family)(cfg)
        model = model.to(dtype)  # still meta: nothing is allocated
        model = model.to_empty(device=device)
    fresh_rotary_buffers(model, device)
    init_processed(model, seed)
    model.config.attn_implementation = "eager"
    return model.eval()


def shape_model(
    name: str, *, layers: int | None = None, device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16, seed: int = 0, tokenizer=None,
):
    """A ``TransformerBridge`` in compatibility mode of shape ``name`` (a key of :data:`SHAPES`), random weights.

    ``layers``: how many layers (default: the shape's own); ``tokenizer``: default the tiny byte-level tokenizer
    of :mod:`codecircuits.testing`. Peak memory is the weights in ``dtype`` plus a few MB (see the module)."""
    from transformer_lens.model_bridge import TransformerBridge

    from .models.kv_cache import forward_cache_to_attention
    from .testing import tiny_tokenizer

    tok = tokenizer if tokenizer is not None else tiny_tokenizer()
    if len(tok) > get_shape(name).d_vocab:
        raise InputError(f"The tokenizer has {len(tok)} tokens, more than the shape's {get_shape(name).d_vocab}.")
    hf_model = shape_hf_model(name, layers=layers, device=device, dtype=dtype, seed=seed)
    display = name if layers is None else f"{name}-{layers}l"
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="cc-shape-") as tok_dir:
        warnings.simplefilter("ignore")
        # the bridge reloads the tokenizer from a directory (with add_bos_token=True), as load_model's does
        tok.save_pretrained(tok_dir)
        bridge = TransformerBridge.boot_transformers(tok_dir, hf_model=hf_model, device=str(device), dtype=dtype)
        # the weights are already in processed form (see the module): processing would only upcast them
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    bridge.eval()
    forward_cache_to_attention(bridge)
    bridge.cfg.model_name = display
    bridge.cfg.device = str(device)
    bridge.codecircuits_path = f"shape:{display}"
    # no ``codecircuits_load``: workers cannot load a replica of a random shape, and say so (distributed.model_spec)
    bridge.codecircuits_shape = {"shape": name, "layers": layers, "dtype": str(dtype).removeprefix("torch."),
                                 "seed": seed}
    return bridge
