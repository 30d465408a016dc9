"""codecircuits: mechanistic interpretability of code language models, on TransformerLens 4."""

from .errors import (
    CheckpointError,
    CodeCircuitsError,
    HookNameError,
    InputError,
    ModelUnavailableError,
    UnknownModelError,
    UnsupportedArchitectureError,
)
from .models import DEFAULT_MODEL, REGISTRY, describe, load_model

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "REGISTRY",
    "CheckpointError",
    "CodeCircuitsError",
    "HookNameError",
    "InputError",
    "ModelUnavailableError",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "describe",
    "load_model",
]
