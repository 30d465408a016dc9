"""Deprecated: layer agreement by context length moved to :mod:`codecircuits.memories.agreement`; import it
from there.

Importing this module, or reading a name through it, raises a ``DeprecationWarning`` that names the new home;
the names it gives are the objects in :mod:`codecircuits.memories.agreement` itself. It will be removed in a future
release.
"""

from ._moved import alias_module

__getattr__, __dir__, __all__ = alias_module(__name__)
