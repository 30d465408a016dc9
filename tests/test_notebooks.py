"""Every notebook under notebooks/ runs top to bottom on the public API (they hold no logic of their own); every
study report a notebook writes (into its working directory) passes the browser check against its results.json."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import check_study_report

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
    for html in sorted(tmp_path.glob("*/report.html")):
        js = html.with_name("results.json")
        if js.is_file():
            check_study_report(html, js, f"notebook-{path.stem}-{html.parent.name}.png")
