"""The closing-paren task: the paper's prompts, tokenizer-checked labels, splits, counterfactuals, mined code."""

from __future__ import annotations

import pytest
import torch

from codecircuits.corpus import directory
from codecircuits.errors import InputError
from codecircuits.tasks import parens


def test_dataset_prompts_labels_and_split(tiny):
    ds = parens.dataset(tiny, n_numbers=20, seed=20)
    assert len(ds) == 4 * 20
    assert ds.n_opens == (1, 2, 3, 4)
    p = ds.select(n_open=3).prompts[0]
    assert p.text == f"#print the string {p.number}\nprint(str(str({p.number}"
    assert p.label == ")))" and p.n_calls == 2
    # label is the one token that follows the prompt's tokens
    full = tiny.to_tokens(p.text + p.label)[0].tolist()
    assert full[:-1] == tiny.to_tokens(p.text)[0].tolist() and full[-1] == p.label_id
    # 70/30 per n, same numbers for every n, numbers from the seed
    for k in ds.n_opens:
        sub = ds.select(n_open=k)
        assert sum(q.split == "train" for q in sub) == 14 and sum(q.split == "test" for q in sub) == 6
    assert [q.number for q in ds.select(n_open=1)] == [q.number for q in ds.select(n_open=4)]
    assert all(100 <= q.number <= 999 for q in ds)
    again = parens.dataset(tiny, n_numbers=20, seed=20, split="test")
    assert [q.text for q in again] == [q.text for q in ds if q.split == "test"]
    other = parens.dataset(tiny, n_numbers=20, seed=21)
    assert [q.number for q in other] != [q.number for q in ds]


def test_label_that_is_not_one_token_is_an_error(tiny):
    # ")))))" is two tokens for the tiny tokenizer
    with pytest.raises(InputError, match="not a single token"):
        parens.dataset(tiny, n_values=(4,), n_numbers=3)


def test_bad_arguments(tiny):
    with pytest.raises(InputError):
        parens.dataset(tiny, n_values=())
    with pytest.raises(InputError):
        parens.dataset(tiny, n_numbers=0)
    with pytest.raises(InputError):
        parens.dataset(tiny, split="dev")
    with pytest.raises(InputError):
        parens.pairs(tiny, parens.dataset(tiny, n_numbers=3), strategy="more")


def test_accuracy_matches_argmax(tiny):
    ds = parens.dataset(tiny, n_numbers=6, split="test")
    acc = parens.accuracy(tiny, ds, batch_size=2)
    assert set(acc) == {1, 2, 3, 4}
    for k, (ps, toks) in ds.groups(tiny).items():
        with torch.no_grad():
            pred = tiny(toks)[:, -1].argmax(-1)
        want = float((pred == torch.tensor([p.label_id for p in ps])).float().mean())
        assert acc[k] == pytest.approx(want)


def test_pairs_have_equal_length_and_a_different_answer(tiny):
    ds = parens.dataset(tiny, n_numbers=5)
    pp = parens.pairs(tiny, ds, on_missing="skip")
    assert len(pp) > 0
    for p in pp:
        assert tiny.to_tokens(p.clean).shape == tiny.to_tokens(p.corrupted).shape
        assert abs(p.corrupted_n_open - p.n_open) == 1 and p.clean_id != p.corrupted_id
        assert p.corrupted.count("(") - p.clean.count("(") == p.corrupted_n_open - p.n_open
    for k in pp.n_opens:
        clean, corrupted = pp.select(n_open=k).tokens(tiny)
        assert clean.shape == corrupted.shape


def test_counterfactual_that_changes_length_is_an_error(tiny):
    p = parens.dataset(tiny, n_values=(1,), n_numbers=1).prompts[0]
    # the tiny tokenizer has no "((" token, so inserting a paren adds a token
    with pytest.raises(InputError, match="tokens"):
        parens.counterfactual(tiny, p, "extra", 0)
    with pytest.raises(InputError):
        parens.counterfactual(tiny, p, "fewer", 1, replacement=" and more words ")
    # for 1 open paren only "extra" exists, and it fails here: no pair, a clear error
    with pytest.raises(InputError, match="No same-length counterfactual"):
        parens.pairs(tiny, parens.dataset(tiny, n_values=(0,), n_numbers=2))


def test_mined_positions_before_closing_parens(tiny, tmp_path):
    code = "x = f(g(h(1)))\ny = f(g(2))\nz = print(3)\n" * 4
    (tmp_path / "a.py").write_text(code)
    mp = parens.mined(tiny, directory(tmp_path), counts=(1, 2, 3), window=3, max_per_count=50)
    assert mp.candidates[3] >= 3 and mp.candidates[2] >= 3 and mp.candidates[1] >= 3
    ids = parens.paren_token_ids(tiny, 3)
    for i in range(len(mp)):
        k = int(mp.n_close[i])
        assert int(mp.label_ids[i]) == ids[k]
        assert int(mp.depth[i]) == k  # every closing run in this code closes all open parens
        assert mp.tokens.shape[1] == 3 + int(tiny.cfg.default_prepend_bos)
    with pytest.raises(InputError):
        parens.mined(tiny, directory(tmp_path), counts=(1,), window=0)


@pytest.mark.slow
def test_default_model_pairs_use_double_paren_token(default_model):
    ds = parens.dataset(default_model, n_numbers=10, split="test")
    pp = parens.pairs(default_model, ds)
    assert len(pp) == len(ds)
    kinds = {p.n_open: p.kind for p in pp}
    assert kinds == {1: "extra", 2: "extra", 3: "extra", 4: "fewer"}  # ")))))" is not one token
    assert all(p.corrupted_n_open == (5 - 2 if p.n_open == 4 else p.n_open + 1) for p in pp)


def test_closed_dataset_closes_calls_before_the_open_ones(tiny):
    text = parens.closed_prompt_text(1, 2, 123)
    assert text == "#print the string 123\nprint(str(str(123))+str(123"
    assert parens.closed_prompt_text(0, 0, 5) == "#print the string 5\nprint(5+5"
    ds = parens.closed_dataset(tiny, n_values=(0, 1), closed_values=(0, 2), n_numbers=10)
    assert len(ds) == 2 * 2 * 10 and ds.n_closeds == (0, 2)
    p = ds.select(n_open=2, n_closed=2).prompts[0]
    assert p.text.count("(") - p.text.count(")") == p.n_open == 2 and p.label == "))"
    full = tiny.to_tokens(p.text + p.label)[0].tolist()
    assert full[-1] == p.label_id == ds.label_ids[2]
    # limit counts per (open, closed) cell; token lengths group any mix of counts
    assert len(ds.select(split="test", limit=1)) == 4
    groups = ds.select(limit=2).by_length(tiny)
    assert sum(len(ps) for ps, _ in groups) == 8
    assert all(t.shape[0] == len(ps) for ps, t in groups)
    # the paper's dataset is unchanged: n_closed is 0 and limits stay per n_open
    plain = parens.dataset(tiny, n_numbers=5)
    assert plain.n_closeds == (0,) and len(plain.select(limit=2)) == 8
    with pytest.raises(InputError):
        parens.closed_dataset(tiny, closed_values=(-1,), n_numbers=2)
    with pytest.raises(InputError):
        parens.closed_prompt_text(-1, 0, 1)
