"""Sharded sweeps, attributions and edge scores (codecircuits.distributed.sweeps / neurons / edges) on two Ray
workers equal the one-process results, on every family of the matrix.

The workers hold one model's replicas at a time, so each family's checks share one test (the ``tiny`` fixture
orders tests by family)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from codecircuits import ablation, cna, patching
from codecircuits import circuits as cc
from codecircuits.core.metrics import rowwise
from codecircuits.distributed import run
from codecircuits.errors import InputError, UnsupportedArchitectureError
from codecircuits.neurons import ffn_neurons
from codecircuits.testing import toy_metric

N, LEN = 6, 7  # prompts (two workers, one prompt per shard), tokens each


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def same_sweep(a, b, exact: bool = True):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            same_sweep(a[k], b[k], exact)
        return
    check = (lambda x, y: torch.equal(x, y)) if exact else (lambda x, y: close(x, y) is None)
    assert a.axes == b.axes and a.labels == b.labels and a.site == b.site and a.method == b.method
    assert a.per_example.shape == b.per_example.shape
    assert check(a.per_example, b.per_example), (a.per_example - b.per_example).abs().max()
    assert check(a.base, b.base)
    assert (a.source is None) == (b.source is None)
    if a.source is not None:
        assert check(a.source, b.source)


def same_fields(a, b):
    """Every field of two results of one dataclass equal (tensors exactly, NaN where not scored)."""
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            torch.testing.assert_close(x, y, atol=0, rtol=0, equal_nan=True, msg=f.name)
        elif isinstance(x, dict) and x and isinstance(next(iter(x.values())), torch.Tensor):
            assert x.keys() == y.keys(), f.name
            for k in x:
                torch.testing.assert_close(x[k], y[k], atol=0, rtol=0, equal_nan=True, msg=f"{f.name}[{k}]")
        else:
            assert x == y, f.name


def prompts(model):
    """``N`` clean prompts of ``LEN`` random tokens and corrupted copies that first differ at different positions
    (so the shards' first differences are not all the same), and one label per prompt."""
    g = torch.Generator().manual_seed(0)
    vocab = int(model.cfg.d_vocab)
    clean = torch.randint(3, vocab, (N, LEN), generator=g)
    corr = clean.clone()
    for i in range(N):
        p = 2 + i % 3
        corr[i, p] = (clean[i, p] + 1 + i) % vocab
    labels = torch.randint(0, vocab, (N,), generator=g)
    return clean, corr, labels


def label_metric(labels):
    return rowwise(lambda logits, ex: logits[:, -1].log_softmax(-1)[torch.arange(len(ex)), labels[ex]])


def test_sharded_jobs_equal_one_process(tiny, ray_workers):
    model, w = tiny, ray_workers
    clean, corr, labels = prompts(model)
    metrics = {"toy": toy_metric, "label": label_metric(labels)}
    last = int(model.cfg.n_layers) - 1

    # ablation sweeps: zero and mean (the mean over all prompts in every shard)
    kw = dict(layers=[0, last], progress=False)
    one = ablation.head_sweep(model, clean, metrics, **kw)
    same_sweep(one, run(ablation.head_sweep, model, clean, metrics, workers=w, **kw))
    kw = dict(kind="mean", layers=[last], neurons=[0, 3, 5], positions=[-1, -2], progress=False)
    one = ablation.neuron_sweep(model, clean, toy_metric, **kw)
    same_sweep(one, run(ablation.neuron_sweep, model, clean, toy_metric, workers=w, **kw), exact=False)
    kw = dict(kind="mean", reference=corr, mean_over="prompts_and_positions", progress=False)
    one = ablation.layer_sweep(model, clean, metrics, **kw)
    same_sweep(one, run(ablation.layer_sweep, model, clean, metrics, workers=w, **kw), exact=False)

    # patching: by layer and position (labels of the first prompt), and heads
    for kw in (dict(site="resid_pre"), dict(site="z", layers=[0, last])):
        one = patching.sweep(model, clean, corr, label_metric(labels), progress=False, **kw)
        many = run(patching.sweep, model, clean, corr, label_metric(labels), workers=w, progress=False, **kw)
        same_sweep(one, many, exact=False)

    # CNA: the head sweep (per prompt) and CNA against one head; FFN neuron attribution
    a = cna.head_sweep(model, clean, labels, batch_size=2, progress=False)  # shards: whole batches
    b = run(cna.head_sweep, model, clean, labels, batch_size=2, workers=w, progress=False)
    for f in ("accuracy", "logprob", "correct", "prompt_logprob", "base_correct", "labels"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert a.base_accuracy == b.base_accuracy
    assert abs(a.base_logprob - b.base_logprob) <= 1e-6 * max(1.0, abs(a.base_logprob))
    kw = dict(target=labels, layers=[last], batch_size=2, progress=False)
    a, b = cna.compare(model, clean, (0, 0), **kw), run(cna.compare, model, clean, (0, 0), workers=w, **kw)
    same_fields(a, b)  # every field, so a per-prompt field that CNAResult.merge does not join fails here
    kw = dict(scores=("logprob_increase", "coefficient"), layers=[0, last], batch_size=2, progress=False)
    a, b = ffn_neurons(model, clean, **kw), run(ffn_neurons, model, clean, workers=w, **kw)
    same_fields(a, b)

    # edge scores: the mean over pairs, weighted by the shards' pairs
    try:
        cc.check_supported(model)
    except UnsupportedArchitectureError:
        return
    for kw in (dict(method="EAP"), dict(method="EAP-IG-inputs", steps=2, level="neuron")):
        a = cc.edge_scores(model, clean, corr, label_metric(labels), **kw)
        b = run(cc.edge_scores, model, clean, corr, label_metric(labels), workers=w, **kw)
        assert b.n_examples == a.n_examples == N
        torch.testing.assert_close(b.scores, a.scores, atol=1e-6, rtol=1e-5)
        if a.neuron_scores is not None:
            torch.testing.assert_close(b.neuron_scores, a.neuron_scores, atol=1e-6, rtol=1e-5)


def test_failed_shard_names_its_prompts(tiny, family, ray_workers):
    if family != "llama":
        pytest.skip("one family is enough (a failure is not architecture-specific)")
    from codecircuits.distributed import ShardsFailed

    texts = ["def f(x): return x", "a = 1 + 2 + 3", "(", "print(len(str(123)))", "x = [1, 2, 3]", "y = (4, 5)"]
    short = len(tiny.to_tokens("(")[0])
    pos = -(short + 1)  # outside the short prompt only
    assert all(len(tiny.to_tokens(t)[0]) > short for i, t in enumerate(texts) if i != 2)
    with pytest.raises(ShardsFailed) as e:
        run(ffn_neurons, tiny, texts, pos=pos, layers=[0], scores="coefficient", batch_size=1, workers=ray_workers,
                    progress=False)
    err = e.value
    assert [f.shard.start for f in err.failures] == [2]
    assert "prompts 2-2" in str(err) and "'('" in str(err) and "pos=" in str(err)
    assert err.partial is not None and err.partial.n_prompts == len(texts) - 1
    rest = [t for i, t in enumerate(texts) if i != 2]
    one = ffn_neurons(tiny, rest, pos=pos, layers=[0], scores="coefficient", batch_size=1, progress=False)
    assert torch.equal(err.partial.scores["coefficient"], one.scores["coefficient"])

    # a plain metric built for all the prompts' labels is refused before any shard runs; resample is refused
    answers = torch.arange(N)
    clean = torch.randint(3, int(tiny.cfg.d_vocab), (N, LEN), generator=torch.Generator().manual_seed(1))
    with pytest.raises(InputError, match="rowwise"):
        run(ablation.head_sweep, tiny, clean, lambda lg: lg[torch.arange(N), -1, answers], workers=ray_workers)
    with pytest.raises(InputError, match="Resample"):
        run(ablation.head_sweep, tiny, clean, toy_metric, kind="resample", workers=ray_workers)


def test_studies_run_sharded_jobs_on_workers(tiny, family, ray_workers):
    if family != "llama":
        pytest.skip("the studies' sharded calls are checked per family above; one family runs the studies")
    from codecircuits.studies import circuit as circuit_study
    from codecircuits.studies import cna as cna_study

    kw = dict(n_sweep=4, n_cna=2, n_top10=2, top10_layers=None, paren_n_values=(0, 1), paren_numbers=2, ns=(2, 3),
              progress=False)
    a, b = cna_study.run(tiny, **kw), cna_study.run(tiny, workers=ray_workers, **kw)
    for task in ("arithmetic", "parens"):
        fa, fb = getattr(a, task), getattr(b, task)
        assert fa.head == fb.head and fa.cna_prompts == fb.cna_prompts
        assert torch.equal(fa.sweep.correct, fb.sweep.correct)
        torch.testing.assert_close(fa.cna.cna, fb.cna.cna, atol=1e-6, rtol=1e-6)
        assert fa.mask_keep.table.equals(fb.mask_keep.table)
    ma, mb = a.metrics(), b.metrics()
    assert ma.keys() == mb.keys()
    for k in ma:  # json-safe: NaN is None
        assert (ma[k] is None and mb[k] is None) or ma[k] == pytest.approx(mb[k], rel=1e-6, abs=1e-6), k

    cfg = circuit_study.CircuitConfig.tiny()
    a, b = circuit_study.run(tiny, cfg, progress=False), circuit_study.run(tiny, cfg, workers=ray_workers, progress=False)
    assert b.scores.n_examples == a.scores.n_examples == cfg.n_pairs
    torch.testing.assert_close(b.scores.scores, a.scores.scores, atol=1e-6, rtol=1e-5)

