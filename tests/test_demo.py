"""The main job in CI: `codecircuits demo` run exactly as `make demo` runs it (default model, default settings),
its report checked in Chromium against its results.json, and the closing-paren study's claims on smollm2-135m
asserted with their 95% bootstrap intervals (heads chosen on the train split, measured on the test split). This
one run of the defaults is the only default-model run of the study in the test suite."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from browser import check_study_report

from codecircuits.studies.parens import ParensConfig

ROOT = Path(__file__).resolve().parents[1]


def make_demo_command() -> list[str]:
    """The demo recipe of the Makefile, with its variables at their defaults and BIN this interpreter's."""
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*\??=\s*(.*?)\s*$", text, flags=re.M))
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert recipe, "the Makefile has no demo target"
    lines = [ln.strip() for ln in recipe.group(1).splitlines() if ln.strip()]
    assert len(lines) == 1, f"the demo recipe should be one command, it is {lines}"
    variables["BIN"] = str(Path(sys.executable).parent)

    def expand(s: str) -> str:
        return re.sub(r"\$\((\w+)\)", lambda m: expand(variables[m.group(1)]), s)

    return shlex.split(expand(lines[0]))


def test_the_demo_recipe_is_the_default_study():
    cmd = make_demo_command()
    assert Path(cmd[0]).name == "codecircuits" and cmd[1] == "demo"
    assert cmd[2:] == ["--model", "smollm2-135m"], cmd  # the default model and no other option


@pytest.mark.slow
def test_make_demo_writes_a_report_that_matches_its_results(tmp_path):
    cmd = make_demo_command()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stderr[-4000:]}"
    html, js = tmp_path / "reports" / "parens" / "report.html", tmp_path / "reports" / "parens" / "results.json"
    assert "reports/parens/report.html" in out.stdout and html.is_file() and js.is_file(), out.stdout
    data = json.loads(js.read_text())
    assert data["config"] == json.loads(json.dumps(asdict(ParensConfig())))  # the study's defaults, nothing else
    assert data["model"] == "smollm2-135m"
    check_study_report(html, js, "demo-smollm2-135m.png", require=("heatmap", "attention", "line-chart", "table"))
    # the headline the README states: SmolLM2 closes 1-3 parens and fails at 4
    acc = data["accuracy"]
    assert all(acc[k] >= 0.95 for k in ("1", "2", "3")) and acc["4"] <= 0.2, acc
    assert_claims(data)


def _iv(d):
    return d["estimate"], d["low"], d["high"]


def assert_claims(data):
    """The study's findings on smollm2-135m, each on its interval over the test prompts."""
    iv = data["intervals"]
    claims = {c["claim"].split(" (")[0]: c for c in data["claims"]}
    # closes 1-3 parens, fails at 4 (it says ")))")
    for k in ("1", "2", "3"):
        assert iv["accuracy"][k]["low"] >= 0.9, iv["accuracy"][k]
    assert iv["accuracy"]["4"]["high"] <= 0.2 and iv["accuracy"]["4"]["n"] >= 20
    assert data["predictions"]["4"].count(")))") >= 0.8 * len(data["predictions"]["4"])
    # the answer emerges late: the interval of the emergence layer lies in the second half of the 30 layers
    for k in ("1", "2", "3"):
        assert iv["emergence_layer"][k]["low"] >= 15, iv["emergence_layer"][k]
    # attention carries the answer: its net direct effect lies above the MLPs'
    attn = claims["attention carries the answer"]
    assert attn["evidence"]["low"] > attn["control"]["high"] and attn["verdict"] == "reproduced"
    # ablating each count's top promoters (chosen on train) hurts more than ablating as many random heads
    pooled = data["ablation"]["pooled"]
    assert pooled["difference"]["low"] > 0 and pooled["drop"]["n"] >= 80
    assert claims["promoter heads' ablation hurts more than random heads'"]["verdict"] == "reproduced"
    # amplification does not repair 4 parens on this model, in either variant (c <= 2)
    amp = claims["amplification fixes the failing count"]
    assert data["scaling"]["hardest"] == 4 and data["scaling"]["hardest_chosen_on"] == "train"
    for variant in data["scaling"]["best_by_variant"].values():
        assert variant["accuracy"]["high"] < 0.8, variant
    assert amp["verdict"] != "reproduced"
    # a counting head chosen on train follows the open-paren count on test prompts that close some parens
    # first, with length and paren tokens regressed out, beyond what random heads do
    ct = data["count_tracking"]
    assert ct["top_partial_corr"]["low"] > ct["random_abs_partial_corr"]["high"], ct["top_partial_corr"]
    # patching covers at least 20 pairs per count at the answer position and at the open-paren positions
    for k, entry in data["patching"].items():
        assert entry["n_pairs"] >= 20 and entry["attn_out_parens"] and entry["attn_out"], k
