"""Deprecated: moved to :mod:`codecircuits.circuits.faithfulness` (circuits run with the rest ablated, exact edge
patching, the faithfulness curves, CPR and CMD); import from there. Importing this module, or reading a name
through it, raises a ``DeprecationWarning``; it will be removed in a future release."""

from .._moved import alias_module

__getattr__, __dir__, __all__ = alias_module(__name__)
