"""Weight signatures: task vectors, signature = shift minus its projection on the standard task vector,
reversible alpha-patching and composition, per-document losses, the matched-norm control, signature files on disk,
on every architecture of the test matrix; the code shifts keep the program's meaning; the study's protocol and its
claims (docs/findings_signatures.md)."""

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
    assert run.top(2)["loss"].is_monotonic_decreasing and "<svg" in run.plot().to_svg()
    assert run.task_vector.top()["norm"].is_monotonic_decreasing and "<svg" in run.task_vector.plot().to_svg()
    assert torch.equal(tiny(toks), logits0)  # restored
    assert run.task_vector.norm() > 0
    assert all(not p.requires_grad or p.grad is None for p in tiny.parameters())
    # applying the task vector reproduces the fine-tuned model, and lowers the training loss
    loss0 = S.lm_loss(tiny, data)
    with S.patched(tiny, run.task_vector):
        loss1 = S.lm_loss(tiny, data)
    assert loss1 < loss0


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


def _dump(text, shift):
    tree = ast.parse(text)
    if shift in ("tabs", "indent2"):
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                node.value = "\n".join(line.lstrip() for line in node.value.split("\n"))
    return ast.dump(tree)


def test_new_shifts_keep_the_program_and_change_the_text():
    texts = S.code_snippets("validation", 40_000, 0)
    for name, fn in S.SHIFTS.items():
        changed = 0
        for t in texts:
            out = fn(t)
            changed += out != t
            if name != "rename":  # renaming changes names; the others leave the AST as it was (re-indenting also
                # re-indents the lines of docstrings)
                assert _dump(out, name) == _dump(t, name), (name, t[:200])
            else:
                ast.parse(out)
        assert changed >= len(texts) // 4, (name, changed, len(texts))
    src = "x = 'a'  # note\nif x:\n    y = \"it's\"\n"
    assert S.swap_quotes(src) == "x = \"a\"  # note\nif x:\n    y = \"it's\"\n"
    assert S.strip_comments(src) == "x = 'a'\nif x:\n    y = \"it's\"\n"
    assert S.reindent(src) == src.replace("    y", "  y")
    assert S.swap_quotes("def broken(:\n") == "def broken(:\n"


def test_random_control_matches_the_signature_norm_per_tensor(tiny):
    sig = _fake_tv(tiny, None, "sig", 7)
    r = S.random_like(sig, seed=1)
    for n, d in sig.deltas.items():
        assert float(r.deltas[n].norm()) == pytest.approx(float(d.norm()), rel=1e-5)
        cos = float((r.deltas[n].flatten() @ d.flatten()) / (r.deltas[n].norm() * d.norm()))
        assert abs(cos) < 0.5  # a different direction
    assert torch.equal(S.random_like(sig, seed=1).deltas[n], r.deltas[n])


def test_doc_losses_equal_each_document_scored_alone(tiny):
    docs = S.doc_tokens(tiny, TEXTS[:3], max_len=24)
    assert [int(d.shape[0]) for d in docs] != [24] * 3  # different lengths: padding is exercised
    batched = S.doc_losses(tiny, docs, batch_size=3)
    alone = torch.tensor([S.lm_loss(tiny, d[None]) for d in docs], dtype=torch.float64)
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="fewer than"):
        S.doc_tokens(tiny, ["x"], min_len=8)


def test_signature_file_on_disk_is_smaller_than_the_full_checkpoint(tiny, tmp_path):
    """Real files: the saved signature of one layer's MLP against a saved full copy of the weights; reading the file
    back gives the same tensors."""
    sig = _fake_tv(tiny, [0], "sig", 8)
    f32 = S.save(sig, tmp_path / "sig.safetensors")
    f16 = S.save(sig, tmp_path / "sig16.safetensors", dtype=torch.float16)
    full = S.save_full_copy(tiny, tmp_path / "full.safetensors")
    numel = sum(d.numel() for d in sig.deltas.values())
    assert 4 * numel <= f32.stat().st_size < 4 * numel + 4096
    assert 2 * numel <= f16.stat().st_size < 2 * numel + 4096
    n_full = sum(p.numel() for p in {id(p): p for p in tiny.original_model.parameters()}.values())
    assert full.stat().st_size >= 4 * n_full > f32.stat().st_size
    back = S.load(f32)
    assert back.name == "sig" and set(back.deltas) == set(sig.deltas)
    for n, d in sig.deltas.items():
        assert torch.equal(back.deltas[n], d)
    with pytest.raises(InputError, match="No signature file"):
        S.load(tmp_path / "missing.safetensors")


TINY_RUN = dict(
    shifts=("tabs", "rename", "quotes"), steps=2, batch_size=2, seq_len=32, train_chunks=6, eval_docs=4, eval_tokens=32,
    alphas=(0.5, 1.0), seeds=(0, 1), backbone_steps=1, n_resamples=50,
)


def test_study_runs_the_protocol_restores_and_reports(family, tiny, tmp_path):
    """The protocol on every architecture: the signature goes into the clean fine-tuned model (std + alpha x sig),
    each measure is the statistic of the per-document losses, the claims land in results.json, the report and
    scripts/verdict_tables.py."""
    import json
    import runpy
    import sys

    from codecircuits.intervals import VERDICTS
    from codecircuits.studies import signatures as SS

    toks = _toks(tiny)
    logits0 = tiny(toks)
    st = SS.run(tiny, progress=False, **TINY_RUN)
    assert torch.equal(tiny(toks), logits0)  # fine-tunes and patches all restored
    # the share recovered is computed against the CLEAN FINE-TUNED model and the shift fine-tune, per document
    std, sig, ft = (st.docs(m, "tabs") for m in ("std", "sig_tabs@1", "ft_tabs"))
    assert st.headline["share:tabs"].estimate == pytest.approx(float((std - sig).mean() / (std - ft).mean()), rel=1e-6)
    assert st.loss("std", "tabs") != st.loss("pre", "tabs")  # std is a fine-tuned model, not the base
    own = st.docs("std", "rename") - st.docs("sig_rename@1", "rename")
    other = torch.stack([st.docs("std", o) - st.docs("sig_rename@1", o) for o in ("tabs", "quotes")], 1).mean(1)
    assert st.headline["own_minus_other_gain:rename"].estimate == pytest.approx(float((own - other).mean()), abs=1e-9)
    assert {"transfer_share", "backbone_retention", "compose_mean_share", "random_share"} <= set(st.headline)
    assert set(st.per_seed.seed) == {0, 1} and set(st.per_seed["shift"]) == {"tabs", "rename", "quotes"}
    assert all(c.verdict in VERDICTS for c in st.claims) and len(st.claims) == 3 + 8
    iv = st.headline["share"]
    assert iv.low <= iv.estimate <= iv.high or iv.low != iv.low  # nan when undefined
    assert st.storage["ratio_full_to_signature"] > 1
    html, js = st.save(tmp_path)
    check_study_report(html, js, f"signatures-{tiny.cfg.model_name}.png", require=("table", "line-chart"),
                       screenshot=family == SCREENSHOT_FAMILY)
    data = json.loads(js.read_text())
    assert [c["claim"] for c in data["claims"]] == [c.claim for c in st.claims]
    assert 'data-metric="share"' in html.read_text()
    if family == SCREENSHOT_FAMILY:
        import contextlib
        import io
        from pathlib import Path

        buf = io.StringIO()
        argv, sys.argv = sys.argv, ["verdict_tables.py", str(js)]
        try:
            with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
                runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "verdict_tables.py"), run_name="__main__")
        finally:
            sys.argv = argv
        assert e.value.code == 0
        assert "| claim | verdict |" in buf.getvalue() and "transfer across datasets" in buf.getvalue()


def test_study_bad_input(tiny):
    from codecircuits.studies import signatures as SS

    with pytest.raises(InputError, match="Unknown shift"):
        SS.run(tiny, shifts=("tabs", "emoji"), progress=False)
    with pytest.raises(InputError, match="at least one seed"):
        SS.run(tiny, seeds=(), progress=False)


# ------------------------------------------------------------------------------------------------------------
# The study's claim on its default model (cc-py-neox, shipped), at a reduced budget (docs/findings_signatures.md).


@pytest.mark.slow
def test_cc_py_neox_tabs_signature_recovers_the_tabs_finetune_gain_in_the_clean_finetune(tmp_path):
    """Patched into the CLEAN fine-tuned model, the tabs signature recovers more than half of the tabs fine-tune's
    gain on held-out tab-indented code (interval over documents), far above a matched-norm random direction; it
    helps tabs more than the other shift (renamed locals); it still helps an updated backbone; its file is smaller
    than the full checkpoint's. Every patch is undone."""
    from codecircuits import load_model
    from codecircuits.studies import signatures as SS

    torch.set_num_threads(1)
    model = load_model("cc-py-neox", device="cpu")
    toks = _toks(model)
    logits0 = model(toks)
    st = SS.run(
        model, shifts=("tabs", "rename"), steps=12, train_chunks=48, eval_docs=20, eval_tokens=96, alphas=(1.0,),
        seeds=(0, 1), backbone_steps=6, transfer="", n_resamples=300, progress=False,
    )
    assert torch.equal(model(toks), logits0)
    h = st.headline
    assert h["finetune_gain:tabs"].low > 0.2, h["finetune_gain:tabs"]  # the shift is learnt
    assert h["share:tabs"].low > 0.5, h["share:tabs"]
    assert h["random_share:tabs"].high < 0.1 < h["share:tabs"].low, (h["random_share:tabs"], h["share:tabs"])
    assert h["own_minus_other_gain:tabs"].low > 0, h["own_minus_other_gain:tabs"]
    assert h["backbone_gain:tabs"].low > 0, h["backbone_gain:tabs"]
    for seed in (0, 1):  # each seed on its own, too
        row = st.per_seed[(st.per_seed.measure == "share") & (st.per_seed["shift"] == "tabs") & (st.per_seed.seed == seed)]
        assert float(row.low.iloc[0]) > 0.5, row
    assert st.storage["ratio_full_to_signature"] > 1.5
    claim = next(c for c in st.claims if c.claim.startswith("the tabs signature"))
    assert claim.verdict == "reproduced", claim
