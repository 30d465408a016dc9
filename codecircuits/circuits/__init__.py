"""Automatic circuit discovery: edge attribution (EAP, EAP-IG) over a graph true to grouped-query attention,
circuits selected and pruned from its scores, and MIB's faithfulness metrics.

- :mod:`~codecircuits.circuits.graph`: nodes, edges, their names (EAP-IG's) and the grouped/ungrouped views.
- :mod:`~codecircuits.circuits.support`: which models edges are supported on, and how each head's inputs are
  reached on the model's bridge (its split inputs, or its projections recomputed).
- :mod:`~codecircuits.circuits.attribution`: the edge scores of every method.
- :mod:`~codecircuits.circuits.selection`: circuits by top-n, threshold or greedy, and pruning.
- :mod:`~codecircuits.circuits.faithfulness`: running the model with everything outside a circuit patched or
  ablated, many circuits per batched forward; exact edge patching; the faithfulness curve, CPR and CMD.
- :mod:`~codecircuits.circuits.interop`: EAP-IG's graph files read and written; TransformerLens's edge results.
"""

from .._moved import package_getattr
from .attribution import LEVELS, METHODS, EdgeScores, edge_scores
from .faithfulness import (
    ABLATIONS,
    MIB_PERCENTAGES,
    FaithfulnessCurve,
    areas,
    circuit_metric,
    cmd,
    cpr,
    edge_auroc,
    exact_edge_scores,
    faithfulness_curves,
    faithfulness_stat,
)
from .graph import Graph
from .interop import from_transformer_lens, read_eapig, write_eapig
from .selection import Circuit, greedy, pruned, random_scores, threshold, top_n
from .support import check_supported

__all__ = [
    "ABLATIONS",
    "MIB_PERCENTAGES",
    "FaithfulnessCurve",
    "areas",
    "faithfulness_stat",
    "circuit_metric",
    "cmd",
    "cpr",
    "edge_auroc",
    "exact_edge_scores",
    "faithfulness_curves",
    "from_transformer_lens",
    "read_eapig",
    "write_eapig",
    "LEVELS",
    "METHODS",
    "Circuit",
    "EdgeScores",
    "Graph",
    "check_supported",
    "edge_scores",
    "greedy",
    "pruned",
    "random_scores",
    "threshold",
    "top_n",
]

__getattr__ = package_getattr(__name__)  # the old module names that moved (codecircuits._moved.MOVED)
