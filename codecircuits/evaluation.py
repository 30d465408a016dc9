"""Deprecated: moved to :mod:`codecircuits.quality` (held-out code loss and paren accuracy); import from there.
Importing this module, or reading a name through it, raises a ``DeprecationWarning``; it will be removed in a
future release."""

from ._moved import alias_module

__getattr__, __dir__, __all__ = alias_module(__name__)
