"""The main job in CI: `codecircuits demo` run exactly as `make demo` runs it (default model, default settings),
its report checked in Chromium against its results.json."""

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
