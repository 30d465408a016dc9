"""Errors raised by codecircuits, each with a message that says what was wrong and what to do."""

from __future__ import annotations


class CodeCircuitsError(Exception):
    """Base class of every error codecircuits raises on purpose."""


class UnknownModelError(CodeCircuitsError, ValueError):
    """A model name that is neither a shipped model, a registry entry, a local directory nor a hub id."""


class ModelUnavailableError(CodeCircuitsError, RuntimeError):
    """A hub model whose weights are neither cached locally nor reachable over the network."""


class UnsupportedArchitectureError(CodeCircuitsError, ValueError):
    """A checkpoint whose architecture TransformerLens's TransformerBridge does not support."""


class CheckpointError(CodeCircuitsError, ValueError):
    """A directory that is not a usable checkpoint (no config, no safetensors, needs remote code)."""


class InputError(CodeCircuitsError, ValueError):
    """Bad input to a method: mismatched lengths, a label that is not one token, an empty corpus."""


class HookNameError(CodeCircuitsError, KeyError):
    """A hook name the model does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""
