"""Transcoders: sparse layers that stand in for MLPs (:mod:`.model`: the layer, sets, circuit-tracer's and SAELens's
file layouts; :mod:`.training`: training them on our corpora; :mod:`.quality`: how well they stand in, on held-out
code; :mod:`.data`: the token stream both read)."""

from .model import Transcoder, TranscoderSet, canonical_hook, load_transcoders, random_transcoders
from .quality import TranscoderQuality, transcoder_quality
from .training import TranscoderTrainingConfig, TranscoderTrainingResult, train_transcoders

__all__ = [
    "Transcoder",
    "TranscoderQuality",
    "TranscoderSet",
    "TranscoderTrainingConfig",
    "TranscoderTrainingResult",
    "canonical_hook",
    "load_transcoders",
    "random_transcoders",
    "train_transcoders",
    "transcoder_quality",
]
