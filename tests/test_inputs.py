from __future__ import annotations

import pytest

from codecircuits import HookNameError, InputError
from codecircuits.core.batching import check_pair_lengths, paired_tokens, to_tokens
from codecircuits.core.inputs import check_hook_names, single_token_id


def test_hook_name_typo(tiny):
    with pytest.raises(HookNameError, match="blocks.0.attn.hook_z"):
        check_hook_names(tiny, "blocks.0.attn.hook_zz")
    assert check_hook_names(tiny, ["blocks.0.attn.hook_z"]) == ["blocks.0.attn.hook_z"]


def test_different_lengths(tiny):
    with pytest.raises(InputError, match="differ by"):
        paired_tokens(tiny, ["print(1)"], ["print(str(12345))"])
    with pytest.raises(InputError, match="pair 0"):
        check_pair_lengths(tiny, ["print(1)"], ["print(str(12345))"])
    with pytest.raises(InputError, match="different token lengths"):
        to_tokens(tiny, ["a", "print(str(1))"])


def test_single_token_label(tiny):
    assert isinstance(single_token_id(tiny, ")))"), int)
    with pytest.raises(InputError, match="not a single token"):
        single_token_id(tiny, "print(str(")


def test_token_texts_show_partial_characters_as_bytes(tiny):
    from codecircuits.core.inputs import token_texts

    tok = tiny.tokenizer
    ids = tok("s = 'ünï 日本' + x", add_special_tokens=False)["input_ids"]
    texts = token_texts(tok, ids)
    assert len(texts) == len(ids) and not any("\ufffd" in t for t in texts)
    for i, t in zip(ids, texts):
        if "\ufffd" not in tok.decode([i]):
            assert t == tok.decode([i])
        else:
            assert "\\x" in t or t.startswith("<0x")


def test_bos_id_follows_the_models_tokenization(tiny):
    from codecircuits.core.batching import bos_id

    before = tiny.cfg.default_prepend_bos
    try:
        tiny.cfg.default_prepend_bos = True
        assert bos_id(tiny) == tiny.to_tokens("x")[0, 0].item() == tiny.tokenizer.bos_token_id
        tiny.cfg.default_prepend_bos = False
        assert bos_id(tiny) is None and tiny.to_tokens("x")[0, 0].item() != tiny.tokenizer.bos_token_id
    finally:
        tiny.cfg.default_prepend_bos = before
