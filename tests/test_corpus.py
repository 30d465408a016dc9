from __future__ import annotations

import pytest

from codecircuits import InputError, corpus


def test_stdlib_split_is_deterministic_and_disjoint():
    val = corpus.stdlib("validation")
    test = corpus.stdlib("test")
    assert len(val) > 10 and len(test) > 10
    assert not {f.path for f in val} & {f.path for f in test}
    assert all(corpus.split_of(f.path) == "validation" for f in val)
    assert not any("/test/" in f"/{f.path}" for f in val)


def test_humaneval():
    he = corpus.humaneval()
    assert len(he) == 164 and "def " in he.files[0].text


def test_directory_skips_undecodable_and_empty_is_error(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_bytes(b"\xff\xfe\x00bad")
    c = corpus.directory(tmp_path)
    assert len(c) == 1 and c.skipped == 1
    (tmp_path / "a.py").unlink()
    with pytest.raises(InputError, match="empty"):
        corpus.directory(tmp_path)
