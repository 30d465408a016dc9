"""Transcoder training and quality on tiny models (sets trained in seconds): the loss falls for every activation
and family, an interrupted run resumes to the uninterrupted run's exact weights, the quality metrics are right on
known cases, and the command runs end to end into a set that ``load_transcoders`` reads."""

from __future__ import annotations

import json

import pytest
import torch

from codecircuits import corpus
from codecircuits.errors import CheckpointError, InputError
from codecircuits.transcoders import Transcoder, TranscoderSet, load_transcoders
from codecircuits.transcoders.quality import TranscoderQuality, transcoder_quality
from codecircuits.transcoders.training import fold_scales, layer_activations, train_transcoders

_MODELS: dict = {}


@pytest.fixture(scope="module")
def texts():
    files = corpus.stdlib("test").files  # the first 3,000 characters of each file: fast to tokenize
    return [f.text[:3000] for f in files[:16]], [f.text[:3000] for f in files[16:22]]


def _model(tiny_dirs, family):
    from codecircuits import load_model

    if family not in _MODELS:
        _MODELS[family] = load_model(tiny_dirs[family], device="cpu")
    return _MODELS[family]


def _fvu_curve(result):
    df = result.to_dataframe().groupby("step")["fvu"].mean()
    return float(df.iloc[0]), float(df.iloc[-3:].mean())


SMALL = dict(window=32, batch_size=8, lr=3e-3, progress=False, log_every=1)


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "qwen2"])
def test_topk_loss_falls_and_set_round_trips(tiny_dirs, family, texts, tmp_path):
    model = _model(tiny_dirs, family)
    r = train_transcoders(model, None, 64, k=8, texts=texts[0], tokens=8000, **SMALL)
    first, last = _fvu_curve(r)
    assert r.finished and r.steps_done == r.steps and last < 0.85 * first
    assert set(r.to_dataframe()["layer"]) == {0, 1} and (r.to_dataframe()["l0"] <= 8).all()
    r.transcoders.save(tmp_path / "set")
    back = load_transcoders(tmp_path / "set")
    assert back.layers == [0, 1] and back.input_hook == "mlp.hook_in" and back.output_hook == "mlp.hook_out"
    for layer, tc in r.transcoders:
        assert back[layer].activation == "topk" and back[layer].k == 8
        for name, p in tc.named_parameters():
            assert torch.equal(p, dict(back[layer].named_parameters())[name])
    assert len(r.top(1)) == 1 and r.plot().to_svg().startswith("<svg")


@pytest.mark.parametrize("activation,skip", [("jumprelu", False), ("relu", False), ("topk", True)])
def test_each_activation_learns(tiny_dirs, activation, skip, texts):
    model = _model(tiny_dirs, "llama")
    r = train_transcoders(model, [1], 64, k=8, activation=activation, skip=skip, texts=texts[0], tokens=8000, **SMALL)
    first, last = _fvu_curve(r)
    assert last < 0.9 * first, (activation, first, last)
    tc = r.transcoders[1]
    assert tc.activation == activation and (tc.W_skip is not None) == skip
    if activation == "jumprelu":
        assert not torch.allclose(tc.threshold, torch.full_like(tc.threshold, 0.5))  # the STE moved the thresholds
    if activation == "relu":  # the L1 penalty brings L0 down from its start
        l0 = r.to_dataframe().groupby("step")["l0"].mean()
        assert l0.iloc[-1] < l0.iloc[0]


def test_resume_gives_the_uninterrupted_weights(tiny_dirs, texts, tmp_path):
    model = _model(tiny_dirs, "qwen2")
    kw = dict(k=4, texts=texts[0], tokens=6000, dead_tokens=300, **SMALL)  # AuxK active (features die fast)
    straight = train_transcoders(model, None, 48, **kw)
    half = train_transcoders(model, None, 48, checkpoint_dir=tmp_path, max_steps=straight.steps // 2, **kw)
    assert not half.finished and half.steps_done == straight.steps // 2
    resumed = train_transcoders(model, None, 48, checkpoint_dir=tmp_path, **kw)
    assert resumed.finished and resumed.steps_done == straight.steps
    for layer, tc in straight.transcoders:
        for name, p in tc.named_parameters():
            assert torch.equal(p, dict(resumed.transcoders[layer].named_parameters())[name]), (layer, name)
    assert resumed.log == straight.log
    with pytest.raises(CheckpointError, match="other settings"):
        train_transcoders(model, None, 48, **(kw | {"lr": 1e-3}), checkpoint_dir=tmp_path)


def test_scales_are_folded_into_the_saved_weights(tiny_dirs, texts):
    """The saved set maps the model's own activations: its output equals the normalised transcoder's, rescaled."""
    from codecircuits.transcoders.data import token_stream

    model = _model(tiny_dirs, "llama")
    r = train_transcoders(model, [0], 32, k=4, skip=True, texts=texts[0], tokens=2000, **SMALL)
    stream = token_stream(model, texts=texts[1], tokens=500, window=32)
    x, y = layer_activations(model, *stream.batch(0, 4), [0])[0]
    tc = r.transcoders[0]
    pred = tc(x)
    assert pred.shape == y.shape
    fvu = float((y - pred).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert fvu < 1.5  # in the model's units (an unfolded set would be off by the scalars)
    assert r.transcoders.meta["training"]["n_features"] == 32 and callable(fold_scales)


def test_bad_settings_say_what_to_do(tiny_dirs, texts):
    model = _model(tiny_dirs, "llama")
    with pytest.raises(InputError, match="out of range"):
        train_transcoders(model, [5], 16, texts=texts[0], tokens=100, progress=False)
    with pytest.raises(InputError, match="TopK"):
        train_transcoders(model, [0], 16, k=32, texts=texts[0], tokens=100, progress=False)
    with pytest.raises(InputError, match="unknown training options"):
        train_transcoders(model, [0], 16, k=4, texts=texts[0], tokens=100, progress=False, l1=3)


def _known_set(model, mean_out: dict[int, torch.Tensor], n=16) -> TranscoderSet:
    """Transcoders that predict the mean output (W_dec = 0): FVU exactly 1; feature 0 always on, feature 1 never."""
    d = model.cfg.d_model
    tcs = {}
    for layer, mean in mean_out.items():
        tc = Transcoder(d, n, d, activation="topk", k=3)
        with torch.no_grad():
            tc.b_enc.copy_(torch.linspace(1.0, 0.0, n) * 10 + 1)  # features 0..2 top every token, positive
            tc.b_enc[n - 1] = -1e4  # never on
            tc.b_dec.copy_(mean)
        tcs[layer] = tc
    return TranscoderSet(tcs, scan="known")


def test_quality_on_known_cases(tiny_dirs, texts, tmp_path):
    from codecircuits.transcoders.data import token_stream

    model = _model(tiny_dirs, "gpt_neox")
    stream = token_stream(model, texts=texts[1], tokens=1500, window=32, split="test")
    ys = {0: [], 1: []}
    zero_loss, clean_loss, n = 0.0, 0.0, 0
    for start in range(0, len(stream), 8):
        toks, mask = stream.batch(start, min(8, len(stream) - start))
        for layer, (_, y) in layer_activations(model, toks, mask, [0, 1]).items():
            ys[layer].append(y)
        with torch.no_grad():
            logits = model(toks)
            ablated = model.run_with_hooks(toks, fwd_hooks=[("blocks.1.mlp.hook_out", lambda v, hook: v * 0)])
        tgt, valid = toks[:, 1:], mask[:, 1:]
        for lg, acc in ((logits, "clean"), (ablated, "zero")):
            nll = -torch.log_softmax(lg[:, :-1].float(), -1).gather(-1, tgt[..., None]).squeeze(-1)[valid].double().sum()
            if acc == "clean":
                clean_loss += float(nll)
            else:
                zero_loss += float(nll)
        n += int(valid.sum())
    means = {layer: torch.cat(v).mean(0) for layer, v in ys.items()}
    tset = _known_set(model, means)
    q = transcoder_quality(model, tset, texts=texts[1], tokens=1500, loss_tokens=None, window=32, batch_size=8,
                           progress=False)
    df = q.to_dataframe()
    assert df["fvu"].tolist() == pytest.approx([1.0, 1.0], abs=1e-4)
    assert df["l0"].tolist() == pytest.approx([3.0, 3.0])
    assert df["dead"].tolist() == pytest.approx([13 / 16, 13 / 16])  # only features 0..2 ever fire
    assert df["dense"].tolist() == pytest.approx([3 / 16, 3 / 16])
    assert q.loss == pytest.approx(clean_loss / n, abs=1e-5) and q.loss_tokens == n
    # W_dec = 0 and b_dec = the mean: not a zero ablation, so compare with one where b_dec = 0 too
    with torch.no_grad():
        for _, tc in tset:
            tc.b_dec.zero_()
    q0 = transcoder_quality(model, tset, texts=texts[1], tokens=1500, loss_tokens=None, window=32, batch_size=8,
                            progress=False)
    assert q0.rows[1]["delta_loss"] == pytest.approx(zero_loss / n - clean_loss / n, abs=1e-5)
    assert q0.delta_loss_all is not None and q0.top(1)["layer"].tolist() == [int(q0.top(2).iloc[0]["layer"])]
    q.save(tmp_path)
    back = TranscoderQuality.load(tmp_path)
    assert back.rows == q.rows and back.delta_loss_all == q.delta_loss_all
    assert q.plot().to_svg().startswith("<svg") and "| layer | FVU |" in q.table()


def test_command_trains_resumes_and_measures(tiny_dirs, tmp_path, capsys):
    from codecircuits.cli import main

    src = tmp_path / "code"
    src.mkdir()
    for i, f in enumerate(corpus.stdlib("test").files[:6]):
        (src / f"m{i}.py").write_text(f.text[:3000], encoding="utf-8")
    out = tmp_path / "set"
    argv = ["transcoders", "train", "--model", str(tiny_dirs["llama"]), "--out", str(out), "--layers", "0-1",
            "--features", "32", "--k", "4", "--tokens", "3000", "--window", "32", "--batch-size", "8",
            "--corpora", str(src), "--quality-tokens", "600", "--loss-tokens", "200", "--quiet", "--threads", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| layer | FVU |" in text and "trained 2 layers x 32 features" in text
    tset = load_transcoders(out)
    assert tset.layers == [0, 1] and tset[0].k == 4 and tset.meta["model_name"] == str(tiny_dirs["llama"])
    assert {"config.yaml", "layer_0.safetensors", "quality.json", "quality.md", "training.json"} <= {p.name for p in out.iterdir()}
    assert (out / "checkpoint" / "state.safetensors").exists()
    assert not list((out / "checkpoint").glob("*.pt")) and not list(out.glob("*.pkl"))
    before = tset[1].W_dec.clone()
    assert main(argv) == 0  # the finished checkpoint is found: no step runs, the same set is written
    assert torch.equal(load_transcoders(out)[1].W_dec, before)
    capsys.readouterr()
    assert main(["transcoders", "quality", str(out), "--corpora", str(src), "--quality-tokens", "300",
                 "--loss-tokens", "0", "--window", "32", "--quiet"]) == 0
    q = json.loads((out / "quality.json").read_text())
    assert [r["layer"] for r in q["rows"]] == [0, 1] and q["delta_loss_all"] is None
