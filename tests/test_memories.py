"""Trigger-example scan, checkpoint / resume, reload, value projections: every architecture of the matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from browser import SCREENSHOT_FAMILY, check_study_report

from codecircuits import InputError
from codecircuits import memories as mem

TEXTS = [
    "import os\n\n\ndef read(path):\n    with open(path) as f:\n        return f.read()\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n    def norm(self):\n"
    "        return (self.x ** 2 + self.y ** 2) ** 0.5\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n    else:\n        continue\n",
    "try:\n    value = int(text)\nexcept ValueError:\n    value = None\n# fall back to the default\n",
    "import re\nPATTERN = re.compile(r'\\d+')\nnumbers = [int(m) for m in PATTERN.findall('a1b22c333')]\n",
]


def _brute_force(model, chunked, layer, rank_by):
    """Top trigger (score, chunk, pos) of every key of ``layer`` by running each chunk alone."""
    best = []
    for c in range(len(chunked)):
        _, cache = model.run_with_cache(
            chunked.chunk_tokens(c).unsqueeze(0), names_filter=f"blocks.{layer}.mlp.hook_post"
        )
        a = cache[f"blocks.{layer}.mlp.hook_post"][0]
        a = a[1:] if chunked.bos is not None else a
        best.append(a.abs() if rank_by == "abs" else a)
    return best


def test_chunking_round_robin_and_caps(tiny):
    ch = mem.chunk_corpus(tiny, TEXTS, window=16)
    # breadth-first: the first chunk of every document comes before any second chunk
    assert list(ch.chunk_doc[: len(TEXTS)]) == list(range(len(TEXTS)))
    assert all(s == 0 for s in ch.chunk_start[: len(TEXTS)])
    # chunks tile every document exactly
    for d in range(len(TEXTS)):
        got = np.concatenate([ch.chunk_ids(c) for c in range(len(ch)) if ch.chunk_doc[c] == d])
        assert np.array_equal(got, ch.ids[d][: len(got)]) and len(ch.ids[d]) - len(got) < 2
    capped = mem.chunk_corpus(tiny, TEXTS, window=16, max_tokens=40)
    assert capped.n_tokens <= 40
    assert np.array_equal(capped.chunk_doc, ch.chunk_doc[: len(capped)])
    with pytest.raises(InputError, match="window"):
        mem.chunk_corpus(tiny, TEXTS, window=1)
    with pytest.raises(InputError, match="corpus"):
        mem.chunk_corpus(tiny, 42)


def _slots(ch):
    return [(ch.names[int(d)], int(s)) for d, s in zip(ch.chunk_doc, ch.chunk_start)]


def test_sampled_chunking_is_uniform_without_repeats(tiny):
    long = [t * 12 for t in TEXTS]  # documents of several chunks each
    full = mem.chunk_corpus(tiny, long, window=16, order="sample", seed=3)
    breadth = mem.chunk_corpus(tiny, long, window=16)
    # no budget: every slot of every document exactly once, in a seeded order other than breadth-first
    assert sorted(_slots(full)) == sorted(_slots(breadth)) and len(set(_slots(full))) == len(full)
    assert _slots(full) != _slots(breadth)
    again = mem.chunk_corpus(tiny, long, window=16, order="sample", seed=3)
    assert _slots(again) == _slots(full)
    assert _slots(mem.chunk_corpus(tiny, long, window=16, order="sample", seed=4)) != _slots(full)
    # a small budget: drawn chunks, no repeats, within budget, each holding its document's tokens at its slot
    big = [t * 200 for t in TEXTS]
    small = mem.chunk_corpus(tiny, big, window=16, max_tokens=300, order="sample", seed=0)
    assert 0 < small.n_tokens <= 300 and len(set(_slots(small))) == len(small)
    for c in range(len(small)):
        d, s = int(small.chunk_doc[c]), int(small.chunk_start[c])
        assert s % small.body == 0 and np.array_equal(small.chunk_ids(c), small.ids[d][s : s + small.body])
    # unlike breadth-first, the sample does not start every file at its header
    starts = np.concatenate(
        [mem.chunk_corpus(tiny, big, window=16, max_chunks=40, order="sample", seed=k).chunk_start for k in range(3)]
    )
    assert np.mean(starts == 0) < 0.2
    assert all(s == 0 for s in mem.chunk_corpus(tiny, big, window=16, max_chunks=5).chunk_start)
    with pytest.raises(InputError, match="order"):
        mem.chunk_corpus(tiny, TEXTS, window=16, order="random")


def test_scan_matches_brute_force(tiny):
    ch = mem.chunk_corpus(tiny, TEXTS, window=24, max_chunks=9)
    s = mem.scan(tiny, ch, k=3, batch_size=4, progress=False)
    assert s.values.shape == (tiny.cfg.n_layers, tiny.cfg.d_mlp, 3)
    assert s.complete and s.tokens_done == ch.n_tokens and len(s.chunk_doc) == 9
    rank_by = s.settings["rank_by"]
    assert rank_by == ("abs" if tiny.cfg.gated_mlp else "signed")
    layer = tiny.cfg.n_layers - 1
    per_chunk = _brute_force(tiny, ch, layer, rank_by)
    chunk_max = torch.stack([a.max(0).values for a in per_chunk])  # [chunk, neuron]
    want = chunk_max.topk(3, dim=0).values.T  # [neuron, 3]
    torch.testing.assert_close(s.scores()[layer], want, atol=1e-5, rtol=1e-5)
    # the recorded chunk and position hold the recorded coefficient
    for n in range(0, tiny.cfg.d_mlp, 17):
        c, p = int(s.chunk[layer, n, 0]), int(s.pos[layer, n, 0])
        local = p - int(ch.chunk_start[c])
        assert per_chunk[c][local, n] == pytest.approx(float(s.scores()[layer, n, 0]), abs=1e-5)
    ex = s.examples(layer, 0, ch)
    assert len(ex) == 3 and ex[0].coefficient == pytest.approx(float(s.values[layer, 0, 0]))
    assert ex[0].prefix.endswith(ex[0].trigger) and ex[0].prefix in TEXTS[ch.chunk_doc[ex[0].chunk]]
    toks, acts = mem.chunk_activations(tiny, ch, ex[0].chunk, layer, 0)
    assert acts[ex[0].pos - int(ch.chunk_start[ex[0].chunk])] == pytest.approx(ex[0].coefficient, abs=1e-5)
    assert "".join(toks) in TEXTS[ch.chunk_doc[ex[0].chunk]]
    assert len(s.top(4)) == 4 and {"layer", "neuron", "coefficient"} <= set(s.top(4).columns)
    df = s.to_dataframe(layer=layer, neuron=0)
    assert len(df) == 3 and (df["rank"] == [0, 1, 2]).all()


def test_resumed_scan_equals_uninterrupted(tiny, tmp_path):
    kw = dict(k=4, window=16, max_chunks=10, batch_size=2, progress=False)
    full = mem.scan(tiny, TEXTS, **kw)
    path = tmp_path / "scan.safetensors"

    class Stop(Exception):
        pass

    def interrupt(state):
        if state.chunks_done >= 6:
            raise Stop  # after the checkpoint at 4 chunks, before the one at 8

    with pytest.raises(Stop):
        mem.scan(tiny, TEXTS, **kw, checkpoint=path, checkpoint_every=4, callback=interrupt)
    partial = mem.load_scan(path)
    assert partial.chunks_done == 4 and not partial.complete
    resumed = mem.scan(tiny, TEXTS, **kw, checkpoint=path, checkpoint_every=4, resume=True)
    assert resumed.chunks_done == full.chunks_done and resumed.tokens_done == full.tokens_done
    for name in ("values", "chunk", "pos"):
        assert torch.equal(getattr(resumed, name), getattr(full, name)), name
    reloaded = mem.load_scan(tmp_path)  # a directory finds scan.safetensors
    assert torch.equal(reloaded.values, full.values) and reloaded.settings == full.settings
    assert reloaded.docs == full.docs and reloaded.complete
    # a checkpoint from other settings is refused, not silently mixed
    with pytest.raises(InputError, match="k="):
        mem.scan(tiny, TEXTS, **{**kw, "k": 5}, checkpoint=path, resume=True)
    with pytest.raises(InputError, match="corpus"):
        mem.scan(tiny, TEXTS[:3], **kw, checkpoint=path, resume=True)


def test_scan_bad_input(tiny, tmp_path):
    with pytest.raises(InputError, match="k must"):
        mem.scan(tiny, TEXTS, k=0, progress=False)
    with pytest.raises(InputError, match="rank_by"):
        mem.scan(tiny, TEXTS, rank_by="max", progress=False)
    with pytest.raises(InputError, match="layers"):
        mem.scan(tiny, TEXTS, layers=[99], progress=False)
    with pytest.raises(InputError, match="No scan file"):
        mem.load_scan(tmp_path / "missing.safetensors")
    s = mem.scan(tiny, TEXTS, k=2, window=16, max_chunks=4, layers=[0], progress=False)
    with pytest.raises(InputError, match="not scanned"):
        s.examples(1, 0, mem.chunk_corpus(tiny, TEXTS, window=16, max_chunks=4))
    with pytest.raises(InputError, match="different texts"):
        s.examples(0, 0, mem.chunk_corpus(tiny, TEXTS[:2], window=16))


def test_value_tokens_and_agreement(tiny):
    v = mem.value_tokens(tiny, k=5, progress=False)
    n_layers, d_mlp = tiny.cfg.n_layers, tiny.cfg.d_mlp
    assert v.top_ids.shape == (n_layers, d_mlp, 5) and v.bottom_ids.shape == (n_layers, d_mlp, 5)
    layer, n = n_layers - 1, 3
    w = tiny.W_out[layer][n].detach().float()
    if not tiny.cfg.normalization_type.startswith("RMS"):
        w = w - w.mean()
    logits = w @ tiny.W_U.detach().float()
    assert torch.equal(v.top_ids[layer, n], logits.topk(5).indices)
    assert torch.equal(v.bottom_ids[layer, n], (-logits).topk(5).indices)
    assert (v.top_logits[..., :-1] >= v.top_logits[..., 1:]).all()
    assert len(v.tokens(layer, n)) == 5 and len(v.top(3)) == 3 and v.top(3)["logit"].is_monotonic_decreasing
    assert "<svg" in v.plot().to_svg()
    ch = mem.chunk_corpus(tiny, TEXTS, window=16, max_chunks=8)
    s = mem.scan(tiny, ch, k=2, progress=False)
    nxt = s.next_token_ids(ch)
    c, p = int(s.chunk[0, 0, 0]), int(s.pos[0, 0, 0])
    ids = ch.ids[int(ch.chunk_doc[c])]
    assert int(nxt[0, 0, 0]) == (int(ids[p + 1]) if p + 1 < len(ids) else -1)
    trig = s.trigger_token_ids(ch)
    assert int(trig[0, 0, 0]) == int(ids[p])
    purity = s.token_purity(ch)
    for layer_, n_ in [(0, 0), (n_layers - 1, 2)]:
        got = [int(t) for t in trig[layer_, n_] if t >= 0]
        assert float(purity[layer_, n_]) == pytest.approx(max(got.count(t) for t in got) / len(got))
    kva = mem.key_value_agreement(s, v, ch)
    assert list(kva["layer"]) == list(range(n_layers)) and kva["agreement"].between(0, 1).all()


def test_study_runs_and_writes(family, tiny, tmp_path):
    import json

    from codecircuits.studies import memories as study_mod

    st = study_mod.run(
        tiny,
        corpus=TEXTS,
        eval_corpus=TEXTS[::-1],
        max_tokens=150,
        window=24,
        k=3,
        tau=0.3,
        min_lift=1.0,
        edit=["indentation", "loops"],
        edit_tokens=60,
        agreement_docs=2,
        agreement_context=16,
        edit_controls=2,
        kv_keys=16,
        progress=False,
    )
    assert st.scan.complete and len(st.distribution) == tiny.cfg.n_layers
    assert (
        [e.concept.name for e in st.edits] == ["indentation", "loops"]
        and st.agreement is not None
        and st.agreement.curve("resid_post")[-1] == 1.0
    )
    for _, layer, neuron, _ in st.showcase:
        assert len(st.promotes(layer, neuron)) == 10
    html, js = st.save(tmp_path / "out", model=tiny)
    data = json.loads(js.read_text())
    check_study_report(html, js, f"memories-{tiny.cfg.model_name}.png", require=("heatmap", "table", "tokens"), screenshot=family == SCREENSHOT_FAMILY)
    page = html.read_text()
    for key, value in data["metrics"].items():
        if value is not None:
            assert f'data-metric="{key}"' in page
    assert data["scan"]["tokens"] == st.scan.tokens_done and len(data["edits"]) == len(st.edits)
    assert [c["claim"][:4] for c in data["claims"]][:1] == ["RQ1:"] and any(
        c["claim"].startswith("RQ4:") for c in data["claims"]
    )
    assert set(data["semantic_share_by_depth"]) == {"early", "middle", "late"}
    # RQ2's control: draws (five by default), each matched on layer and activation magnitude, and intervals on every drop
    for e in st.edits:
        assert len(e.controls) == 2 and len(e.control_draws) == 2
        assert all({k: len(v) for k, v in c.items()} == {k: len(v) for k, v in e.keys.items()} for c in e.controls)
        iv = data["edit_intervals"][e.concept.name]
        assert "general_drop" in iv["drops"]  # concept tokens may be absent from this tiny evaluation text
        assert all(d["low"] <= d["estimate"] <= d["high"] for d in iv["drops"].values())
        assert len(iv["magnitude"]["control_rms"]) == 2


def test_memories_command(tiny_dirs, tmp_path, capsys):
    from codecircuits.cli import main

    out = tmp_path / "rep"
    args = ["memories", "--model", str(tiny_dirs["gpt_neox"]), "--out", str(out), "--corpus", "stdlib:validation"]
    args += ["--max-tokens", "120", "--window", "24", "--top-k", "3", "--edit-tokens", "48"]
    args += ["--agreement-docs", "3", "--agreement-context", "24", "--edit-controls", "1", "--quiet"]
    assert main(args) == 0
    assert (out / "report.html").is_file() and (out / "results.json").is_file() and (out / "scan.safetensors").is_file()
    assert "residual depth to agree" in capsys.readouterr().out
    assert main(args + ["--resume"]) == 0  # a finished checkpoint resumes to the same result


def test_scan_activation_stats_match_the_tokens(tiny, tmp_path):
    """The scan's per-key activation mean and spread are those of every scanned document token."""
    ch = mem.chunk_corpus(tiny, TEXTS, window=24, max_chunks=7)
    s = mem.scan(tiny, ch, k=2, batch_size=3, progress=False)
    layer = tiny.cfg.n_layers - 1
    acts = torch.cat([a for a in _brute_force(tiny, ch, layer, "signed")])  # [tokens, d_mlp], BOS dropped
    st = s.activation_stats()
    assert st.tokens == acts.shape[0] == ch.n_tokens
    torch.testing.assert_close(st.mean[-1], acts.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(st.std[-1], acts.std(0, correction=0), atol=1e-5, rtol=1e-4)
    back = mem.load_scan(s.save(tmp_path / "s.safetensors"))
    assert torch.equal(back.act_sum, s.act_sum) and torch.equal(back.act_sq, s.act_sq)


def test_edit_concepts_mask_both_kinds_relaxing_tau_only_where_needed():
    import torch

    from codecircuits.memories import concepts as cc
    from codecircuits.memories.concepts import pick_edit_concepts

    shallow = next(c for c in cc.CATALOGUE if c.kind == "shallow")
    semantic = next(c for c in cc.CATALOGUE if c.kind == "semantic")
    s = torch.zeros(2, 2, 40)
    s[0, 0, :20] = 0.9  # 20 shallow keys at tau 0.5
    s[1, 1, :12] = 0.35  # 12 semantic keys, only at tau <= 0.35
    sc = cc.ConceptScores(
        scores=s, base_rate=torch.tensor([0.05, 0.05]), concepts=(shallow, semantic), layers=(0, 1),
        n_triggers=torch.full((2, 40), 5),
    )
    masks = torch.ones(2, 100, dtype=torch.bool)
    got = pick_edit_concepts(sc, masks, 1, tau=0.5, min_lift=2.0)
    assert got == [(shallow.name, 0.5), (semantic.name, 0.3)]
    # a concept the evaluation text hardly contains is not masked, at any tau
    masks[1, 5:] = False
    assert pick_edit_concepts(sc, masks, 1, tau=0.5, min_lift=2.0) == [(shallow.name, 0.5)]
