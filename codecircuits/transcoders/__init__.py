"""Transcoders: sparse layers that stand in for MLPs (:mod:`.model`: the layer, sets, circuit-tracer's and SAELens's
file layouts)."""

from .model import Transcoder, TranscoderSet, canonical_hook, load_transcoders, random_transcoders

__all__ = ["Transcoder", "TranscoderSet", "canonical_hook", "load_transcoders", "random_transcoders"]
