"""Layer agreement with the final prediction, by context length: every architecture of the matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codecircuits import InputError
from codecircuits import memories as mem
from codecircuits.memories import agreement as ag

TEXTS = [
    "import os\n\n\ndef read(path):\n    with open(path) as f:\n        return f.read()\n",
    "for i in range(10):\n    total = total + i * 2\n    print('i is', i)\n",
    "try:\n    value = int(text)\nexcept ValueError:\n    value = None\n",
]


def _reference(model, chunked):
    """Agreement counts per layer, by an independent route: argmax of (centred) vector @ W_U, one chunk at a time.

    The final norm's scale is positive, so it cannot change a single vector's argmax; only centring (LayerNorm)
    and the bias (residual readouts) matter.
    """
    n_layers = model.cfg.n_layers
    ln = not str(model.cfg.normalization_type).upper().startswith("RMS")
    mlp, resid, total = np.zeros(n_layers), np.zeros(n_layers), 0
    first = 0 if chunked.bos is None else 1
    for c in range(len(chunked)):
        logits, cache = model.run_with_cache(chunked.chunk_tokens(c).unsqueeze(0))
        final = logits[0, first:].argmax(-1)
        total += len(final)
        for layer in range(n_layers):
            x = cache[f"blocks.{layer}.hook_mlp_out"][0, first:]
            x = x - x.mean(-1, keepdim=True) if ln else x
            mlp[layer] += int(((x @ model.W_U).argmax(-1) == final).sum())
            r = cache[f"blocks.{layer}.hook_resid_post"][0, first:]
            r = model.ln_final(r) @ model.W_U + model.b_U
            resid[layer] += int((r.argmax(-1) == final).sum())
    return mlp / total, resid / total, total


def test_agreement_matches_reference(tiny):
    ch = mem.chunk_corpus(tiny, TEXTS, window=24, max_chunks=5)
    res = ag.layer_agreement(tiny, ch, batch_size=3, progress=False)
    n_layers = tiny.cfg.n_layers
    assert res.agree.shape == (2, n_layers, len(res.edges) - 1)
    mlp, resid, total = _reference(tiny, ch)
    assert int(res.total.sum()) == total == ch.n_tokens
    np.testing.assert_allclose(res.curve("mlp_out"), mlp)
    np.testing.assert_allclose(res.curve("resid_post"), resid)
    # the last residual, read with the frozen final scale and b_U, is the model's own prediction
    assert res.curve("resid_post")[-1] == 1.0
    assert np.all(res.by_bucket("resid_post")[-1][res.total.numpy() > 0] == 1.0)
    assert res.first_layer("resid_post", 1.0)[0] in range(n_layers)
    df = res.to_dataframe()
    assert set(df["component"]) == {"mlp_out", "resid_post"} and (df["agreement"].dropna().between(0, 1)).all()
    assert len(res.top(2)) == 2


def test_buckets_partition_predictions(tiny):
    ch = mem.chunk_corpus(tiny, TEXTS, window=16, max_chunks=4)
    res = ag.layer_agreement(tiny, ch, edges=[1, 4, 17], components=["mlp_out"], progress=False)
    body = ch.body
    lengths = np.concatenate([np.arange(1, len(ch.chunk_ids(c)) + 1) for c in range(len(ch))])
    assert res.total.tolist() == [int(((lengths >= 1) & (lengths < 4)).sum()), int((lengths >= 4).sum())]
    assert lengths.max() <= body and res.bucket_labels() == ["1-3", "4-16"]
    assert res.components == ("mlp_out",)
    assert ag.default_edges(16) == (1, 2, 4, 8, 16, 17)


def test_max_per_bucket(tiny):
    ch = mem.chunk_corpus(tiny, TEXTS, window=16, max_chunks=6)
    full = ag.layer_agreement(tiny, ch, edges=[1, 2, 8, 17], progress=False)
    same = ag.layer_agreement(tiny, ch, edges=[1, 2, 8, 17], max_per_bucket=10_000, progress=False)
    assert torch.equal(full.agree, same.agree) and torch.equal(full.total, same.total)
    capped = ag.layer_agreement(tiny, ch, edges=[1, 2, 8, 17], max_per_bucket=4, batch_size=2, progress=False)
    assert capped.total.tolist() == [min(4, int(t)) for t in full.total]
    assert (capped.agree <= capped.total).all()
    # the one-token bucket holds the first position of the first four chunks: same counts as a run on them alone
    first4 = ag.layer_agreement(
        tiny, mem.chunk_corpus(tiny, TEXTS, window=16, max_chunks=4), edges=[1, 2], progress=False
    )
    assert torch.equal(capped.agree[..., 0], first4.agree[..., 0])


def test_agreement_bad_input(tiny):
    with pytest.raises(InputError, match="components"):
        ag.layer_agreement(tiny, TEXTS, components=["attn_out"], progress=False)
    with pytest.raises(InputError, match="edges"):
        ag.layer_agreement(tiny, TEXTS, edges=[4, 2], progress=False)
    res = ag.layer_agreement(tiny, TEXTS, window=16, max_chunks=1, progress=False)
    with pytest.raises(InputError, match="component"):
        res.curve("attn")
    assert torch.isfinite(torch.as_tensor(res.curve())).all()


@pytest.mark.slow
def test_default_model_agreement_rises_in_late_layers(default_model):
    """RQ3 on smollm2-135m: residual agreement with the final top-1 is rare early and rises in the last layers."""
    res = ag.layer_agreement(default_model, "stdlib:validation", window=64, max_chunks=4, progress=False)
    resid, mlp = res.curve("resid_post"), res.curve("mlp_out")
    n = len(resid)
    early, late = resid[: n // 4].mean(), resid[-(n // 4) : -1].mean()
    assert resid[-1] == 1.0
    assert early < 0.1 and late > 0.2 and late > 3 * early  # measured: 0.03 vs 0.37 (findings_memories.md)
    assert resid[n // 2 :].mean() > resid[: n // 2].mean()
    assert mlp.max() < 0.3  # one FF layer's output alone rarely names the final token


def test_balanced_agreement_equals_the_row_major_count_when_it_takes_every_position(tiny):
    """One document, every position of every bucket: the balanced run counts exactly what the plain run counts
    on the same window (the window starts at the document's start when the document is one token longer)."""
    ref_ch = mem.chunk_corpus(tiny, TEXTS[:1], window=2, max_chunks=1, min_tokens=1)
    n = len(ref_ch.ids[0])
    bal = ag.balanced_agreement(tiny, TEXTS[:1], n_docs=1, positions=10_000, max_context=10_000, progress=False)
    span = bal.edges[-1] - 1
    assert span == n - 1
    plain = ag.layer_agreement(tiny, TEXTS[:1], window=span + (ref_ch.bos is not None), progress=False)
    assert plain.edges == bal.edges
    assert torch.equal(plain.total, bal.total) and torch.equal(plain.agree, bal.agree)
    assert bal.doc_agree.shape[-1] == 1 and bal.docs == ("text0",)


def test_balanced_agreement_draws_the_same_documents_into_every_bucket(tiny):
    texts = [t * 3 for t in TEXTS] * 2  # six documents, long enough for a 32-token context
    res = ag.balanced_agreement(tiny, texts, n_docs=4, positions=3, max_context=32, seed=1, progress=False)
    assert res.edges == (1, 2, 4, 8, 16, 32, 33)
    widths = np.diff(res.edges)
    # every bucket: the same four documents, min(3, width) predictions from each
    assert torch.equal(res.doc_total, torch.tensor(np.minimum(3, widths)).unsqueeze(1).expand(-1, 4))
    assert res.curve("resid_post")[-1] == 1.0 and len(res.docs) == 4
    again = ag.balanced_agreement(tiny, texts, n_docs=4, positions=3, max_context=32, seed=1, progress=False)
    assert torch.equal(again.doc_agree, res.doc_agree)
    iv = res.interval(lambda a: a.late_agreement("resid_post")[0], n_resamples=50)
    assert iv.n == 4 and iv.low <= iv.estimate <= iv.high
    with pytest.raises(InputError, match="n_docs"):
        ag.balanced_agreement(tiny, texts, n_docs=7, progress=False)
    with pytest.raises(InputError, match="per-document"):
        ag.layer_agreement(tiny, texts, window=16, progress=False).interval(lambda a: 0.0)
