"""codecircuits: mechanistic interpretability of code language models, on TransformerLens 4.

>>> import codecircuits as cc
>>> model = cc.load_model("smollm2-135m")
>>> result = cc.patching.sweep(model, clean, corrupted, metric)  # a residual-stream sweep

The methods are submodules, imported on first use (``cc.patching``, ``cc.ablation``, ``cc.circuits``, ...; see
``__all__``), so ``import codecircuits`` loads only the model registry and the error classes (no Ray, no method
code). Old module names that moved (``cc.metrics``, ``cc.inputs``, ``cc.concepts``, ``cc.agreement``,
``cc.evaluation``; the table is :data:`codecircuits._moved.MOVED`) still work but warn with their new home.
"""

from __future__ import annotations

import importlib as _importlib

from ._moved import package_getattr as _package_getattr
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

#: the submodules ``cc.<name>`` gives, each imported on first access (the methods, then the layers around them)
_SUBMODULES = (
    "ablation",
    "attribution",
    "circuits",
    "cna",
    "heads",
    "lens",
    "memories",
    "neurons",
    "patching",
    "repair",
    "signatures",
    "subspace",
    "core",
    "corpus",
    "distributed",
    "graphs",
    "intervals",
    "models",
    "quality",
    "report",
    "studies",
    "tasks",
    "transcoders",
)

_moved_getattr = _package_getattr(__name__)  # an old module name imports its alias, which warns with the new home(s)


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = _importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    return _moved_getattr(name)


def __dir__() -> list[str]:
    public = {n for n in globals() if n.startswith("__") or not n.startswith("_")} - {"annotations"}
    return sorted(public | set(_SUBMODULES))


__all__ = [
    *_SUBMODULES,
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
