"""Tasks: prompts with labels and counterfactual pairs (``from codecircuits.tasks import parens``)."""

from . import parens

__all__ = ["parens"]
