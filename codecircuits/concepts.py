"""Code concepts, concept scores of FF keys and concept editing: :mod:`codecircuits.memories.concepts`, under its
old name (everything public is re-exported here)."""

from .memories.concepts import (
    CATALOGUE,
    CODE,
    KINDS,
    REGIONS,
    SCOPES,
    Concept,
    ConceptEdit,
    ConceptMasks,
    ConceptScores,
    TokenEval,
    catalogue,
    chunk_flat_tokens,
    doc_masks,
    edit_concept,
    edit_table,
    evaluate,
    get,
    key_scores,
    mask_hooks,
    random_keys,
    resolve_concepts,
    token_masks,
)

_doc_masks = doc_masks  # the name tests/test_concepts.py knows it by

__all__ = [
    "CATALOGUE",
    "CODE",
    "KINDS",
    "REGIONS",
    "SCOPES",
    "Concept",
    "ConceptEdit",
    "ConceptMasks",
    "ConceptScores",
    "TokenEval",
    "catalogue",
    "chunk_flat_tokens",
    "doc_masks",
    "edit_concept",
    "edit_table",
    "evaluate",
    "get",
    "key_scores",
    "mask_hooks",
    "random_keys",
    "resolve_concepts",
    "token_masks",
]
