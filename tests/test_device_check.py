"""``scripts/device_check.py`` (``make device-check``): its comparison catches differences, and the whole check
runs with ``--device cpu`` on the whole tiny matrix (every family, every method: 96 checks, ~45 s on 2 cores)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from codecircuits.testing import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@dataclass
class _Result:
    values: torch.Tensor
    index: torch.Tensor
    meta: dict


def test_compare_catches_differences():
    dc = _script()
    ref = _Result(torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0, 1, 2]), {"m": 0.5, "seconds": 1.0})

    def with_(**kw):
        return _Result(**({"values": ref.values.clone(), "index": ref.index.clone(), "meta": dict(ref.meta)} | kw))

    assert dc.compare(ref, with_(meta={"m": 0.5, "seconds": 9.0}))["passed"]  # timings are not compared
    close = dc.compare(ref, with_(values=ref.values + 1e-4))
    assert close["passed"] and close["max_diff"] > 0 and close["tol"] == dc.ATOL + dc.RTOL * 3.0
    far = dc.compare(ref, with_(values=ref.values + torch.tensor([0, 0, 0.1])))
    assert not far["passed"] and far["worst"] == ".values" and abs(far["max_diff"] - 0.1) < 1e-6
    assert not dc.compare(ref, with_(values=torch.tensor([1.0, float("nan"), 3.0])))["passed"]
    assert not dc.compare(ref, with_(values=ref.values[:2]))["passed"]
    assert not dc.compare(ref, with_(index=torch.tensor([0, 2, 1])))["passed"]  # 2/3 of the indices differ
    assert not dc.compare(ref, with_(meta={"m": 0.6}))["passed"]


def test_device_check_on_the_cpu(tmp_path):
    out = tmp_path / "dc"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "device_check.json").read_text())
    assert res["passed"] and res["n_failed"] == 0 and "big_skipped" in res
    checks = {c["check"]: c for c in res["checks"]}
    for prefix in ("patching.", "ablation.", "attribution.", "edges.", "neurons.", "memories.", "graphs."):
        assert any(name.startswith(prefix) for name in checks), prefix
    assert {c["family"] for c in res["checks"]} == set(FAMILIES)
    for c in res["checks"]:
        assert c["passed"] and not c.get("skipped"), c
        assert c["max_diff"] is not None and c["max_diff"] <= c["tol"] and c["compared"] > 0, c
