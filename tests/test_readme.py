"""The README's python blocks work as written: every ```python block, in order, in one namespace (a later block
uses the ``model`` an earlier one loaded), as a reader pasting them into one session would run them.

The run is slow (it loads the default model and starts a local Ray cluster of 2 workers for the README's sharded
scan), so it runs in a subprocess of its own: a fresh interpreter, like the reader's, and no clash with the Ray
cluster another test of this session may hold. Files the blocks write (the scan's checkpoint) go to ``tmp_path``.

The fast test checks the same blocks, and those of docs/distributed.md, without running them: each compiles,
names nothing before an earlier block defines it (ruff's F821: the README's Ray block once used ``mem`` without
importing it), and passes ``workers=`` only to a ``run`` (``distributed.run`` or a study's ``run``): the methods
take no ``workers=``.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, ROOT / "docs" / "distributed.md"]

_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(first line number, code)`` of every ```python block of ``path``, in order."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_python_blocks_compile_and_use_the_current_api(path):
    blocks = python_blocks(path)
    assert blocks, f"{path.name} has no python block"
    for line, code in blocks:
        tree = ast.parse(code, filename=f"{path.name}:{line}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and any(k.arg == "workers" for k in node.keywords):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                assert name == "run", (
                    f"{path.name}, block at line {line}: {ast.unparse(func)}(..., workers=...): methods take no "
                    "workers=; shard them with distributed.run(method, *args, workers=N, **kwargs)"
                )
    args = "-m ruff check --no-cache --isolated --select F821 --output-format concise --stdin-filename".split()
    ruff = subprocess.run(
        [sys.executable, *args, f"{path.stem}_blocks.py", "-"],
        input="\n".join(code for _, code in blocks),
        capture_output=True,
        text=True,
    )
    if "No module named ruff" in ruff.stderr:
        pytest.skip("ruff (the dev extra) is not installed")
    assert ruff.returncode == 0, f"{path.name}: a name used before any block defines it:\n{ruff.stdout}{ruff.stderr}"


_RUNNER = """
blocks = {blocks!r}
namespace = {{"__name__": "__main__"}}
for line, code in blocks:
    print(f"README.md block at line {{line}}", flush=True)
    exec(compile(code, f"README.md:{{line}}", "exec"), namespace)
"""


@pytest.mark.slow
def test_readme_python_blocks_run_as_written(tmp_path):
    blocks = python_blocks(README)
    script = tmp_path / "readme_blocks.py"
    script.write_text(_RUNNER.format(blocks=blocks), encoding="utf-8")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert proc.stdout.count("README.md block at line") == len(blocks)
