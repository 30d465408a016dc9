"""The repair package on the intervention core gives what the engine before issue 14 gave
(``tests/_reference/repair.py``), bit for bit, on every architecture of the test matrix.

The rebuilt code runs only the blocks from the lowest editable layer on (``core.runner.run_from`` swaps the
blocks below for the identity), where the reference's ``start_at_layer`` still executed them on a residual it then
discarded; the blocks that count see the same inputs and do the same arithmetic, so every number is equal, not
only close. The simulated edit is a ``core.interventions.ValueVectorEdit`` (``act + post[:, :, k, None] * row``
per batch row, the reference's in-place row update) written by ``core.interventions.hook``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _reference import repair as ref_repair

from codecircuits import InputError
from codecircuits import repair as R
from codecircuits.core.interventions import ValueVectorEdit, hook
from codecircuits.core.sites import hook_name
from codecircuits.corpus import CodeFile, Corpus

PROMPT = "def f(x):\n    return (x + 1)\nprint(str(str(123)))\n"
TEXT = "import os\n" + "x = 1\n" * 60 + "def f(a, b):\n    return (a + b) * 2\n" + "print(str(str(123)))\n" * 3


def near_miss(model) -> R.RepairCase:
    """The model's own greedy continuation of the prompt, except its last token: the second choice there."""
    ctx = tuple(model.to_tokens(PROMPT)[0].tolist())
    ref: list[int] = []
    with torch.no_grad():
        for _ in range(3):
            ref.append(int(model(torch.tensor([ctx + tuple(ref)]))[0, -1].argmax()))
        last = model(torch.tensor([ctx + tuple(ref)]))[0, -1]
    top2 = last.topk(2).indices.tolist()
    return R.RepairCase("test", 1, "line", ctx, tuple(ref + [top2[1]]), tuple(ref + [top2[0]]))


def code_cases(model) -> list[R.RepairCase]:
    """Cases from a small corpus, with several wrong tokens each (the tiny random models miss most)."""
    cases, _ = R.repair_cases(model, Corpus("t", [CodeFile("t.py", TEXT)]), n=2, progress=False, max_errors=16)
    ref_cases, _ = ref_repair.repair_cases(
        model, Corpus("t", [CodeFile("t.py", TEXT)]), n=2, progress=False, max_errors=16
    )
    assert [vars(c) for c in cases] == [vars(c) for c in ref_cases]
    return cases


def outcome(res) -> dict:
    """Everything a MINT result says, except its time."""
    return {
        "success": res.success,
        "predicted_after": res.predicted_after,
        "settings": res.settings,
        "tokens": [
            (t.index, t.target, t.wrong, t.fixed, t.steps, t.candidates, [(e.layer, e.neuron) for e in t.edits])
            for t in res.tokens
        ],
        "edits": [(e.layer, e.neuron) for e in res.edits],
    }


def same_rows(a, b) -> bool:
    return len(a.edits) == len(b.edits) and all(
        torch.equal(x.old, y.old) and torch.equal(x.new, y.new) for x, y in zip(a.edits, b.edits)
    )


@pytest.mark.parametrize("focus", ["all", "half"])
def test_candidates_and_simulation_equal_the_reference(tiny, focus):
    case = near_miss(tiny)
    pos, target, wrong = case.positions[-1], case.reference[-1], case.predicted[-1]
    layers = R.upper_layers(tiny, focus)
    cands = R.candidate_neurons(tiny, case.tokens, pos, target, layers, k=6)
    want = ref_repair.candidate_neurons(tiny, case.tokens, pos, target, layers, k=6)
    assert cands == want  # the same neurons in the same order with bit-equal scores
    start = layers[0]
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(tiny.cfg.d_model, generator=g) for _ in cands]
    gaps = R.simulate_edits(tiny, case.tokens, pos, cands, rows, target, wrong)
    assert torch.equal(gaps, ref_repair._simulate(tiny, case.tokens, pos, cands, rows, target, wrong))
    # from a given start with a given residual, as mint_repair calls it
    resid = ref_repair._resid(tiny, case.tokens, start)
    got = R.simulate_edits(tiny, case.tokens, pos, cands, rows, target, wrong, resid=resid, start=start)
    ref = ref_repair._simulate(tiny, case.tokens, pos, cands, rows, target, wrong, resid=resid, start=start)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("focus", ["all", "half"])
def test_mint_repair_equals_the_reference(tiny, focus):
    toks = tiny.to_tokens(PROMPT)
    logits0 = tiny(toks)
    runs = [(near_miss(tiny), dict(scale=100.0, max_edits=10))]
    # one code case: the corpus's two are the same line (print(str(str(123)))) one line apart and take the same path.
    # Its first 6 tokens (a teacher-forced prefix keeps its predictions) take every branch the whole line takes, in
    # every family and focus (checked with branch coverage): tokens fixed and rolled back, later ones orthogonalised
    # against earlier fixes
    c = code_cases(tiny)[0]
    c = dataclasses.replace(c, reference=c.reference[:6], predicted=c.predicted[:6])
    runs += [(c, dict(scale=30.0, max_edits=3, n_candidates=4, orthogonalize=True))]
    for case, kw in runs:
        want = ref_repair.mint_repair(tiny, case, layers=focus, **kw)
        edited_ref = tiny(case.tokens)
        want.undo(tiny)
        got = R.mint_repair(tiny, case, layers=focus, **kw)
        edited_new = tiny(case.tokens)
        got.undo(tiny)
        assert outcome(got) == outcome(want)
        assert same_rows(got.edits, want.edits)  # every edited row bit for bit
        assert torch.equal(edited_new, edited_ref)
    assert torch.equal(tiny(toks), logits0)


def test_mint_with_basis_semantics_equals_the_reference(tiny):
    case = near_miss(tiny)
    want = ref_repair.mint_repair(tiny, case, layers="half", semantics="basis", scale=50.0, max_edits=3)
    want.undo(tiny)
    got = R.mint_repair(tiny, case, layers="half", semantics="basis", scale=50.0, max_edits=3)
    got.undo(tiny)
    assert outcome(got) == outcome(want) and same_rows(got.edits, want.edits)
    assert torch.equal(R.semantic_basis(tiny, [3, 5]), ref_repair.semantic_basis(tiny, [3, 5]))


@pytest.mark.parametrize("focus", ["all", "half"])
def test_sgd_repair_equals_the_reference(tiny, focus):
    layers = R.upper_layers(tiny, focus)
    for case in [near_miss(tiny), code_cases(tiny)[0]]:  # (one code case: see test_mint_repair_equals_the_reference)
        logits0 = tiny(case.tokens)
        want, snap = ref_repair.sgd_repair(tiny, case, layers=focus, lr=0.5, steps=3)
        w_ref = [R.mlp_out_weight(tiny, layer).detach().clone() for layer in layers]
        snap.restore()
        got, snap = R.sgd_repair(tiny, case, layers=focus, lr=0.5, steps=3)
        w_new = [R.mlp_out_weight(tiny, layer).detach().clone() for layer in layers]
        snap.restore()
        assert torch.equal(tiny(case.tokens), logits0)
        assert (got.success, got.steps, got.changed_rows, got.predicted_after, got.settings) == (
            want.success,
            want.steps,
            want.changed_rows,
            want.predicted_after,
            want.settings,
        )
        assert got.changed_rows > 0
        assert all(torch.equal(a, b) for a, b in zip(w_new, w_ref))  # the fine-tuned weights bit for bit


def test_probe_evaluation_equals_the_reference(tiny):
    cases = code_cases(tiny)
    probes = R.probes_of(cases)
    assert [vars(p) for p in probes] == [vars(p) for p in ref_repair.probes_of(cases)]  # (different classes)
    layer = R.upper_layers(tiny, "half")[0]
    for new_cache, ref_cache in [(None, None), (R.ResidCache(tiny, layer), ref_repair.ResidCache(tiny, layer))]:
        got = R.evaluate_probes(tiny, probes, cache=new_cache)
        want = ref_repair.evaluate_probes(tiny, probes, cache=ref_cache)
        assert all(torch.equal(got[k], want[k]) for k in want)
        toks = cases[0].tokens.repeat(2, 1)
        assert R.heldout_loss(tiny, toks, cache=new_cache) == ref_repair.heldout_loss(tiny, toks, cache=ref_cache)


def test_value_vector_edit_is_the_real_edit_and_needs_its_reader(tiny):
    """Through core.interventions.hook, the simulated edit of one row equals editing the weight (allclose:
    the real edit changes a matmul's weight, the simulation adds the product after it)."""
    toks = tiny.to_tokens(PROMPT)
    layer, k = tiny.cfg.n_layers - 1, 3
    delta = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(2))
    edit = ValueVectorEdit(torch.tensor([k]), delta[None])
    with torch.no_grad():
        sim = tiny.run_with_hooks(
            toks, fwd_hooks=[edit.reader(hook_name("post", layer)), hook(hook_name("mlp_out", layer), edit)]
        )
    e = R.apply_edit(tiny, layer, k, R.value_vector(tiny, layer, k) + delta)
    real = tiny(toks)
    R.Edits((e,)).undo(tiny)
    torch.testing.assert_close(sim, real, atol=1e-4, rtol=1e-4)
    lone = ValueVectorEdit(torch.tensor([k]), delta[None])
    with pytest.raises(InputError, match="reader"):
        tiny.run_with_hooks(toks, fwd_hooks=[hook(hook_name("mlp_out", layer), lone)])
