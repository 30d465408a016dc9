"""Layer agreement by context length: :mod:`codecircuits.memories.agreement`, under its old name (everything
public is re-exported here)."""

from .memories.agreement import COMPONENTS, LayerAgreement, balanced_agreement, default_edges, layer_agreement

__all__ = ["COMPONENTS", "LayerAgreement", "balanced_agreement", "default_edges", "layer_agreement"]
