"""Weight signatures: task vectors, signature = shift minus its projection on the standard task vector,
reversible alpha-patching and composition, on every architecture of the test matrix; the code shifts."""

from __future__ import annotations

import ast

import pytest
import torch
from browser import SCREENSHOT_FAMILY, check_study_report

from codecircuits import InputError
from codecircuits import signatures as S

TEXTS = [
    "def f(x):\n    return (x + 1)\n",
    "import os\nfor i in range(10):\n    if i % 2 == 0:\n        print(i)\n",
    "class A:\n    def __init__(self, a, b):\n        self.a = a\n        self.b = b\n",
] * 6


def _toks(model):
    return model.to_tokens("def f(x):\n    return (x + 1)\nprint(str(str(123)))\n")


def _fake_tv(model, layers, name, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    params = S.block_params(model, layers, "mlp")
    return S.TaskVector(name, {n: scale * torch.randn(p.shape, generator=g) for n, p in params.items()})


def test_block_params_name_the_forward_weights(tiny):
    params = S.block_params(tiny, None, "mlp_out")
    assert len(params) >= tiny.cfg.n_layers
    assert all(n.startswith("blocks.") and ".mlp.out." in n for n in params)
    w = params[f"blocks.{tiny.cfg.n_layers - 1}.mlp.out.weight"]
    assert w is tiny.blocks[tiny.cfg.n_layers - 1].mlp.out._original_component.weight
    assert S.block_params(tiny, [0], "attn") and S.block_params(tiny, [0], "block")


def test_signature_removes_the_standard_component_per_tensor(tiny):
    std = _fake_tv(tiny, None, "std", 0)
    shift_only = _fake_tv(tiny, None, "shift-only", 1)
    # a shift task vector = 0.8 x standard + a shift-specific part
    shift = S.TaskVector("shift", {n: 0.8 * std.deltas[n] + shift_only.deltas[n] for n in std.deltas})
    sig = S.signature(shift, std)
    for n, d in sig.deltas.items():
        a = std.deltas[n].flatten().double()
        assert abs(float(d.flatten().double() @ a)) < 1e-6 * float(a.norm()) * float(d.norm()) + 1e-9
        assert sig.cosines[n] > 0
    # a shift that is only the standard direction has a zero signature
    same = S.signature(S.TaskVector("same", {n: 2.0 * d for n, d in std.deltas.items()}), std)
    assert max(float(d.abs().max()) for d in same.deltas.values()) < 1e-6
    # restricted to chosen layers, with a smaller storage size
    first = S.signature(shift, std, layers=[0])
    assert first.layers == [0] and first.storage_bytes() < sig.storage_bytes()
    assert sig.storage_bytes(torch.float16) * 2 == sig.storage_bytes()
    assert set(sig.norm_profile()) == set(range(tiny.cfg.n_layers))


def test_patch_is_reversible_and_alpha_zero_changes_nothing(tiny):
    toks = _toks(tiny)
    logits0 = tiny(toks)
    sig = _fake_tv(tiny, None, "sig", 2)
    rec = S.patch(tiny, sig, 0.0)
    assert torch.equal(tiny(toks), logits0)
    rec.undo(tiny)
    rec = S.patch(tiny, sig, 1.0)
    logits1 = tiny(toks)
    assert not torch.allclose(logits1, logits0)
    rec.undo(tiny)
    assert torch.equal(tiny(toks), logits0)
    with S.patched(tiny, sig, 1.0):
        assert torch.equal(tiny(toks), logits1)
    assert torch.equal(tiny(toks), logits0)


def test_patch_adds_alpha_times_signature(tiny):
    sig = _fake_tv(tiny, [0], "sig", 3)
    name = next(iter(sig.deltas))
    before = S.snapshot(tiny, [name])[name]
    with S.patched(tiny, sig, 0.5):
        after = S.snapshot(tiny, [name])[name]
    torch.testing.assert_close(after, before + 0.5 * sig.deltas[name])


def test_signatures_compose_by_summation(tiny):
    toks = _toks(tiny)
    a, b = _fake_tv(tiny, None, "a", 4), _fake_tv(tiny, [0], "b", 5)
    with S.patched(tiny, [a, b], [0.5, 2.0]):
        both = tiny(toks)
    with S.patched(tiny, S.compose([a, b], [0.5, 2.0])):
        composed = tiny(toks)
    torch.testing.assert_close(both, composed, atol=1e-5, rtol=1e-5)


def test_finetune_gives_the_task_vector_and_restores(tiny):
    toks = _toks(tiny)
    logits0 = tiny(toks)
    data = S.make_batches(tiny, TEXTS, seq_len=16)
    params = S.block_params(tiny, None, "mlp_out")
    run = S.finetune(tiny, data, params, steps=3, lr=1e-2, batch_size=2, progress=False)
    assert len(run.losses) == 3 and run.settings["tensors"] == len(params)
    assert torch.equal(tiny(toks), logits0)  # restored
    assert run.task_vector.norm() > 0
    assert all(not p.requires_grad or p.grad is None for p in tiny.parameters())
    # applying the task vector reproduces the fine-tuned model, and lowers the training loss
    loss0 = S.lm_loss(tiny, data)
    with S.patched(tiny, run.task_vector):
        loss1 = S.lm_loss(tiny, data)
    assert loss1 < loss0


def test_alpha_sweep(tiny):
    data = S.make_batches(tiny, TEXTS, seq_len=16, n=4)
    sig = _fake_tv(tiny, None, "sig", 6)
    df = S.alpha_sweep(tiny, sig, [0.0, 1.0], {"clean": data}, progress=False)
    assert list(df["alpha"]) == [0.0, 1.0]
    assert df["clean"][0] == pytest.approx(S.lm_loss(tiny, data))


def test_bad_input(tiny):
    with pytest.raises(InputError, match="weight kind"):
        S.block_params(tiny, None, "ffn")
    with pytest.raises(InputError, match="subset"):
        S.block_params(tiny, [tiny.cfg.n_layers], "mlp")
    a = _fake_tv(tiny, [0], "a", 0)
    b = _fake_tv(tiny, [1], "b", 0) if tiny.cfg.n_layers > 1 else None
    if b is not None:
        with pytest.raises(InputError, match="share no tensors"):
            S.signature(a, b)
    with pytest.raises(InputError, match="alphas"):
        S.patch(tiny, [a], [1.0, 2.0])
    with pytest.raises(InputError, match="fewer than one chunk"):
        S.make_batches(tiny, ["x"], seq_len=64)


def test_code_shifts():
    src = (
        "import os\n\n"
        "def join(path, *parts, sep='/'):\n"
        "    result = path\n"
        "    for part in parts:\n"
        "        result = result + sep + part\n"
        "    def inner(x):\n"
        "        return x + result\n"
        "    return os.path.join(result, key=inner(path))\n\n"
        "class A:\n"
        "    def f(self, value):\n"
        "        self.value = value\n"
        "        return len(value)\n"
    )
    tabs = S.tabs_for_spaces(src)
    assert "\n\tresult = path\n\tfor part in parts:\n\t\tresult" in tabs
    ast.parse(tabs)
    renamed = S.rename_locals(src)
    ast.parse(renamed)
    assert "result" not in renamed and "part " not in renamed
    assert "self.value = " in renamed and "len(" in renamed and "os.path.join" in renamed and "key=" in renamed
    assert S.rename_locals(renamed.replace("a", "a")) != src
    assert S.rename_locals("def broken(:\n") == "def broken(:\n"
    # runs the same
    ns1, ns2 = {}, {}
    exec(src, ns1)
    exec(renamed, ns2)
    assert ns1["A"]().f("abc") == ns2["A"]().f("abc") == 3


def test_study_runs_restores_and_reports(family, tiny, tmp_path):
    import json

    from codecircuits.studies import signatures as SS

    toks = _toks(tiny)
    logits0 = tiny(toks)
    st = SS.run(
        tiny, steps=2, batch_size=2, seq_len=32, train_chunks=6, eval_chunks=2, alphas=(0.0, 1.0), progress=False
    )
    assert torch.equal(tiny(toks), logits0)  # fine-tunes and patches all restored
    # alpha 0 is the base model; the shifted sets differ from the clean one
    assert st.loss("sig_tabs", 0.0, "tabs") == st.loss("base", 0.0, "tabs")
    assert st.loss("base", 0.0, "tabs") != st.loss("base", 0.0, "clean")
    assert len(st.profile) == tiny.cfg.n_layers
    m = st.metrics()
    assert m["ratio_full_to_signature"] > 1 and m["ratio_full_to_signature_shallow"] >= m["ratio_full_to_signature"]
    html, js = SS.write(st, tmp_path)
    check_study_report(html, js, f"signatures-{tiny.cfg.model_name}.png", require=("table", "line-chart"), screenshot=family == SCREENSHOT_FAMILY)
    assert json.loads(js.read_text())["metrics"]["base_clean"] == pytest.approx(m["base_clean"])
    assert 'data-metric="tabs_gain_signature"' in html.read_text()


# ------------------------------------------------------------------------------------------------------------
# Study-level findings on the default model (docs/findings_signatures.md), at a reduced budget.


@pytest.mark.slow
def test_default_model_tabs_signature_recovers_most_of_the_finetune_gain(default_model, tmp_path):
    """A brief fine-tune on tab-indented code lowers held-out tabs loss; the tabs signature (its task vector minus
    the clean one's component) keeps most of that gain, helps tabs more than clean code, and sits in a file
    several times smaller than a full copy of the weights; every patch is undone."""
    from codecircuits.studies import signatures as SS

    model = default_model
    toks = _toks(model)
    logits0 = model(toks)
    st = SS.run(
        model,
        shifts=("tabs",),
        steps=8,
        lr=3e-4,
        batch_size=4,
        seq_len=64,
        eval_chunks=4,
        alphas=(0.0, 1.0),
        progress=False,
    )
    assert torch.equal(model(toks), logits0)
    m = st.metrics()
    assert m["tabs_gain_finetune"] > 0.05, m
    assert m["tabs_gain_signature"] > 0.5 * m["tabs_gain_finetune"], m
    assert m["tabs_gain_signature"] > m["base_clean"] - m["sig_tabs_alpha1_clean"], m  # discriminative
    assert m["ratio_full_to_signature"] > 4
    html, js = SS.write(st, tmp_path)
    check_study_report(html, js, "signatures-smollm2-135m.png", require=("table", "line-chart"))
