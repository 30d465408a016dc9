"""How a result made on consecutive shards of its prompts becomes one result.

A result dataclass marks each field that holds one entry per prompt with ``field(metadata=PER_PROMPT)``
(tensors with the prompt as their first axis, tuples with one item per prompt); :func:`concat_per_prompt`
joins exactly those fields of the parts in order and keeps every other field of the first part. A field added
later is merged correctly as soon as it is marked, and ``tests/test_distributed_jobs.py`` checks every
tensor field of the merged results against one process's, so an unmarked per-prompt field fails there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from ..errors import InputError

PER_PROMPT = {"per_prompt": True}


def per_prompt_fields(cls) -> tuple[str, ...]:
    """The names of the fields of dataclass ``cls`` marked :data:`PER_PROMPT`."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("per_prompt"))


def concat_per_prompt(parts: Sequence, **overrides):
    """The parts' per-prompt fields joined in order (``None`` stays ``None``); the other fields from the first
    part, then ``overrides``."""
    parts = list(parts)
    if not parts:
        raise InputError("Nothing to merge: give at least one result.")
    first = parts[0]
    out = {}
    for name in per_prompt_fields(type(first)):
        vals = [getattr(p, name) for p in parts]
        if vals[0] is None:
            out[name] = None
        elif isinstance(vals[0], torch.Tensor):
            out[name] = torch.cat(vals)
        elif isinstance(vals[0], dict):
            out[name] = {k: torch.cat([v[k] for v in vals]) for k in vals[0]}
        else:
            out[name] = type(vals[0])(x for v in vals for x in v)
    out.update(overrides)
    return dataclasses.replace(first, **out)


__all__ = ["PER_PROMPT", "concat_per_prompt", "per_prompt_fields"]
