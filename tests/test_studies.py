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


def test_results_json_comes_from_the_fields_and_claims_from_their_table():
    """One ``to_json`` for every study: each field converted (its ``json`` metadata, else its own ``to_json``,
    a DataFrame's records, a dataclass's fields), renamed by ``key`` or left out, then the derived numbers, the
    claims and the key numbers; a claim is a row of its study's table filled with the run's numbers."""
    from dataclasses import dataclass

    import pandas as pd

    from codecircuits.intervals import Interval
    from codecircuits.studies.common import Study, claim_specs, result

    specs = claim_specs("codecircuits toy", "the paper, p. 1", big=("{x} is big", "reproduced: above {x}", "1.0"),
                        own=("small", "rule", "2.0", "elsewhere"), bare=("bare", "rule"))

    @dataclass(frozen=True)
    class Toy(Study):
        name: str = result(key="model")
        table: pd.DataFrame = result(default_factory=lambda: pd.DataFrame({"a": [1, 2]}))
        iv: Interval = Interval(0.5, 0.25, 0.75, 4)
        hidden: object = result(None, json=None)
        scaled: float = result(2.0, json=lambda v: v * 10)
        JSON_DIGITS = 2

        def json_extra(self):
            return {"third": 1 / 3}

        def metrics(self):
            return {"x": 0.123456}

        def claims(self):
            return [specs["big"](True, False, self.iv, None, "d", x=3), specs["own"](False, True), specs["bare"](0, 0)]

    data = Toy("m").to_json()
    assert data["model"] == "m" and "name" not in data and "hidden" not in data
    assert data["table"] == [{"a": 1}, {"a": 2}] and data["iv"]["estimate"] == 0.5 and data["scaled"] == 20.0
    assert data["third"] == 0.33 and data["metrics"] == {"x": 0.12}
    big, own, bare = (Claim.from_json(c) for c in data["claims"])
    assert (big.claim, big.verdict, big.rule, big.paper, big.source, big.command) == (
        "3 is big", "reproduced", "reproduced: above 3", "1.0", "the paper, p. 1", "codecircuits toy")
    assert (own.verdict, own.source, bare.verdict, bare.source) == ("partly", "elsewhere", "not reproduced", "")
    r = Toy("m").open_report("toy", labels={"x": "the x"})
    assert r.metric_keys == {"x"}
