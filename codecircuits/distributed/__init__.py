"""Sharded jobs on Ray: corpus scans, sweeps over many prompts and edge scores past one process.

``distributed.run(method, *args, workers=..., **kwargs)`` (a number for a local cluster started on the fly, a Ray
address to join a running one, or a :class:`Workers` to reuse) shards a method's job over Ray actors that each
hold one replica of the model; the studies take ``workers=`` and pass it here, and ``--workers N`` /
``--ray ADDRESS`` do the same on the command line. The methods themselves are one-process functions that never
import this package; their results merge themselves. Without it nothing changes and Ray
is not imported. Shards are deterministic ranges of item indices, and partial results merge exactly (top-K
merges associatively, sums add, per-example values concatenate in index order), so a sharded result equals the
one-process result. A worker that dies costs only its shard, which Ray runs again on the restarted worker.

- :mod:`~codecircuits.distributed.dispatch`: :func:`run`, the one entry point, and the table of what it shards.
- :mod:`~codecircuits.distributed.workers`: :class:`Workers` (the cluster and the model replicas), ``map``.
- :mod:`~codecircuits.distributed.shards`: shards, their plan, and :class:`ShardsFailed`.
- :mod:`~codecircuits.distributed.scan`: the memories trigger-example scan and activation sums.
- :mod:`~codecircuits.distributed.sweeps`: ablation sweeps and the patching sweep, by prompt (pair).
- :mod:`~codecircuits.distributed.neurons`: ``cna.head_sweep``, ``cna.compare`` and ``neurons.ffn_neurons``, by prompt.
- :mod:`~codecircuits.distributed.edges`: ``circuits.edge_scores``, by prompt pair (means weighted by counts).
- :mod:`~codecircuits.distributed.jobs`: what those share (shards of a prompt set, a shard's metric).
"""

from .dispatch import run, shardable
from .shards import Shard, ShardFailure, ShardsFailed, plan, shard_size
from .workers import ModelSpec, Workers, as_workers, fingerprint, model_spec, using

__all__ = [
    "ModelSpec",
    "Shard",
    "ShardFailure",
    "ShardsFailed",
    "Workers",
    "as_workers",
    "fingerprint",
    "model_spec",
    "plan",
    "run",
    "shard_size",
    "shardable",
    "using",
]
