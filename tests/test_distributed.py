"""codecircuits.distributed: the memories scan on two Ray workers equals one process's, bit for bit, on every
architecture of the matrix; a worker killed mid-scan costs only its shard; a shard that fails on bad input names
its documents while the others complete; an interrupted sharded scan resumes (in one process) to the same result.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from test_memories import TEXTS as MEMORY_TEXTS

from codecircuits import InputError
from codecircuits import memories as mem
from codecircuits.distributed import ShardsFailed, Workers, as_workers, model_spec, plan, run, shard_size
from codecircuits.testing import tiny_model

TEXTS = MEMORY_TEXTS * 3  # the memories tests' five documents, three times over: enough chunks for shards

FIELDS = ("values", "chunk", "pos", "act_sum", "act_sq")


def _assert_same(a, b):
    for f in FIELDS:
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert (a.tokens_done, a.chunks_done, a.docs) == (b.tokens_done, b.chunks_done, b.docs)


def test_shard_plan():
    assert [(s.start, s.stop) for s in plan(10, 4)] == [(0, 4), (4, 8), (8, 10)]
    assert [(s.index, s.start, s.stop) for s in plan(10, 4, start=6)] == [(0, 6, 10)]
    assert shard_size(100, 2, align=8) % 8 == 0 and shard_size(100, 2, align=8, cap=16) == 16
    with pytest.raises(InputError, match="at least one item"):
        plan(5, 0)
    with pytest.raises(InputError, match="at least 1"):
        Workers(0)
    with pytest.raises(InputError, match="bool"):
        as_workers(True)


def test_scan_on_two_workers_equals_one_process(tiny, ray_workers, tmp_path):
    ch = mem.chunk_corpus(tiny, TEXTS, window=16)
    assert len(ch) >= 24
    one = mem.scan(tiny, ch, k=3, batch_size=4, progress=False)
    two = run(mem.scan, tiny, ch, k=3, batch_size=4, checkpoint_every=8, progress=False, workers=ray_workers)
    _assert_same(one, two)
    assert two.complete and two.activation_stats().mean.shape == (tiny.cfg.n_layers, tiny.cfg.d_mlp)

    # interrupted after the first shards: the checkpoint holds a prefix, and resuming in one process finishes it
    ck = tmp_path / "scan.safetensors"

    def stop(state):
        if state.chunks_done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(mem.scan, tiny, ch, k=3, batch_size=4, checkpoint=ck, checkpoint_every=8, progress=False,
                 workers=ray_workers, callback=stop)
    part = mem.load_scan(ck)
    assert 8 <= part.chunks_done < len(ch)
    resumed = mem.scan(tiny, ch, k=3, batch_size=4, checkpoint=ck, resume=True, progress=False)
    _assert_same(one, resumed)


def test_replicas_must_match_the_parent_model(tiny, ray_workers):
    spec = model_spec(tiny)
    assert spec.name_or_path == tiny.codecircuits_path
    p = next(tiny.parameters())
    saved = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)  # an edit after loading: the workers' replicas would be another model
        try:
            with pytest.raises(InputError, match="differ"):
                ray_workers.replicas(tiny)
        finally:
            p.copy_(saved)  # exactly (x + 1 - 1 is not x in floating point), for the tests that follow
    ray_workers.replicas(tiny)  # restored: accepted again


def test_killed_worker_costs_only_its_shard(ray_workers, tiny_dirs):
    """SIGKILL one worker's process during a scan: Ray restarts it, runs its shard again, the result is equal."""
    model = tiny_model("llama", tiny_dirs["llama"])
    ch = mem.chunk_corpus(model, TEXTS * 6, window=16)
    one = mem.scan(model, ch, k=3, batch_size=2, progress=False)
    before = ray_workers.pids()
    killed = []

    def kill_one(state):
        if not killed:  # the first shard is merged; the other worker is busy with the next ones
            os.kill(before[1], signal.SIGKILL)
            killed.append(before[1])

    two = run(mem.scan, model, ch, k=3, batch_size=2, checkpoint_every=4, progress=False, workers=ray_workers,
                   callback=kill_one)
    assert killed
    _assert_same(one, two)
    after = ray_workers.pids()
    assert after[0] == before[0] and after[1] != before[1]  # that worker was restarted, the other kept going


def test_failed_shard_names_its_documents(ray_workers, tiny_dirs):
    model = tiny_model("llama", tiny_dirs["llama"])
    names = [f"text{i}" for i in range(len(TEXTS))]  # the names chunk_corpus gives a list of texts
    ch = mem.chunk_corpus(model, TEXTS, window=16)
    bad = 4
    ch.ids[bad][0] = 10**6  # a token id outside the vocabulary: the embedding fails on that document's chunks
    with pytest.raises(ShardsFailed) as err:
        run(mem.scan, model, ch, k=3, batch_size=4, checkpoint_every=8, progress=False, workers=ray_workers)
    e = err.value
    assert e.failures and all(names[bad] in f.what for f in e.failures)
    assert "IndexError" in str(e) and names[bad] in str(e)
    # the other shards completed: the partial scan has every chunk but the failed shards'
    skipped = {c for a, b in e.partial.settings["skipped_chunks"] for c in range(a, b)}
    bad_chunks = {c for c in range(len(ch)) if ch.chunk_doc[c] == bad and ch.chunk_start[c] == 0}
    assert bad_chunks <= skipped and len(skipped) < len(ch)
    used = set(e.partial.chunk[e.partial.chunk >= 0].tolist())
    assert used and not used & skipped


def test_no_ray_without_workers(tiny_dirs):
    """Without workers= nothing changes and Ray is never imported."""
    code = textwrap.dedent(f"""
        import sys
        from codecircuits import load_model, memories
        m = load_model({str(tiny_dirs["llama"])!r}, device="cpu")
        memories.scan(m, ["def f(x):\\n    return x\\n"], k=2, window=8, progress=False)
        from codecircuits import distributed
        distributed.run(memories.scan, m, ["def f(x):\\n    return x\\n"], k=2, window=8, progress=False)
        from codecircuits.commands import _options
        import argparse
        p = argparse.ArgumentParser(); _options.worker_options(p)
        assert _options.workers_from(p.parse_args([])) is None
        assert _options.workers_from(p.parse_args(["--workers", "2"])).n == 2
        assert "ray" not in sys.modules, "ray was imported"
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_scan_on_two_workers_equals_one_process_on_the_default_model(default_model, ray_workers):
    ch = mem.chunk_corpus(default_model, "stdlib:test", window=32, max_chunks=12)
    one = mem.scan(default_model, ch, k=5, batch_size=4, layers=range(0, 10, 3), progress=False)
    two = run(mem.scan, default_model, ch, k=5, batch_size=4, layers=range(0, 10, 3), checkpoint_every=4,
              progress=False, workers=ray_workers)
    _assert_same(one, two)


def test_second_workers_on_a_busy_cluster_is_refused(tiny, ray_workers):
    ray_workers.replicas(tiny)  # its two actors hold both CPUs of the local cluster
    other = Workers(2)
    with pytest.raises(InputError, match="free CPUs"):
        other.actors()
    other.close()
    assert ray_workers.pids()  # the first one is untouched
