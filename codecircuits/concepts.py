"""Deprecated: code concepts, concept scores of FF keys and concept editing moved to
:mod:`codecircuits.memories.concepts`; import them from there.

Importing this module, or reading a name through it, raises a ``DeprecationWarning`` that names the new home;
the names it gives are the objects in :mod:`codecircuits.memories.concepts` itself. It will be removed in a future
release.
"""

from ._moved import alias_module

__getattr__, __dir__, __all__ = alias_module(__name__)
