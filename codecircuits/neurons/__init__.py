"""Neuron-level attribution (Yu & Ananiadou, EMNLP 2024): which FFN neurons, heads and attention neurons raise
the log-probability of the predicted token, the competing scores the paper compares against, the top-k
zero-ablation evaluation (MRR and probability), and query neurons.

Every score reads a vector ``v`` through the unembedding with the final norm's scale frozen from the clean run
(:mod:`codecircuits.lens`), at one position (the last by default), for a target token ``w`` (the clean run's
top-1 unless given)::

    Imp(v) = log p(w | base + v) - log p(w | base)

with ``base = resid_mid[l]`` for FFN neurons (``resid_pre[l] + attn_out[l]`` for parallel attention+MLP blocks,
which have no ``resid_mid``) and ``base = resid_pre[l]`` for heads and attention neurons (METHODS §3.1).

Modules
-------
- :mod:`~codecircuits.neurons.results`: :class:`Attribution`, the result of every score.
- :mod:`~codecircuits.neurons.runs`: the clean run (:func:`clean_run`) and its inputs: targets, the scored
  position, the layers scored.
- :mod:`~codecircuits.neurons.readout`: the frozen-scale readout kernel shared by every score (readout rows
  ``W @ W_U`` computed once per layer and shared by every prompt; ``exact_authors_lens``).
- :mod:`~codecircuits.neurons.ffn`: FFN neurons, vectorised (:func:`ffn_neurons`, :data:`FFN_SCORES`), and the
  per-neuron reference loop (:func:`ffn_neurons_loop`).
- :mod:`~codecircuits.neurons.attention`: heads (:func:`heads`) and attention neurons (:func:`attention_neurons`).
- :mod:`~codecircuits.neurons.query`: query neurons (:func:`query_neurons`, METHODS §3.2).
- :mod:`~codecircuits.neurons.knockout`: hooks that zero neurons, and the top-k zero-ablation
  evaluation (:func:`evaluate_top_neurons`, METHODS Table 2; :func:`evaluate_top_attention_neurons`).

Everything public is importable from here (``from codecircuits import neurons; neurons.ffn_neurons(...)``).
"""

from .._moved import package_getattr
from .attention import attention_neurons, heads
from .ffn import FFN_SCORES, ffn_neurons, ffn_neurons_loop, ffn_scores_batch
from .knockout import (
    TopNeuronEval,
    attention_neuron_mask_hooks,
    evaluate_top_attention_neurons,
    evaluate_top_neurons,
    neuron_mask_hooks,
)
from .query import QueryNeurons, query_neurons
from .readout import DEFAULT_READOUT_BUDGET, add_and_score, chunk_size, readout_logits, readout_rows
from .results import Attribution
from .runs import check_layers, check_position, clean_run, has_resid_mid, resolve_target, target_token_strings

__all__ = [
    "DEFAULT_READOUT_BUDGET",
    "FFN_SCORES",
    "Attribution",
    "QueryNeurons",
    "TopNeuronEval",
    "add_and_score",
    "attention_neuron_mask_hooks",
    "attention_neurons",
    "check_layers",
    "check_position",
    "chunk_size",
    "clean_run",
    "evaluate_top_attention_neurons",
    "evaluate_top_neurons",
    "ffn_neurons",
    "ffn_neurons_loop",
    "ffn_scores_batch",
    "has_resid_mid",
    "heads",
    "neuron_mask_hooks",
    "query_neurons",
    "readout_logits",
    "readout_rows",
    "resolve_target",
    "target_token_strings",
]

__getattr__ = package_getattr(__name__)  # the old names that moved (codecircuits._moved.RENAMED)
