"""codecircuits.quality and `codecircuits eval`: loss bookkeeping on every family, paren accuracy, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from codecircuits.corpus import CodeFile, Corpus
from codecircuits.errors import InputError
from codecircuits.quality import _windows, corpus_loss, evaluate

FILES = Corpus(
    "tiny",
    [
        CodeFile("a.py", "def f(x):\n    return (x + 1)\n" * 3),
        CodeFile("b.py", "print(str(str(123)))\nfor i in range(10):\n    print(i)\n"),
        CodeFile("c.py", "x"),  # one token: nothing to predict
    ],
)


@pytest.mark.parametrize("window", [2, 3, 5, 8, 100])
@pytest.mark.parametrize("skip", [0, 1])
def test_windows_score_each_target_once(window, skip):
    ids = list(range(23))
    targets = []
    for c, s in _windows(ids, window, skip):
        assert 2 <= len(c) <= window
        targets += c[1 + s :]
    assert targets == ids[1 + skip :]


def _manual_nats(model, texts, prepend_bos):
    """Each file in one forward pass through the Hugging Face model, summed nats of its scored targets."""
    hf = model.original_model if hasattr(model, "original_model") else model
    tok = model.tokenizer
    total, n = 0.0, 0
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        skip = 0
        if prepend_bos:
            ids = [tok.bos_token_id] + ids
            skip = 1
        if len(ids) - 1 - skip <= 0:
            continue
        x = torch.tensor([ids])
        with torch.no_grad():
            lp = torch.log_softmax(hf(x).logits[0, :-1].float(), -1)
        nll = -lp[torch.arange(len(ids) - 1), x[0, 1:]]
        total += nll[skip:].sum().item()
        n += len(ids) - 1 - skip
    return total, n


@pytest.mark.parametrize("bos", [False, True])
def test_corpus_loss_matches_a_plain_forward(tiny, bos):
    r = corpus_loss(tiny, FILES, max_chars=0, file_chars=0, window=512, prepend_bos=bos, progress=False)
    nats, n = _manual_nats(tiny, [f.text for f in FILES], bos)
    assert r.tokens == n
    assert r.nats == pytest.approx(nats, rel=1e-4)
    assert r.files == 3 and r.chars == sum(len(f.text) for f in FILES)
    assert r.bytes == r.chars  # ASCII
    assert r.loss == pytest.approx(r.nats / r.tokens)


def test_bos_and_window_keep_the_same_targets(tiny):
    a = corpus_loss(tiny, FILES, max_chars=0, file_chars=0, prepend_bos=False, progress=False)
    b = corpus_loss(tiny, FILES, max_chars=0, file_chars=0, prepend_bos=True, progress=False)
    c = corpus_loss(tiny, FILES, max_chars=0, file_chars=0, window=4, prepend_bos=False, progress=False)
    assert a.tokens == b.tokens == c.tokens
    assert a.nats != pytest.approx(c.nats)  # shorter windows: less context, different loss


def test_char_caps_give_every_model_the_same_text(tiny):
    r = corpus_loss(tiny, FILES, max_chars=70, file_chars=40, progress=False)
    assert r.chars == 70 and r.files == 2  # 40 chars of a.py + 30 of b.py


def test_corpus_loss_errors(tiny):
    with pytest.raises(InputError):
        corpus_loss(tiny, FILES, window=1, progress=False)
    with pytest.raises(InputError):
        corpus_loss(tiny, Corpus("empty", []), progress=False)


@pytest.fixture(scope="module")
def heldout():
    from codecircuits import corpus

    return (corpus.stdlib("test"), corpus.humaneval())


def test_evaluate_on_every_family(tiny, heldout):
    r = evaluate(tiny, corpora=heldout, max_chars=1500, n_numbers=10, progress=False)
    assert [c.corpus for c in r.losses] == ["stdlib:test", "humaneval"]
    for c in r.losses:
        assert c.chars == 1500 and c.tokens > 100 and 0 < c.loss < 20 and c.bits_per_byte > 0
    assert list(r.paren_accuracy) == [1, 2, 3, 4]
    assert all(0.0 <= v <= 1.0 for v in r.paren_accuracy.values())
    assert all(n == 10 for n in r.paren_prompts.values())
    assert r.prepend_bos == tiny.cfg.default_prepend_bos
    d = json.loads(r.to_json())
    assert d["losses"]["humaneval"]["tokens"] == r.loss("humaneval").tokens
    assert set(r.to_dataframe().metric) >= {"loss:humaneval", "bpb:stdlib:test", "parens:4"}
    top, hardest = r.top(2), r.hardest(2)
    assert len(top) == 2 and top.value.is_monotonic_decreasing and hardest.value.is_monotonic_increasing
    assert 'data-bars="4"' in r.plot().svg
    assert "parens accuracy" in str(r)


def test_bos_override_is_temporary(tiny, heldout):
    before = tiny.cfg.default_prepend_bos
    r = evaluate(tiny, corpora=heldout[1:], max_chars=300, n_numbers=5, prepend_bos=not before, progress=False)
    assert r.prepend_bos == (not before)
    assert tiny.cfg.default_prepend_bos == before


def test_cli_eval_writes_json(tiny_dirs, tmp_path, capsys):
    from codecircuits.cli import main

    out = tmp_path / "e.json"
    rc = main(
        [
            "eval",
            str(tiny_dirs["llama"]),
            "--max-chars",
            "400",
            "--numbers",
            "5",
            "--json-out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "loss humaneval" in printed and "parens accuracy" in printed
    d = json.loads(out.read_text())
    assert set(d["losses"]) == {"stdlib:test", "humaneval"} and set(d["paren_accuracy"]) == {"1", "2", "3", "4"}


@pytest.mark.slow
def test_smollm2_paren_accuracy_and_bos_decision(default_model):
    """Faithful dequantization + bridge: SmolLM2 closes 1-3 parens and fails at 4, like GPT-2 in the paper."""
    from codecircuits.quality import paren_accuracy

    assert default_model.cfg.default_prepend_bos is False  # the registry's decision (docs/models.md)
    acc, counts = paren_accuracy(default_model, n_numbers=100)
    assert counts == {1: 100, 2: 100, 3: 100, 4: 100}
    assert acc[1] >= 0.95 and acc[2] >= 0.95 and acc[3] >= 0.95, acc
    assert acc[4] <= 0.2, acc
