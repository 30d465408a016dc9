"""MINT neuron-level repair: value-vector edits hit the forward pass, undo exactly, and the repair loop works,
on every architecture of the test matrix; study-level findings on the default model."""

from __future__ import annotations

import pytest
import torch
from browser import SCREENSHOT_FAMILY, check_study_report

from codecircuits import CheckpointError, InputError
from codecircuits import repair as R
from codecircuits.core.batching import bos_id
from codecircuits.corpus import CodeFile, Corpus

PROMPT = "def f(x):\n    return (x + 1)\nprint(str(str(123)))\n"


def _tokens(model):
    return model.to_tokens(PROMPT)


def _case(model) -> R.RepairCase:
    """A hand-made case: the reference line is the model's own greedy continuation of the prompt except its last
    token, which is the model's second choice (so a small edit can fix it)."""
    ctx = tuple(_tokens(model)[0].tolist())
    ref: list[int] = []
    with torch.no_grad():
        for _ in range(3):
            ref.append(int(model(torch.tensor([ctx + tuple(ref)]))[0, -1].argmax()))
        last = model(torch.tensor([ctx + tuple(ref)]))[0, -1]
    top2 = last.topk(2).indices.tolist()
    return R.RepairCase("test", 1, "line", ctx, tuple(ref + [top2[1]]), tuple(ref + [top2[0]]))


def test_edit_changes_mlp_out_as_intended_and_undo_is_exact(tiny):
    toks = _tokens(tiny)
    layer, k = tiny.cfg.n_layers - 1, 5
    logits0, cache0 = tiny.run_with_cache(toks)
    old = R.value_vector(tiny, layer, k)
    delta = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(0))
    edit = R.apply_edit(tiny, layer, k, old + delta)
    logits1, cache1 = tiny.run_with_cache(toks)
    got = cache1[f"blocks.{layer}.hook_mlp_out"] - cache0[f"blocks.{layer}.hook_mlp_out"]
    want = cache0[f"blocks.{layer}.mlp.hook_post"][..., k, None] * delta
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits0, logits1)
    # the bridge's W_out property reads the same storage
    torch.testing.assert_close(tiny.W_out[layer][k], old + delta)
    R.Edits((edit,)).undo(tiny)
    assert torch.equal(tiny(toks), logits0)


def test_zero_size_edit_changes_nothing(tiny):
    toks = _tokens(tiny)
    logits0 = tiny(toks)
    e = R.apply_edit(tiny, 0, 0, R.value_vector(tiny, 0, 0))
    assert e.delta_norm == 0.0
    assert torch.equal(tiny(toks), logits0)
    e2 = R.mint_repair(tiny, _case(tiny), scale=0.0, max_edits=2)
    assert len(e2.edits) == 0 and not e2.success  # nothing can change, so every token is rolled back
    assert torch.equal(tiny(toks), logits0)


def test_repeated_edits_unwind_exactly_and_roundtrip_through_a_file(tiny, tmp_path):
    toks = _tokens(tiny)
    logits0 = tiny(toks)
    g = torch.Generator().manual_seed(1)
    rec = []
    for layer, k in [(0, 1), (1, 2), (0, 1)]:  # the same neuron twice
        rec.append(
            R.apply_edit(
                tiny, layer, k, R.value_vector(tiny, layer, k) * 1.7 + torch.randn(tiny.cfg.d_model, generator=g)
            )
        )
    edits = R.Edits(tuple(rec), "tiny")
    logits1 = tiny(toks)
    path = edits.save(tmp_path / "edits.safetensors")
    edits.undo(tiny)
    assert torch.equal(tiny(toks), logits0)
    loaded = R.load_edits(path, tiny)
    assert torch.equal(tiny(toks), logits1)
    assert loaded.neurons == [(0, 1), (1, 2)] and len(loaded) == 3
    loaded.undo(tiny)
    assert torch.equal(tiny(toks), logits0)
    with R.edited(tiny, edits):
        assert torch.equal(tiny(toks), logits1)
    assert torch.equal(tiny(toks), logits0)


def test_apply_checks_the_base_rows(tiny):
    e = R.apply_edit(tiny, 0, 3, R.value_vector(tiny, 0, 3) + 1.0)
    edits = R.Edits((e,), "tiny")
    with pytest.raises(CheckpointError, match="not the one the edits were made from"):
        edits.apply(tiny)  # already applied: the current row is not the old one
    edits.undo(tiny)


def test_saved_edited_model_loads_with_the_edits(tiny, tmp_path):
    from codecircuits import load_model

    toks = _tokens(tiny)
    logits0 = tiny(toks)
    layer = tiny.cfg.n_layers - 1
    e = R.apply_edit(
        tiny,
        layer,
        4,
        R.value_vector(tiny, layer, 4) + torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(0)),
    )
    edits = R.Edits((e,), "tiny")
    logits1 = tiny(toks)
    out = R.save_edited_model(tiny, edits, tmp_path / "edited")
    edits.undo(tiny)
    reloaded = load_model(out, device="cpu")
    got = reloaded(toks)
    # the loader centres LayerNorm models' writing weights again; the function is the same
    torch.testing.assert_close(
        got - got.mean(-1, keepdim=True), logits1 - logits1.mean(-1, keepdim=True), atol=2e-4, rtol=1e-4
    )
    assert not torch.allclose(got, logits0, atol=1e-3)
    R.load_edits(out / "codecircuits_edits.safetensors").undo(reloaded)
    back = reloaded(toks)
    torch.testing.assert_close(
        back - back.mean(-1, keepdim=True), logits0 - logits0.mean(-1, keepdim=True), atol=2e-4, rtol=1e-4
    )


def test_semantic_basis_is_the_pseudo_inverse_of_the_unembedding(tiny):
    ids = [3, 7, 11]
    want = torch.linalg.pinv(tiny.W_U.detach().float())[ids]
    torch.testing.assert_close(R.semantic_basis(tiny, ids), want, atol=1e-4, rtol=1e-3)


def test_candidates_are_gradient_times_activation(tiny):
    toks = _tokens(tiny)
    pos, target = toks.shape[1] - 1, 5
    layers = R.upper_layers(tiny, "all")
    cands = R.candidate_neurons(tiny, toks, pos, target, layers, k=4)
    # reference: finite differences of p(target) in the scale of each neuron's activation is too slow; instead
    # compute the gradient with parameters as leaves (a different autograd route)
    acts = {}

    def keep(x, hook):
        x.retain_grad()
        acts[hook.name] = x
        return x

    with torch.enable_grad():
        hooks = [(f"blocks.{layer}.mlp.hook_post", keep) for layer in layers]
        logits = tiny.run_with_hooks(toks, fwd_hooks=hooks)
        logits[0, pos].softmax(-1)[target].backward()
    scores = torch.stack(
        [
            (acts[f"blocks.{layer}.mlp.hook_post"].grad * acts[f"blocks.{layer}.mlp.hook_post"])[0].norm(dim=0)
            for layer in layers
        ]
    )
    tiny.zero_grad(set_to_none=True)
    for layer, k, s in cands:
        assert s == pytest.approx(float(scores[layers.index(layer), k]), rel=1e-4, abs=1e-9)
    assert cands[0][2] == pytest.approx(float(scores.max()), rel=1e-4)


def test_simulated_edit_matches_the_real_edit(tiny):
    case = _case(tiny)
    pos, target = case.positions[-1], case.reference[-1]
    wrong = case.predicted[-1]
    layers = R.upper_layers(tiny, "all")
    cands = R.candidate_neurons(tiny, case.tokens, pos, target, layers, k=3)
    rows = [torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    gaps = R._simulate(tiny, case.tokens, pos, cands, rows, target, wrong)
    for (layer, k, _), row, gap in zip(cands, rows, gaps):
        e = R.apply_edit(tiny, layer, k, R.value_vector(tiny, layer, k) + row)
        with torch.no_grad():
            p = tiny(case.tokens)[0, pos].softmax(-1)
        R.Edits((e,)).undo(tiny)
        assert float(gap) == pytest.approx(float(p[wrong] - p[target]), abs=1e-5)


def test_mint_repairs_a_near_miss_and_undo_restores(tiny):
    case = _case(tiny)
    assert case.errors == [3]
    logits0 = tiny(case.tokens)
    res = R.mint_repair(tiny, case, layers="all", scale=100.0, max_edits=10)
    if res.success:
        assert res.predicted_after == case.reference and 1 <= res.n_edits <= 10
        assert not torch.equal(tiny(case.tokens), logits0)
    else:
        # a token that was not fixed was rolled back and keeps no edits; edits survive only for a token that was
        # fixed while the line as a whole still fails (fixing one token can change a later prediction)
        for t in res.tokens:
            assert t.fixed or len(t.edits.edits) == 0
        assert res.n_edits == sum(len(t.edits.edits) for t in res.tokens if t.fixed)
        assert res.predicted_after != case.reference
    res.undo(tiny)
    assert torch.equal(tiny(case.tokens), logits0)
    df = res.to_dataframe()
    assert list(df["index"]) == [3]
    assert list(res.top()["index"]) == [3] and "<svg" in res.plot().to_svg()
    if res.n_edits:
        assert res.edits.top()["delta_norm"].is_monotonic_decreasing and "<svg" in res.edits.plot().to_svg()


def test_sgd_baseline_restores_exactly(tiny):
    case = _case(tiny)
    logits0 = tiny(case.tokens)
    out, snap = R.sgd_repair(tiny, case, layers="all", lr=1.0, steps=3)
    assert out.changed_rows > 0
    assert not torch.equal(tiny(case.tokens), logits0)
    snap.restore()
    assert torch.equal(tiny(case.tokens), logits0)
    assert all(p.grad is None for p in tiny.parameters())
    zero, snap0 = R.sgd_repair(tiny, case, layers="all", lr=0.0, steps=2)
    assert zero.changed_rows == 0 and torch.equal(tiny(case.tokens), logits0)


def test_repair_cases_from_code(tiny):
    text = "import os\n" + "x = 1\n" * 60 + "def f(a, b):\n    return (a + b) * 2\n" + "print(str(str(123)))\n" * 3
    cases, scanned = R.repair_cases(tiny, Corpus("t", [CodeFile("t.py", text)]), n=2, progress=False, max_errors=16)
    assert scanned and cases
    for c in cases:
        assert 1 <= len(c.errors)
        assert c.tokens[0, : len(c.context)].tolist() == list(c.context)
        if bos_id(tiny) is not None:  # the context starts as model.to_tokens would
            assert c.context[0] == bos_id(tiny)
        with torch.no_grad():
            pred = tiny(c.tokens)[0].argmax(-1)
        assert tuple(int(pred[p]) for p in c.positions) == c.predicted
    probes = R.probes_of(cases)
    ev = R.evaluate_probes(tiny, probes)
    assert int((~ev["correct"]).sum()) == sum(len(c.errors) for c in cases)


def test_same_target_probes_find_the_token_in_other_files(tiny):
    text = "import os\n" + "x = (1 + 2)\n" * 20
    files = [CodeFile(f"f{i}.py", text) for i in range(3)] + [CodeFile("skip.py", text)]
    target = tiny.tokenizer(text, add_special_tokens=False)["input_ids"][-3]  # a token of the repeated line
    probes = R.same_target_probes(tiny, Corpus("t", files), target, 5, context_tokens=8, exclude=["skip.py"])
    assert len(probes) == 5 and all(p.target == target and len(p.tokens) == p.pos + 1 for p in probes)
    n_ctx = 8 + (bos_id(tiny) is not None)
    assert all(len(p.tokens) == n_ctx and (bos_id(tiny) is None or p.tokens[0] == bos_id(tiny)) for p in probes)
    ev = R.evaluate_probes(tiny, probes)
    assert ev["argmax"].tolist() == [p.predicted for p in probes]
    wrong = probes[-1].predicted
    ordered = R.same_target_probes(tiny, Corpus("t", files), target, 12, wrong=wrong, context_tokens=8)
    flags = [p.predicted != wrong for p in ordered]
    assert flags == sorted(flags)  # the same confusion comes first
    assert R.same_target_probes(tiny, Corpus("t", files[-1:]), target, 5, exclude=["skip.py"]) == []


def test_bad_input_is_a_clear_error(tiny):
    with pytest.raises(InputError, match="out of range"):
        R.value_vector(tiny, tiny.cfg.n_layers, 0)
    with pytest.raises(InputError, match="out of range"):
        R.apply_edit(tiny, 0, tiny.cfg.d_mlp, torch.zeros(tiny.cfg.d_model))
    with pytest.raises(InputError, match="shape"):
        R.apply_edit(tiny, 0, 0, torch.zeros(3))
    with pytest.raises(InputError, match="layer focus"):
        R.upper_layers(tiny, "top")
    with pytest.raises(InputError, match="scale"):
        R.mint_repair(tiny, _case(tiny), scale=-1)


def test_study_runs_undoes_every_edit_and_reports(family, tiny, tmp_path):
    """The whole protocol on a tiny model: the SGD grid on a selection case, independent repairs, two successive
    repairs per method, intervals and claims in results.json and the report, and the base restored bit for bit."""
    import json

    from codecircuits.intervals import VERDICTS
    from codecircuits.studies import repair as SR

    st = SR.run(
        tiny,
        n_cases=2,
        n_select=1,
        sources=("humaneval",),
        max_errors=64,
        context_tokens=24,
        n_candidates=2,
        max_edits=1,
        sgd_lrs=(1e-2, 1.0),
        sgd_steps=(1, 2),
        n_gen=2,
        heldout_tokens=64,
        n_resamples=50,
        progress=False,
    )
    df = st.to_dataframe()
    assert sorted(df.method) == ["mint", "mint", "sgd", "sgd"] and df.restored.all()
    assert st.settings["base_restored"] and st.settings["n_successive"] == 2
    assert (df.spec_n > 0).all() and (df.gen_n <= 2).all()
    # the SGD grid: every setting scored on the selection case; the choice is one of them and is the one used
    assert {(r["lr"], r["steps"]) for r in st.sweep} == {(1e-2, 1), (1e-2, 2), (1.0, 1), (1.0, 2)}
    assert (st.settings["sgd_lr"], st.settings["sgd_steps"]) == (st.sgd_choice["lr"], st.sgd_choice["steps"])
    assert set(df[df.method == "sgd"].steps) == {st.settings["sgd_steps"]}
    best = max((r["success_rate"], r["reference_logp"]) for r in st.sweep)
    assert (st.sgd_choice["success_rate"], st.sgd_choice["reference_logp"]) == pytest.approx(best, abs=1e-6)
    best = max(r["success_rate"] for r in st.sweep)
    assert st.sgd_choice["success_rate"] == best
    # successive: one row per repair and method; only earlier *repaired* lines count for retention
    sf = st.successive_frame()
    assert list(sf.repairs) == [1, 2, 1, 2] and (sf.earlier_repaired <= sf.repairs - 1).all()
    assert (sf.earlier_still_fixed <= sf.earlier_repaired).all()
    # intervals bracket their estimates; the paired difference is the difference of the two means
    for name, iv in st.intervals.items():
        assert iv.low <= iv.estimate + 1e-9 and iv.estimate <= iv.high + 1e-9 or iv.low != iv.low, name
    d = st.intervals["mint_minus_sgd_success"]
    want = st.intervals["mint_success"].estimate - st.intervals["sgd_success"].estimate
    assert d.estimate == pytest.approx(want) and d.n == 2
    assert st.claims and all(c.verdict in VERDICTS for c in st.claims)
    html, js = st.save(tmp_path)
    check_study_report(html, js, f"repair-{tiny.cfg.model_name}.png", require=("table", "code"), screenshot=family == SCREENSHOT_FAMILY)
    data = json.loads(js.read_text())
    assert data["metrics"]["n_cases"] == 2
    assert [c["claim"] for c in data["claims"]] == [c.claim for c in st.claims]
    assert data["claims"][0]["evidence"]["n"] == 2 and "codecircuits repair" in data["claims"][0]["command"]
    text = html.read_text()
    assert 'data-metric="mint_success_rate"' in text and 'data-metric="sgd_success_rate"' in text
    assert "Claims and verdicts" in text and "Successive repairs" in text


def test_interrupted_study_resumes_to_the_same_results(tiny, tmp_path):
    """The progress file holds each finished step; a run resumed from a file cut after the first case (as an
    interruption leaves it) gives the uninterrupted run's rows, successive rows and claims, times aside."""
    import json

    from codecircuits.studies import repair as SR

    kw = dict(n_cases=2, n_select=1, sources=("humaneval",), max_errors=64, context_tokens=24, n_candidates=2,
              max_edits=1, sgd_lrs=(1e-2,), sgd_steps=(1, 2), n_gen=2, heldout_tokens=64, n_resamples=50,
              progress=False)
    ck = tmp_path / "progress.json"
    full = SR.run(tiny, checkpoint=ck, **kw)
    saved = json.loads(ck.read_text())
    assert set(saved["cases"]) == {"0", "1"} and set(saved["successive"]) == {"mint", "sgd"}
    assert saved["sweep"] is not None and not full.settings["resumed"]
    saved["cases"].pop("1")
    saved["successive"].pop("sgd")
    ck.write_text(json.dumps(saved))
    again = SR.run(tiny, checkpoint=ck, resume=True, **kw)

    import pandas as pd

    def strip(rows):  # NaN (no earlier repair yet) equals NaN here
        return pd.DataFrame([{k: v for k, v in r.items() if k != "seconds"} for r in rows])

    assert again.settings["resumed"] and again.settings["base_restored"]
    pd.testing.assert_frame_equal(strip(again.rows), strip(full.rows))
    pd.testing.assert_frame_equal(strip(again.successive), strip(full.successive))
    assert [(c.claim, c.verdict) for c in again.claims] == [(c.claim, c.verdict) for c in full.claims]
    with pytest.raises(InputError, match="other settings"):
        SR.run(tiny, checkpoint=ck, resume=True, **{**kw, "n_gen": 3})
    fresh = SR.run(tiny, checkpoint=ck, **{**kw, "n_gen": 3})  # without resume: starts afresh, rewrites the file
    assert not fresh.settings["resumed"] and json.loads(ck.read_text())["cases"].keys() == {"0", "1"}


def test_study_names_the_fetch_command_when_the_shell_corpus_is_missing(tiny, tmp_path, monkeypatch):
    from codecircuits.studies import repair as SR

    monkeypatch.setenv("CODECIRCUITS_CACHE", str(tmp_path / "empty-cache"))
    SR._load.cache_clear()  # corpora are read once per process
    with pytest.raises(InputError, match="codecircuits corpus fetch shell"):
        SR.run(tiny, n_cases=1, n_select=0, sources=("shell:test",), progress=False)
    with pytest.raises(InputError, match="n_cases"):
        SR.run(tiny, n_cases=0, progress=False)


@pytest.mark.slow
def test_mint_repairs_held_out_code_with_few_neurons_on_the_default_model(default_model):
    """Study check (METHODS §4) with intervals over cases: MINT fixes wrong line completions of held-out code by
    editing a handful of value vectors (the paper: 'usually one or two neurons'; the 95% interval of neurons per
    success stays at or below 4), leaves unrelated predictions nearly unchanged (interval above 0.8), while SGD
    changes every value vector of the layers it trains; in a sequence of repairs without undoing, the earlier
    repairs are counted and the base comes back bit for bit."""
    from codecircuits.studies import repair as SR

    st = SR.run(
        default_model,
        n_cases=2,
        n_select=0,
        n_successive=2,
        sources=("humaneval",),
        n_gen=4,
        heldout_tokens=128,
        n_resamples=500,
        progress=False,
    )
    iv = st.intervals
    df = st.to_dataframe()
    assert df.restored.all() and st.settings["base_restored"]
    assert (st.settings["sgd_lr"], st.settings["sgd_steps"]) == (1e-2, 10)  # no selection split: MINT's baseline
    assert iv["mint_success"].estimate >= 1 / 2, st.summary()
    nps = iv["mint_neurons_per_success"]
    assert nps.high <= 4 and nps.n == 2
    assert iv["mint_spec_unchanged"].low >= 0.8
    assert df[df.method == "sgd"].neurons.min() > 100 * nps.high
    claim = {c.claim: c for c in st.claims}["MINT repairs by patching 'usually one or two neurons'"]
    assert claim.verdict in ("reproduced", "partly") and claim.evidence == nps
    sf = st.successive_frame()
    assert list(sf.repairs) == [1, 2, 1, 2]
    mint_seq = sf[sf.method == "mint"]
    assert int(mint_seq.successes_so_far.iloc[-1]) == int(mint_seq.success.sum())


def test_checkpoint_saves_atomically_and_refuses_another_runs_file(tmp_path):
    path = tmp_path / "progress.json"
    done = R.Checkpoint(path, "key-a", resume=False)
    done.state["cases"]["0"] = [1, 2]
    done.save()
    assert not (tmp_path / "progress.json.tmp").exists()
    assert R.Checkpoint(path, "key-a", resume=True).state["cases"] == {"0": [1, 2]}
    assert R.Checkpoint(path, "key-a", resume=False).state["cases"] == {}  # without resume: afresh
    with pytest.raises(InputError, match="other settings"):
        R.Checkpoint(path, "key-b", resume=True)
    R.Checkpoint(None, "key-a", resume=True).save()  # no file: in memory only
