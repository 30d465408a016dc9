"""End-to-end reproductions of papers' experiments, composed from the methods modules."""

from . import parens

__all__ = ["parens"]
