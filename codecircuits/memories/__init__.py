"""Feed-forward layers as key-value memories (Geva et al. 2021; Haider et al. 2024 on code models).

Terms
-----
A **key** is one neuron ``k`` of ``blocks.{l}.mlp.hook_post``; its **activation coefficient** at a position is
``m = hook_post[..., k]`` and its **value** is the row ``W_out[l][k]`` that the MLP adds to the residual stream,
scaled by ``m``. In a plain MLP (GPT-NeoX, CodeGen, GPTBigCode) ``m = act(x · W_in[:, k] + b_in[k])`` and the key
is the column ``W_in[:, k]``. In a gated MLP (Llama, Qwen2; SmolLM2) ``m = act(x · W_gate[:, k]) · (x · W_in[:, k])``:
the key is the pair (gate column, up column) and ``m`` can be large and negative, because the up projection's
sign is arbitrary (flipping ``W_in[:, k]`` and ``W_out[k]`` together leaves the model unchanged). Keys of gated
MLPs are therefore ranked by ``|m|`` (``rank_by="abs"``, the default for them) and plain ones by ``m``.

Modules
-------
- :mod:`~codecircuits.memories.chunks`: documents cut into the chunks a scan visits (:func:`chunk_corpus`).
- :mod:`~codecircuits.memories.triggers`: the streaming top-K trigger-example scan, its checkpoints and file
  format (:func:`scan`, :func:`load_scan`), and one key's coefficients along a chunk.
- :mod:`~codecircuits.memories.values`: value vectors through the unembedding and key-value agreement.
- :mod:`~codecircuits.memories.concepts`: regex code concepts, concept scores of keys, masking keys.
- :mod:`~codecircuits.memories.agreement`: when each layer already says what the model finally says.
- :mod:`~codecircuits.memories.languages` and :mod:`~codecircuits.memories.catalogues`: Python, Java and Go files
  (strings, comments and each language's concept catalogue); :mod:`~codecircuits.memories.crosslang`: whether a
  concept selects the same keys in every language.

Everything public of the first three is importable from here (``from codecircuits import memories as mem;
mem.scan(...)``). The old top-level names ``codecircuits.concepts`` and ``codecircuits.agreement`` are
deprecated aliases of the last two.
"""

from .chunks import ChunkedCorpus, chunk_bos_id, chunk_corpus
from .triggers import (
    FORMAT,
    RANK_BY,
    TriggerExample,
    TriggerScan,
    chunk_activations,
    layer_set,
    load_scan,
    scan,
)
from .values import ValueTokens, key_value_agreement, value_tokens

__all__ = [
    "FORMAT",
    "RANK_BY",
    "ChunkedCorpus",
    "TriggerExample",
    "TriggerScan",
    "ValueTokens",
    "chunk_activations",
    "chunk_bos_id",
    "chunk_corpus",
    "key_value_agreement",
    "layer_set",
    "load_scan",
    "scan",
    "value_tokens",
]
