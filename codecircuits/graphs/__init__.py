"""Attribution graphs on TransformerLens 4: circuits of transcoder features or of MLP neurons.

- :func:`attribute` (:mod:`.attribute`): the graph of a prompt's next token in the local replacement model.
- :class:`Graph` (:mod:`.graph`): the nodes and direct effects, with ``prune()``, ``scores()``, ``to_json()``
  (circuit-tracer's node-link JSON) and ``show()`` (the offline viewer, :mod:`.viewer`).
- :mod:`.basis`: what the feature nodes are (:class:`NeuronBasis`, :class:`TranscoderBasis`).
- :mod:`.checks`: the graph against its linearised model (:func:`check_edges`) and against the real model
  (:func:`intervene`).
"""

from .attribute import LogitTargets, attribute, logit_targets
from .basis import Basis, NeuronBasis, TranscoderBasis, as_basis
from .checks import EdgeCheck, InterventionCheck, check_edges, intervene, linearised_inputs
from .graph import Graph, GraphScores

__all__ = [
    "Basis", "EdgeCheck", "Graph", "GraphScores", "InterventionCheck", "LogitTargets", "NeuronBasis",
    "TranscoderBasis", "as_basis", "attribute", "check_edges", "intervene", "linearised_inputs", "logit_targets",
]
