"""Models: the registry, the loader and the model summary."""

from .loading import load_model, resolve
from .registry import DEFAULT_MODEL, REGISTRY, ModelEntry, lookup
from .summary import ModelSummary, describe, kv_groups, kv_head_of, n_kv_heads

__all__ = [
    "DEFAULT_MODEL",
    "REGISTRY",
    "ModelEntry",
    "ModelSummary",
    "describe",
    "kv_groups",
    "kv_head_of",
    "load_model",
    "lookup",
    "n_kv_heads",
    "resolve",
]
