"""Layer agreement by context length: :mod:`codecircuits.memories.agreement`, under its old name (everything
public is re-exported here)."""

from .memories.agreement import COMPONENTS, LayerAgreement, default_edges, layer_agreement

__all__ = ["COMPONENTS", "LayerAgreement", "default_edges", "layer_agreement"]
