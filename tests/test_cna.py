"""Single-head ablation sweep, comparative neuron analysis and the mask/keep table (codecircuits.cna), and the
arithmetic task, on every architecture of the test matrix; study-level checks on the default model."""

from __future__ import annotations

import pytest
import torch
from browser import SCREENSHOT_FAMILY, check_study_report

from codecircuits import cna, neurons
from codecircuits.core.sites import head_label
from codecircuits.errors import InputError
from codecircuits.tasks import arithmetic

PROMPTS = ["def f(x):\n    return (x", "print(str(str(12", "x = [i * 2 for i"]


def _zero_head(layer, head):
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    return [(f"blocks.{layer}.attn.hook_z", hook)]


def test_head_sweep_matches_one_full_run_per_head(tiny):
    toks = [tiny.to_tokens(p) for p in PROMPTS]
    with torch.no_grad():
        labels = torch.tensor([int(tiny(t)[0, -1].argsort()[-2]) for t in toks])  # the runner-up: accuracy 0 at base
    sweep = cna.head_sweep(tiny, PROMPTS, labels, progress=False, max_rows=5)  # max_rows forces chunking of heads
    assert sweep.accuracy.shape == (tiny.cfg.n_layers, tiny.cfg.n_heads)
    assert sweep.base_accuracy == 0.0
    for layer in range(tiny.cfg.n_layers):
        for head in range(tiny.cfg.n_heads):
            for i, t in enumerate(toks):
                with torch.no_grad(), tiny.hooks(fwd_hooks=_zero_head(layer, head)):
                    logits = tiny(t)[0, -1]
                lp = torch.log_softmax(logits, -1)[labels[i]]
                assert abs(float(sweep.prompt_logprob[layer, head, i]) - float(lp)) < 1e-4
                assert bool(sweep.correct[layer, head, i]) == (int(logits.argmax()) == int(labels[i]))
    top = sweep.top(3)
    assert list(top.columns[:3]) == ["layer", "head", "name"]
    assert 0.0 <= sweep.fraction_harmless() <= 1.0


def test_head_sweep_agrees_with_the_ablation_module(tiny):
    from codecircuits import ablation

    toks = tiny.to_tokens(PROMPTS[0])
    with torch.no_grad():
        w = tiny(toks)[:, -1].argmax(-1)
    ours = cna.head_sweep(tiny, PROMPTS[:1], w, progress=False)
    theirs = ablation.head_sweep(
        tiny, toks, lambda logits: torch.log_softmax(logits[:, -1], -1)[:, int(w[0])], progress=False
    )
    torch.testing.assert_close(ours.logprob, theirs.values.float().reshape(ours.logprob.shape), atol=1e-4, rtol=1e-4)


def test_cna_is_the_difference_of_two_importances(tiny):
    layer, head = tiny.cfg.n_layers - 1, 1
    res = cna.compare(tiny, PROMPTS[:2], (layer, head), progress=False)
    assert res.cna.shape == (2, tiny.cfg.n_layers, tiny.cfg.d_mlp)
    assert torch.all(res.cna[:, :layer] == 0)  # the ablation cannot reach earlier layers
    clean = neurons.ffn_neurons(tiny, PROMPTS[:2], progress=False)
    torch.testing.assert_close(res.imp_original[:, layer:], clean["logprob_increase"][:, layer:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(res.target, clean.target)
    # the ablated importance, by hand: the ablated run's activations, the clean run's scale and target
    toks = tiny.to_tokens(PROMPTS[0])
    _, c0 = tiny.run_with_cache(toks)
    with tiny.hooks(fwd_hooks=_zero_head(layer, head)):
        _, c1 = tiny.run_with_cache(toks)
    scale = c0["ln_final.hook_scale"][0, -1]
    w = int(res.target[0])
    ln = str(tiny.cfg.normalization_type).upper().startswith("LN")

    def lp(x):
        x = x - x.mean(-1, keepdim=True) if ln else x
        return torch.log_softmax((x / scale) @ tiny.W_U + tiny.b_U, -1)[w]

    if tiny.cfg.parallel_attn_mlp:
        base = c1[f"blocks.{layer}.hook_resid_pre"][0, -1] + c1[f"blocks.{layer}.hook_attn_out"][0, -1]
    else:
        base = c1[f"blocks.{layer}.hook_resid_mid"][0, -1]
    for k in (0, 5, tiny.cfg.d_mlp - 1):
        m = c1[f"blocks.{layer}.mlp.hook_post"][0, -1, k]
        want = lp(base + m * tiny.W_out[layer, k]) - lp(base)
        torch.testing.assert_close(res.imp_ablated[0, layer, k], want, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(res.coef_ablated[0, layer, k], m)
    assert res.top(5)["cna"].is_monotonic_decreasing
    assert len(res.to_dataframe()) == res.cna.numel()


def test_mask_keep_table_extremes(tiny):
    layer = tiny.cfg.n_layers - 1
    res = cna.compare(tiny, PROMPTS, (layer, 0), progress=False)
    n_all = tiny.cfg.d_mlp  # every neuron of the layers from the head's layer on
    mk = cna.mask_keep(tiny, PROMPTS, res, ns=(3, n_all), progress=False)
    t = mk.table.set_index("N")
    assert mk.n_prompts == 3 and mk.base_accuracy == 1.0  # the target is the model's own top-1
    assert t.loc[n_all, "keep_acc_decrease_pct"] == 0.0  # keeping every neuron changes nothing
    assert mk.top()["mask_acc_decrease_pct"].is_monotonic_decreasing and "<svg" in mk.plot().to_svg()
    # masking every neuron of the last layer equals zeroing that layer's MLP by hand
    with torch.no_grad(), tiny.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", lambda a, hook: a * 0)]):
        preds = torch.stack([tiny(tiny.to_tokens(p))[0, -1].argmax() for p in PROMPTS])
    want = 100.0 * (1 - float((preds == res.target).float().mean()))
    assert abs(t.loc[n_all, "mask_acc_decrease_pct"] - want) < 1e-9
    assert t.loc[n_all, "random_mask_acc_decrease_pct"] == t.loc[n_all, "mask_acc_decrease_pct"]
    with pytest.raises(InputError, match="exceeds"):
        cna.mask_keep(tiny, PROMPTS, res, ns=(n_all + 1,), progress=False)
    with pytest.raises(InputError, match="computed on"):
        cna.mask_keep(tiny, PROMPTS[:2], res, progress=False)


def test_arithmetic_dataset_labels_are_the_first_answer_token(tiny):
    ds = arithmetic.dataset(tiny, templates=("assert", "bare"), ops=("+", "-"))
    assert len(ds) == 2 * (100 + 55)  # every pair for "+", the non-negative ones for "-"
    for p in ds.select(limit=20):
        full = tiny.to_tokens(p.text + str(p.answer))[0].tolist()
        n = tiny.to_tokens(p.text).shape[1]
        assert full[n] == p.label_id
        assert p.label == str(p.answer)[0]  # this tokenizer splits digits
    assert set(ds.templates) == {"assert", "bare"}
    acc = arithmetic.accuracy(tiny, ds.select(op="+", limit=10), by="template")
    assert set(acc) <= {"assert", "bare"} and all(0 <= v <= 1 for v in acc.values())
    with pytest.raises(InputError, match="Unknown operation"):
        arithmetic.dataset(tiny, ops=("^",))
    with pytest.raises(InputError, match="neither a name"):
        arithmetic.dataset(tiny, templates=("no placeholders",))
    with pytest.raises(InputError, match="No prompts"):
        ds.select(template="prose")


def test_paper_arithmetic_task_two_digits_four_operations(tiny):
    ds = arithmetic.dataset(tiny, templates=arithmetic.PAPER_TEMPLATES, ops=arithmetic.PAPER_OPS, digits=2, n=5)
    assert len(ds) == 4 * 4 * 5 and set(ds.ops) == {"+", "-", "*", "/"}
    for p in ds:
        assert 10 <= p.a <= 99 and 10 <= p.b <= 99
        assert p.answer == {"+": p.a + p.b, "-": p.a - p.b, "*": p.a * p.b, "/": p.a // p.b}[p.op]
        assert p.op != "/" or p.a % p.b == 0  # exact division, as in the paper
        assert p.answer >= 0
    assert "The ratio of" in ds.select(template="sum", op="/").texts[0]
    assert "divides" in ds.select(template="qa", op="/").texts[0]
    assert len(arithmetic.pairs("/", 2)) == 196  # every two-digit pair b divides a
    # the same seed draws the same pairs; split gives disjoint sides
    again = arithmetic.dataset(tiny, templates=arithmetic.PAPER_TEMPLATES, ops=arithmetic.PAPER_OPS, digits=2, n=5)
    assert again.texts == ds.texts
    sel, rest = ds.split(2, by="op", seed=1)
    assert len(sel) == 8 and not set(sel.prompts) & set(rest.prompts) and len(sel) + len(rest) == len(ds)
    assert len(ds.select(exclude=sel)) == len(rest)
    with pytest.raises(InputError, match="n must be"):
        arithmetic.dataset(tiny, n=0)


def test_selection_of_one_length_warns_when_it_holds_fewer_than_asked(tiny):
    from codecircuits.tasks.arithmetic import one_length

    ds = arithmetic.dataset(tiny, templates=arithmetic.PAPER_TEMPLATES, ops=arithmetic.PAPER_OPS, digits=2, n=5)
    sel = one_length(tiny, ds, 2, seed=0, per_op=True)
    assert len({len(tiny.to_tokens(t)[0]) for t in sel.texts}) == 1
    with pytest.warns(UserWarning, match="raise n_acc"):
        big = one_length(tiny, ds, 50, seed=0, per_op=True)
    assert len(big) < 50 * len(set(big.ops))  # capped by the prompts of that length, and said so
    per_op = ds.per_op(3, ("+", "-"), seed=1)
    assert sorted(per_op.ops) == ["+", "-"] and all(sum(p.op == o for p in per_op) == 3 for o in "+-")
    assert per_op.texts == ds.per_op(3, ("+", "-"), seed=1).texts  # seeded
    assert set(ds.per_op(2).ops) == set(ds.ops)  # every operation by default



def _sweep(correct, base_correct):
    correct = torch.tensor(correct, dtype=torch.bool)
    base = torch.tensor(base_correct, dtype=torch.bool)
    plp = correct.double() - 1
    return cna.HeadSweep(accuracy=correct.float().mean(-1), logprob=plp.mean(-1),
                         base_accuracy=float(base.float().mean()), base_logprob=0.0, correct=correct,
                         prompt_logprob=plp, base_correct=base, labels=torch.zeros(base.shape[0], dtype=torch.long))


def test_select_heads_and_held_out_heads_against_random_heads():
    # two layers x two heads, four prompts (ops + + * *), every answer right before ablation
    correct = [[[0, 0, 1, 1], [1, 1, 1, 1]], [[1, 1, 0, 0], [1, 1, 1, 1]]]
    sweep = _sweep(correct, [1, 1, 1, 1])
    ops = ["+", "+", "*", "*"]
    # L0H0 and L1H0 tie on the overall drop; each is the most harmful head of one operation
    assert sorted(cna.select_heads(sweep, ops, 1)) == [(0, 0), (1, 0)]
    held = cna.HeldOutHeads(((0, 0),), ((0, 1),), sweep, tuple(ops))
    assert held.drop((0, 0), "+").estimate == 1.0 and held.drop((0, 0), "*").estimate == 0.0
    assert held.random_drop().estimate == 0.0 and held.excess((0, 0)).estimate == 0.5
    assert held.specific() == [((0, 0), "+")]  # its drop's interval lies above 0 on '+' only
    js = held.to_json()
    assert js["specific_heads"] == [{"head": "L0H0", "op": "+"}] and js["n_prompts_per_op"] == {"+": 2, "*": 2}
    assert list(held.table()["head"]) == ["L0H0", "L0H1", "mean of random heads"]
    with pytest.raises(InputError, match="No held-out prompt"):
        held.drop((0, 0), "-")


#: the default-model study run the slow tests share: every head of every layer on a small selection split, the
#: chosen heads and random heads on a larger held-out split, CNA on selection prompts and mask/keep on held-out ones,
#: Table 2 over the last 6 layers (all 30 cost minutes: that is the study's job); sized to give decisive intervals
#: within about a minute and a half on two cores
SLOW_RUN = dict(
    templates=("sum",),
    n_acc=10,
    n_sweep=4,
    n_top_heads=1,
    n_heldout=10,
    n_cna=4,
    cna_layers=4,
    n_mask=12,
    ns=(10,),
    n_top10=6,
    top10_layers=6,
    n_attn=0,
)


@pytest.fixture(scope="module")
def study(default_model):
    from codecircuits.studies import cna as study_mod

    return study_mod.run(default_model, progress=False, **SLOW_RUN)


@pytest.mark.slow
def test_random_heads_are_harmless_on_held_out_arithmetic(study):
    """The study's head claims, selected on one split and scored on another: random heads' mean accuracy drop has
    an interval within 5 points of zero, and the top selection head's held-out drop lies below its selection drop
    (the selection drop of a head chosen on few prompts overstates its effect)."""
    h, a = study.heldout, study.arithmetic
    r = h.random_drop()
    assert r.low > -0.05 and r.high < 0.05, r
    assert h.drop(a.head).high < float(a.sweep.accuracy_drop[a.head]), (h.drop(a.head), a.sweep.top(1))
    assert study.claim("most heads are harmless").verdict in ("reproduced", "partly")


@pytest.mark.slow
def test_keeping_only_top_cna_neurons_hurts_more_than_masking_them(study):
    """Neurons ranked by CNA on some prompts, tested on held-out correct prompts: zeroing every other neuron of the
    head's layers on ("keep") removes more answers than zeroing the top ones ("mask"), paired interval above zero,
    so "keep" does not reproduce on this model; masking them removes at least as many as random neurons."""
    from codecircuits import intervals

    per = study.arithmetic.mask_keep.per_prompt
    diff = intervals.mean(per["mask_10"].float() - per["keep_10"].float())
    assert diff.above(0), diff
    assert intervals.mean(per["random_mask_10"].float() - per["mask_10"].float()).estimate >= 0
    assert study.claim("keeping only").verdict == "not reproduced"


@pytest.mark.slow
def test_log_prob_increase_picks_the_neurons_that_matter(study):
    """METHODS Table 2 (here over the last 6 layers): zeroing the top-10 neurons by log-probability increase lowers
    the answer's probability with an interval above that of 10 random neurons, and more than the coefficient's
    top-10."""
    c = study.claim("zeroing the top-10 FFN neurons")
    assert c.evidence.above(0.3) and c.evidence.low > c.control.high, c
    assert study.claim("log-probability increase picks more important top-10 neurons than coefficient").evidence.above(0)


def test_study_writes_a_report_and_json(family, tiny, tmp_path):
    import json

    from codecircuits.studies import cna as study_mod

    st = study_mod.run(
        tiny,
        n_acc=4,
        n_sweep=4,
        n_heldout=3,
        n_cna=2,
        n_mask=3,
        n_top10=2,
        top10_layers=None,
        k_query=5,
        n_attn=2,
        attn_layers=1,
        k_attn=3,
        paren_n_values=(0, 1),
        paren_numbers=2,
        ns=(2, 3),
        progress=False,
    )
    html, js = st.save(tmp_path / "out")
    data = json.loads(js.read_text())
    check_study_report(html, js, f"cna-{tiny.cfg.model_name}.png", require=("heatmap", "table"), screenshot=family == SCREENSHOT_FAMILY)
    assert data["arithmetic"]["top_head"] == head_label(*st.arithmetic.head)
    assert [r["N"] for r in data["arithmetic"]["mask_keep"]] == [2, 3]
    assert {r["method"] for r in data["top10_ablation"]} >= {"original", "logprob_increase", "random"}
    page = html.read_text()
    for key in data["metrics"]:
        assert f'data-metric="{key}"' in page
    assert set(study_mod.tables(st)) >= {"arith_top_heads", "parens_mask_keep", "claims", "heldout_heads"}
    # every claim carries its interval; the held-out heads are disjoint from the random control
    assert data["claims"] and all(c["evidence"]["low"] <= c["evidence"]["high"] for c in data["claims"])
    assert not set(data["heldout_heads"]["heads"]) & set(data["heldout_heads"]["random_heads"])
    assert set(data["accuracy_by_op"]) == {"+", "-", "*", "/"}
    assert len(st.heldout.ops) == 4 * 3


def test_mask_keep_on_held_out_prompts(tiny):
    layer, d = tiny.cfg.n_layers - 1, tiny.cfg.d_mlp
    res = cna.compare(tiny, PROMPTS, (layer, 0), progress=False)
    ranked = cna.ranked_neurons(res, d)
    assert torch.equal(ranked.sort().values, torch.arange(layer * d, (layer + 1) * d))  # the layer's neurons
    assert float(res.cna.mean(0)[layer].flatten()[ranked[0] - layer * d]) == float(res.cna.mean(0)[layer].max())
    mk = cna.mask_keep_heldout(tiny, PROMPTS, res.target, ranked, first_layer=layer, ns=(2, d), progress=False)
    t = mk.table.set_index("N")
    assert mk.n_prompts == 3 and bool(mk.per_prompt["base"].all())
    assert t.loc[d, "keep_acc_decrease_pct"] == 0.0  # keeping every neuron of the layer changes nothing
    # masking all of them is zeroing the layer's MLP, as the per-prompt table does
    per_prompt = cna.mask_keep(tiny, PROMPTS, res, ns=(d,), progress=False).table.set_index("N")
    assert t.loc[d, "mask_acc_decrease_pct"] == per_prompt.loc[d, "mask_acc_decrease_pct"]
    assert mk.per_prompt[f"mask_{d}"].shape == (3,)
    with pytest.raises(InputError, match="exceeds"):
        cna.mask_keep_heldout(tiny, PROMPTS, res.target, ranked[:2], first_layer=layer, ns=(3,), progress=False)
    with pytest.raises(InputError, match="flat indices"):
        cna.mask_keep_heldout(tiny, PROMPTS, res.target, torch.tensor([0, 1]), first_layer=layer, ns=(2,), progress=False)


def test_cna_on_a_subset_of_layers(tiny):
    full = cna.compare(tiny, PROMPTS[:2], (0, 1), progress=False)
    last = tiny.cfg.n_layers - 1
    part = cna.compare(tiny, PROMPTS[:2], (0, 1), layers=[last], progress=False)
    torch.testing.assert_close(part.cna[:, last], full.cna[:, last])
    assert torch.all(part.cna[:, :last] == 0) and torch.isnan(part.imp_original[:, 0]).all()
    assert torch.all(part.top_indices(3) // tiny.cfg.d_mlp == last)
    assert set(part.top(3)["layer"]) == {last}
    with pytest.raises(InputError, match="subset"):
        cna.compare(tiny, PROMPTS[:1], (0, 1), layers=[99], progress=False)


def test_target_is_the_one_name_of_the_correct_tokens(tiny):
    """cna's functions take the correct tokens as target=, as cna.compare and neurons.ffn_neurons do; the old
    labels= keyword still works, warns, and gives the same numbers."""
    ids = tiny.to_tokens(PROMPTS[0])[0, :1].repeat(len(PROMPTS))
    a = cna.head_sweep(tiny, PROMPTS, target=ids, progress=False)
    with pytest.warns(DeprecationWarning, match="target="):
        b = cna.head_sweep(tiny, PROMPTS, labels=ids, progress=False)
    assert torch.equal(a.correct, b.correct) and torch.equal(a.prompt_logprob, b.prompt_logprob)
    with pytest.raises(InputError, match="not both"):
        cna.head_sweep(tiny, PROMPTS, ids, labels=ids, progress=False)
