"""Deprecated: the checked conversions of user input moved into :mod:`codecircuits.core`; import them from there.

``single_token_id``, ``check_hook_names`` and ``token_texts`` live in :mod:`codecircuits.core.inputs`;
``to_tokens``, ``paired_tokens``, ``check_pair_lengths``, ``pad_id`` and ``bos_id`` in
:mod:`codecircuits.core.batching` (all of them are also importable from :mod:`codecircuits.core`).
Importing this module, or reading a name through it, raises a ``DeprecationWarning`` that names the new home;
the names it gives are the objects in their new homes. It will be removed in a future release.
"""

from ._moved import alias_module

__getattr__, __dir__, __all__ = alias_module(__name__)
