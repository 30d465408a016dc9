"""Deprecated: moved to :mod:`codecircuits.neurons.knockout` (zeroing neurons and the top-k zero-ablation
evaluation; head zeroing is :func:`codecircuits.ablation.ablation_hooks`); import from there. Importing this
module, or reading a name through it, raises a ``DeprecationWarning``; it will be removed in a future release."""

from .._moved import alias_module

__getattr__, __dir__, __all__ = alias_module(__name__)
