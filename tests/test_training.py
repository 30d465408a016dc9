"""codecircuits.training: tokenizer, a few seeded steps, exact resume after an interruption; the shipped model."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from codecircuits import training
from codecircuits.errors import InputError
from codecircuits.testing import _TOKENIZER_TEXT

TEXTS = {
    "train": [t * 3 for t in _TOKENIZER_TEXT] * 4 + ["x = f(g(h(1)))\nprint(str(str(str(5))))\n"] * 8,
    "validation": ["def g(y):\n    return [y * 2 for y in range(3)]\n" * 6],
}
TINY = training.TrainConfig(
    vocab_size=300, d_model=32, n_layers=2, n_heads=2, d_mlp=64, n_ctx=32, batch_size=4, steps=12,
    warmup_steps=3, checkpoint_every=4, eval_tokens=0,
)  # fmt: skip


def test_tokenizer_paren_runs_and_digits():
    tok = training.train_tokenizer(TEXTS["train"], vocab_size=300)
    for s in training.PAREN_TOKENS:
        assert len(tok.encode(s)) == 1, s
    pieces = tok.tokenize("print(str(123)))")
    assert pieces[-4:] == ["1", "2", "3", ")))"]
    assert tok.decode(tok.encode("def f(x):\n    return x")) == "def f(x):\n    return x"
    # training is deterministic
    again = training.train_tokenizer(TEXTS["train"], vocab_size=300)
    assert tok.get_vocab() == again.get_vocab()


def test_tokenizer_errors():
    with pytest.raises(InputError):
        training.train_tokenizer([], vocab_size=300)
    with pytest.raises(InputError):
        training.train_tokenizer(["x"], vocab_size=100)
    with pytest.raises(InputError):
        training.TrainConfig(d_model=30, n_heads=4)
    with pytest.raises(InputError):
        training.TrainConfig(arch="mamba")


def test_batches_are_a_function_of_seed_and_step():
    a = training.batch_starts(0, 5, 4, 1000, 32)
    assert np.array_equal(a, training.batch_starts(0, 5, 4, 1000, 32))
    assert not np.array_equal(a, training.batch_starts(0, 6, 4, 1000, 32))
    assert not np.array_equal(a, training.batch_starts(1, 5, 4, 1000, 32))


def test_train_learns_and_resumes_exactly(tmp_path):
    full = training.train(TINY, tmp_path / "full", texts=TEXTS, progress=False, log_every=4)
    assert full.finished and full.steps_done == TINY.steps
    first, last = full.losses[0][1], full.losses[-1][1]
    assert last < first - 0.5, full.losses  # it learns
    assert full.top(1)["loss"].iloc[0] == max(v for _, v in full.losses) and "<svg" in full.plot().to_svg()
    # the card and the weights are written
    card = (tmp_path / "full" / "MODEL.md").read_text()
    assert "bigram" in card and f"{full.val_loss:.4f}" in card
    assert (tmp_path / "full" / "model.safetensors").is_file()

    # an interrupted run: stop after step 5 (the loop raises), then resume from the step-4 checkpoint
    class Stop(Exception):
        pass

    def interrupt(step, loss):
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        training.train(TINY, tmp_path / "cut", texts=TEXTS, progress=False, log_every=4, on_step=interrupt)
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    with pytest.raises(InputError, match="resume"):
        training.train(TINY, tmp_path / "cut", texts=TEXTS, progress=False)
    with pytest.raises(InputError, match="other settings"):
        training.train(TINY.replace(lr=1e-2), tmp_path / "cut", texts=TEXTS, resume=True, progress=False)
    resumed = training.train(TINY, tmp_path / "cut", texts=TEXTS, resume=True, progress=False, log_every=4)
    assert resumed.finished
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "full" / "model.safetensors")
    wb = load_file(tmp_path / "cut" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    assert resumed.val_loss == pytest.approx(full.val_loss, abs=1e-6)


def test_trained_model_loads_through_load_model(tmp_path):
    from codecircuits import describe, load_model

    training.train(TINY.replace(steps=2), tmp_path / "m", texts=TEXTS, progress=False)
    model = load_model(tmp_path / "m", device="cpu")
    s = describe(model)
    assert s.architecture == "GPTNeoXForCausalLM" and not s.gated_mlp and s.parallel_attn_mlp
    assert s.n_layers == TINY.n_layers and s.d_mlp == TINY.d_mlp


def test_cli_train_on_a_directory_and_minutes(tmp_path, capsys):
    from codecircuits.cli import main
    from codecircuits.corpus import split_of

    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"m{i}.py").write_text(TEXTS["train"][i % len(TEXTS["train"])] + f"\nX{i} = {i}\n")
    (src / "bad.py").write_bytes(b"\xff\xfe not utf-8")
    tiny = ["--vocab-size", "300", "--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--d-mlp", "64"]
    tiny += ["--n-ctx", "32", "--batch-size", "2", "--warmup-steps", "2", "--no-progress"]
    out = tmp_path / "out"
    assert main(["train", "--arch", "neox", "--out", str(out), "--corpus", str(src), "--steps", "3", *tiny]) == 0
    info = json.loads((out / "training.json").read_text())
    assert info["steps_done"] == 3 and info["config"]["corpus"] == str(src)
    n_train = sum(split_of(f"m{i}.py") == "train" for i in range(12)) + (split_of("bad.py") == "train")
    assert info["corpus_stats"]["train"]["files"] + info["corpus_stats"]["train"]["skipped_undecodable"] == n_train
    assert "trained 3 steps" in capsys.readouterr().out
    # --minutes: the step count is fixed after the warm-up steps and recorded
    out2 = tmp_path / "out2"
    assert main(["train", "--out", str(out2), "--corpus", str(src), "--minutes", "0.02", *tiny]) == 0
    info2 = json.loads((out2 / "training.json").read_text())
    assert info2["steps_done"] == info2["config"]["steps"] >= 3
    # an empty directory is a clear error (exit code 2 from the CLI)
    (tmp_path / "empty").mkdir()
    assert main(["train", "--out", str(tmp_path / "o3"), "--corpus", str(tmp_path / "empty"), *tiny]) == 2


def test_bigram_baseline_beats_unigram():
    rng = np.random.default_rng(0)
    # a Markov chain: the next token is the previous + 1 mod 7 most of the time
    x = [0]
    for _ in range(5000):
        x.append((x[-1] + 1) % 7 if rng.random() < 0.9 else int(rng.integers(7)))
    s = np.array(x, dtype=np.int32)
    b = training.bigram_loss(s[:4000], s[4000:], 7, 32)
    assert b["loss"] < b["unigram_loss"] - 0.5
    assert b["loss"] < 0.7  # entropy of the chain is about 0.5 nats


def test_cli_flags_round_trip():
    cfg = training.TrainConfig(steps=7, lr=0.01, seed=3)
    flags = " ".join(training._cli_flags(cfg))
    assert flags == "--steps 7 --lr 0.01 --seed 3"


# ---------------------------------------------------------------------------------------------------------
# the shipped cc-py-neox matches its card


def _card_number(card: str, pattern: str) -> float:
    m = re.search(pattern, card)
    assert m, pattern
    return float(m.group(1).replace(",", ""))


@pytest.fixture(scope="module")
def shipped():
    from codecircuits.models.loading import SHIPPED_DIR

    d = SHIPPED_DIR / "cc-py-neox"
    if not (d / "config.json").is_file():
        pytest.fail(f"the shipped model is missing from {d}")
    return d


def test_shipped_model_matches_its_card(shipped):
    from codecircuits import describe, load_model
    from codecircuits.corpus import stdlib
    from codecircuits.models.registry import REGISTRY

    card = (shipped / "MODEL.md").read_text()
    info = json.loads((shipped / "training.json").read_text())
    cfg = training.TrainConfig(**info["config"])
    size = sum(p.stat().st_size for p in shipped.iterdir() if p.is_file())
    assert size <= 30 * 2**20

    model = load_model("cc-py-neox", device="cpu")
    s = describe(model)
    assert (s.n_layers, s.d_model, s.n_heads, s.d_mlp) == (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_mlp)
    assert not s.gated_mlp and "gelu" in s.act_fn
    assert model.cfg.default_prepend_bos and model.tokenizer.bos_token == training.EOT
    assert REGISTRY["cc-py-neox"].bos == training.EOT
    for p in training.PAREN_TOKENS:
        assert len(model.tokenizer.encode(p, add_special_tokens=False)) == 1

    # validation loss on a sample of the validation stream, through the hooked model, against the card
    card_loss = _card_number(card, r"\| cc-py-neox \| ([0-9.]+) \|")
    bigram = _card_number(card, r"interpolated bigram .*? \| ([0-9.]+) \|")
    assert card_loss == pytest.approx(info["val_loss"], abs=1e-4)
    assert card_loss < bigram
    stream = training.encode_stream(model.tokenizer, stdlib("validation").texts())
    assert len(stream) == info["corpus_stats"]["validation"]["tokens"]
    # the card's fixed sample of validation windows, through the hooked model: the same loss
    sample = info["val_sample"]
    assert f"{sample['loss']:.4f}" in card
    got = training.sample_loss(model, stream, cfg.n_ctx)
    assert got["tokens"] == sample["tokens"]
    assert got["loss"] == pytest.approx(sample["loss"], abs=2e-3), (got, sample)
