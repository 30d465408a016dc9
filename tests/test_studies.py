"""Every registered study (codecircuits.studies.registry) runs end to end at its smoke settings on a tiny random
model, saves report.html and results.json, and its results carry a verdict table; its command is generated from the
registry with one option per setting."""

from __future__ import annotations

import json

import pytest

from codecircuits.cli import build_parser
from codecircuits.intervals import VERDICTS, Claim
from codecircuits.studies.registry import STUDIES, get

NAMES = [s.name for s in STUDIES]


@pytest.mark.parametrize("name", NAMES)
def test_study_smoke_run(name, tiny_dirs, tmp_path):
    from codecircuits import load_model

    spec = get(name)
    model = load_model(tiny_dirs["llama"], device="cpu")
    smoke = dict(spec.smoke)
    if name == "languages":  # one corpus per language: tiny Java and Go directories beside the Python one
        from test_languages import GO, JAVA

        for lang, text in (("java", JAVA), ("go", GO)):
            (tmp_path / lang).mkdir()
            (tmp_path / lang / f"a.{lang}").write_text(text * 4)
        smoke["corpora"] = ("stdlib:test", f"java:{tmp_path / 'java'}", f"go:{tmp_path / 'go'}")
    config = spec.config_class(**smoke)
    kwargs = {"out_dir": tmp_path} if spec.out_dir else {}
    study = spec.run(model, config, progress=False, **kwargs)
    html, js = study.save(tmp_path / "out", model=model)
    data = json.loads(js.read_text())
    assert html.exists() and html.stat().st_size > 1000
    claims = [Claim.from_json(c) for c in data.get("claims", [])]
    assert claims, f"{name} wrote no claims"
    assert all(c.verdict in VERDICTS for c in claims)
    assert [c.claim for c in claims] == [c.claim for c in study.claim_rows()]
    assert isinstance(study.summary_text(), str)


def test_registry_generates_every_study_command():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(NAMES) <= set(sub.choices)
    for spec in STUDIES:
        assert spec.findings.startswith("docs/") and spec.paper
        assert set(spec.smoke) <= {f for f in spec.config_class.__dataclass_fields__}, spec.name


def test_unknown_study_is_explained():
    from codecircuits.errors import InputError

    with pytest.raises(InputError, match="parens"):
        get("no-such-study")
