"""The GPU check (issue 29, item 7): every method's results on a device equal the CPU's, then the 7B shapes in bf16.

    python scripts/device_check.py --device cuda --out out/device-check      # or: make device-check DEVICE=cuda
    python scripts/device_check.py --device cpu --out /tmp/dc --families llama,qwen2

1. **The tiny matrix** (``codecircuits.testing.FAMILIES``, tiny random models). For each family and each method
   (patching sweeps, ablation sweeps, attribution sweeps, EAP and EAP-IG edge scores, FFN and attention neuron
   scores, the memories scan, the attribution graph), the method runs on the CPU (the reference: float32, one
   thread) and on ``--device`` (a second, independently loaded copy of the model). Every number of the two results
   is compared (each tensor, array and number found in the result object, timings excluded): floating values pass
   when ``max |device - cpu| <= atol + rtol * max |cpu|`` per tensor, index tensors when at most ``index_tol`` of
   their entries differ. The attribution graph runs in float64 on both (as ``tests/test_graphs.py`` does: the
   tiny models' near-zero first residual magnifies float32 rounding by 10^3). With ``--device cpu`` the second
   copy is simply a second run (with ``--threads N`` CPU threads; 1 by default, so its results are usually
   identical): it exercises everything but the device itself.
2. **The 7B shapes** (``codecircuits.shapes``: CodeLlama-7b's and Qwen2.5-Coder-7B's, random weights, bf16), on
   ``--device`` only; skipped on the CPU unless ``--big`` (``--layers N`` builds N layers of each, for a quick
   run of the code path). For each: the build's time and memory, a forward pass (finite logits), our patching sweeps
   (``resid_pre`` by layer and position, ``z`` by layer and head) timed against TransformerLens's own loop
   (``generic_activation_patch``, one forward per cell) on sampled cells and extrapolated by cell count, the two
   compared on those cells, EAP-IG edge scores (finite), and the peak memory of each step
   (``torch.cuda.max_memory_allocated`` on a GPU, the process's peak resident set on the CPU).

It writes ``<out>/device_check.json`` (every check with its max difference, tolerance and pass/fail) and exits 1 if
a check failed. Steps that would run past ``--time-limit`` seconds are skipped and say so.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import math
import os
import platform
import re
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np
import torch

RTOL, ATOL = 1e-3, 1e-5  # float32 device vs CPU, relative to the tensor's largest |value|
INDEX_TOL = 0.02  # fraction of entries of an index tensor (top-k positions, chunks) allowed to differ (near ties)
BIG_RTOL, BIG_ATOL = 0.05, 0.05  # bf16: our sweep vs TransformerLens's loop on the same cells
SKIP_KEY = re.compile(r"(time|seconds|elapsed|wall|duration|_s$|peak|memory|bytes|budget|path|model)", re.I)
PROMPTS = ["def f(x):\n    return (x", "print(str(str(12"]
TEXTS = [
    "import os\n\n\ndef read(path):\n    with open(path) as f:\n        return f.read()\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n    else:\n        continue\n",
    "try:\n    value = int(text)\nexcept ValueError:\n    value = None\n# fall back to the default\n",
    "import re\nPATTERN = re.compile(r'\\d+')\nnumbers = [int(m) for m in PATTERN.findall('a1b22c333')]\n",
]


# ------------------------------------------------------------------------------------------------------------
# comparing two results


def numbers_of(obj, prefix: str = "", depth: int = 0, out: dict | None = None) -> dict[str, np.ndarray]:
    """Every tensor, array and number inside ``obj`` (dataclasses, dicts, lists, DataFrames), by path."""
    import pandas as pd

    out = {} if out is None else out
    if depth > 5 or isinstance(obj, (str, bytes, torch.nn.Module, type(None))):
        return out
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj.detach().cpu().numpy() if obj.dtype != torch.bfloat16 else obj.detach().float().cpu().numpy()
    elif isinstance(obj, np.ndarray):
        out[prefix] = obj
    elif isinstance(obj, (bool, int, float, np.number)):
        out[prefix] = np.asarray(obj)
    elif isinstance(obj, pd.DataFrame):
        for c in obj.select_dtypes("number").columns:
            out[f"{prefix}.{c}"] = obj[c].to_numpy()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if not SKIP_KEY.search(str(k)):
                numbers_of(v, f"{prefix}.{k}", depth + 1, out)
    elif isinstance(obj, (list, tuple)):
        if obj and all(isinstance(v, (bool, int, float)) for v in obj):
            out[prefix] = np.asarray(obj)
        else:
            for i, v in enumerate(obj[:64]):
                numbers_of(v, f"{prefix}[{i}]", depth + 1, out)
    elif is_dataclass(obj):
        for f in fields(obj):
            if not SKIP_KEY.search(f.name):
                numbers_of(getattr(obj, f.name, None), f"{prefix}.{f.name}", depth + 1, out)
    return out


def compare(ref, got, rtol: float = RTOL, atol: float = ATOL, index_tol: float = INDEX_TOL) -> dict:
    """``ref`` against ``got``: the worst tensor's max difference and tolerance, and whether every tensor passes."""
    a, b = numbers_of(ref), numbers_of(got)
    if not a:
        return {"passed": False, "max_diff": None, "tol": None, "worst": None, "note": "no numbers in the result"}
    worst = {"passed": True, "max_diff": 0.0, "tol": atol, "worst": next(iter(a)), "ratio": -1.0, "note": ""}
    for key, x in a.items():
        if key not in b or np.shape(b[key]) != np.shape(x):
            why = "missing" if key not in b else f"shape {np.shape(b[key])} != {np.shape(x)}"
            return {"passed": False, "max_diff": None, "tol": None, "worst": key, "note": f"{key}: {why}"}
        y = b[key]
        if x.size == 0:
            continue
        if x.dtype.kind in "biu":  # indices, counts, masks: the fraction of entries that differ
            diff, tol = float(np.mean(x != y)), index_tol
        else:
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            same_nan = np.isnan(x64) == np.isnan(y64)
            fin = np.isfinite(x64) & np.isfinite(y64)
            same_inf = np.where(np.isinf(x64) | np.isinf(y64), x64 == y64, True)
            if not (same_nan.all() and same_inf.all()):
                return {"passed": False, "max_diff": math.inf, "tol": None, "worst": key, "note": f"{key}: nan/inf differ"}
            diff = float(np.abs(x64 - y64)[fin].max()) if fin.any() else 0.0
            tol = atol + rtol * (float(np.abs(x64[fin]).max()) if fin.any() else 0.0)
        ratio = diff / tol if tol > 0 else (0.0 if diff == 0 else math.inf)
        if ratio > worst["ratio"]:
            worst.update(max_diff=diff, tol=tol, worst=key, ratio=ratio)
        worst["passed"] &= diff <= tol
    worst["compared"] = len(a)
    return worst


# ------------------------------------------------------------------------------------------------------------
# the tiny matrix


def load_on(path, device: str, dtype=torch.float32):
    """``load_model`` on ``device``; moves the bridge there if the loader left its weights elsewhere."""
    from codecircuits import load_model

    model = load_model(path, device=device, dtype=dtype)
    if next(model.parameters()).device.type != torch.device(device).type:
        model.to(device, print_details=False)
        model.codecircuits_moved = True  # noted in the results: load_model(device=...) did not place the weights
    return model


def method_calls(model, clean, corr):
    """``(name, fn)`` for every method checked on the tiny matrix; ``fn(model)`` returns the method's result."""
    from codecircuits import ablation, attribution, neurons, patching
    from codecircuits import memories as mem
    from codecircuits.circuits import edge_scores
    from codecircuits.testing import toy_metric

    calls = [
        ("patching.resid_pre", lambda m: patching.sweep(m, clean, corr, toy_metric, site="resid_pre", progress=False)),
        ("patching.z", lambda m: patching.sweep(m, clean, corr, toy_metric, site="z", progress=False)),
        ("patching.z_by_pos", lambda m: patching.sweep(m, clean, corr, toy_metric, site="z",
                                                       by=("layer", "pos", "head"), progress=False)),
        ("patching.k_query_head", lambda m: patching.sweep(m, clean, corr, toy_metric, site="k",
                                                           by=("layer", "head"), progress=False)),
        ("ablation.head_mean", lambda m: ablation.head_sweep(m, clean, toy_metric, kind="mean", progress=False)),
        ("ablation.neuron_zero", lambda m: ablation.neuron_sweep(m, clean, toy_metric, neurons=list(range(16)),
                                                                 progress=False)),
        ("ablation.layer_zero", lambda m: ablation.layer_sweep(m, clean, toy_metric, progress=False)),
        ("attribution.resid_pre", lambda m: attribution.sweep(m, clean, corr, toy_metric, site="resid_pre",
                                                              progress=False)),
        ("attribution.z", lambda m: attribution.sweep(m, clean, corr, toy_metric, site="z", progress=False)),
        ("edges.EAP", lambda m: edge_scores(m, clean, corr, toy_metric, method="EAP")),
        ("edges.EAP-IG-inputs", lambda m: edge_scores(m, clean, corr, toy_metric, method="EAP-IG-inputs")),
        ("edges.EAP-IG-ungrouped", lambda m: edge_scores(m, clean, corr, toy_metric, grouped=False)),
        ("neurons.ffn", lambda m: neurons.ffn_neurons(m, PROMPTS, scores="all", progress=False)),
        ("neurons.attention", lambda m: neurons.attention_neurons(m, PROMPTS[:1], progress=False)),
        ("memories.scan", lambda m: mem.scan(m, mem.chunk_corpus(m, TEXTS, window=16), k=3, batch_size=4,
                                             progress=False)),
    ]
    return calls


def graph_call(model):
    from codecircuits.graphs import attribute

    return attribute(model, "print(str(str(123", "neurons", max_feature_nodes=None, progress=False)


def timed_call(fn, model, threads: int):
    """``(result, seconds, error)``: ``fn(model)`` run with ``threads`` CPU threads, synchronised on a GPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    sync()
    t0 = time.perf_counter()
    try:
        return fn(model), time.perf_counter() - t0, None
    except Exception as e:  # recorded in the results, never hidden
        return None, time.perf_counter() - t0, describe(e)
    finally:
        sync()
        torch.set_num_threads(before)


def check_one(name, family, fn, ref_model, dev_model, dev_threads: int, **tol) -> dict:
    """One method on one family: the CPU result against the device's."""
    ref, t_ref, err_ref = timed_call(fn, ref_model, 1)
    row = {"section": "tiny", "check": name, "family": family, "seconds_cpu": round(t_ref, 3)}
    if err_ref is not None:  # the method refuses this family on the CPU too: not a device problem
        return row | {"passed": True, "skipped": True, "note": f"refused on the CPU: {err_ref}"}
    got, t_dev, err_dev = timed_call(fn, dev_model, dev_threads)
    row["seconds_device"] = round(t_dev, 3)
    if err_dev is not None:
        return row | {"passed": False, "max_diff": None, "tol": None, "note": f"failed on the device: {err_dev}"}
    res = compare(ref, got, **tol)
    res.pop("ratio", None)
    return row | res


def tiny_checks(device: str, families, deadline: float, log, dev_threads: int = 1) -> list[dict]:
    """Every method on every family of the tiny matrix, the CPU against ``device``."""
    from codecircuits.core.batching import paired_tokens
    from codecircuits.testing import PAIR_CLEAN, PAIR_CORRUPTED, save_tiny_model

    rows = []
    with tempfile.TemporaryDirectory(prefix="cc-device-check-") as root:
        for family in families:
            path = save_tiny_model(family, Path(root) / family)
            ref, dev = load_on(path, "cpu"), load_on(path, device)
            clean, corr = paired_tokens(ref, list(PAIR_CLEAN), list(PAIR_CORRUPTED))
            note = "load_model(device=...) left the weights on the CPU; moved with .to()" if getattr(
                dev, "codecircuits_moved", False) else ""
            for name, fn in method_calls(ref, clean, corr):
                if time.monotonic() > deadline:
                    rows.append({"section": "tiny", "check": name, "family": family, "passed": True,
                                 "skipped": True, "note": "time limit reached"})
                    continue
                row = check_one(name, family, fn, ref, dev, dev_threads)
                rows.append(row | ({"load_note": note} if note else {}))
                log(row)
            del ref, dev
            if time.monotonic() > deadline:
                rows.append({"section": "tiny", "check": "graphs.attribute (float64)", "family": family,
                             "passed": True, "skipped": True, "note": "time limit reached"})
                continue
            ref64, dev64 = load_on(path, "cpu", torch.float64), load_on(path, device, torch.float64)
            row = check_one("graphs.attribute (float64)", family, graph_call, ref64, dev64, dev_threads,
                            rtol=1e-6, atol=1e-9)
            rows.append(row)
            log(row)
            del ref64, dev64
            free_memory()
    return rows


# ------------------------------------------------------------------------------------------------------------
# the 7B shapes


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak(device: str):
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    """Peak GPU memory allocated since the last reset, or the process's peak resident set on the CPU (GiB)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    status = Path("/proc/self/status")  # VmHWM: unlike ru_maxrss, not inherited from a forking parent
    if status.exists():
        line = next((x for x in status.read_text().splitlines() if x.startswith("VmHWM:")), None)
        if line:
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def big_tokens(n_pairs: int, n_pos: int, seed: int = 0):
    """Random clean prompts (ids 1..319 after BOS 0) and corrupted ones differing in their last 3 positions."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, 320, (n_pairs, n_pos), generator=g)
    clean[:, 0] = 0
    corr = clean.clone()
    corr[:, -3:] = torch.randint(1, 320, (n_pairs, 3), generator=g)
    return clean, corr


def big_metric(logits):
    return (logits[:, -1, 5] - logits[:, -1, 7]).float()


def tl_sampled(model, clean, corr, site: str, by, per_layer: int, seed: int = 0):
    """TransformerLens's own patching loop on ``per_layer`` random cells per layer: ``(index_df, values, seconds)``."""
    import pandas as pd
    from transformer_lens import patching as tlp

    n_layers, n_heads, n_pos = model.cfg.n_layers, model.cfg.n_heads, clean.shape[1]
    g = torch.Generator().manual_seed(seed)
    rows = []
    for layer in range(n_layers):
        for _ in range(per_layer):
            p, h = int(torch.randint(n_pos, (1,), generator=g)), int(torch.randint(n_heads, (1,), generator=g))
            rows.append((layer, h) if by == ("layer", "head") else (layer, p))
    index_df = pd.DataFrame(rows, columns=["layer", "head_index" if by == ("layer", "head") else "pos"])
    setter = tlp.layer_head_vector_patch_setter if by == ("layer", "head") else tlp.layer_pos_patch_setter
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean.to(model.cfg.device))
    tl_tqdm, tlp.tqdm = tlp.tqdm, lambda it, *a, **k: it
    try:
        sync()
        t0 = time.perf_counter()
        vals = tlp.generic_activation_patch(model, corr.to(model.cfg.device), clean_cache, big_metric,
                                            patch_setter=setter, activation_name=site, index_df=index_df,
                                            reduce="mean")
        sync()
        return index_df, vals, time.perf_counter() - t0
    finally:
        tlp.tqdm = tl_tqdm
        del clean_cache


def big_sweep(model, clean, corr, device: str, site: str, by, per_layer: int) -> dict:
    """Our sweep against TransformerLens's loop on sampled cells (extrapolated to every cell)."""
    from codecircuits import patching

    reset_peak(device)
    sync()
    t0 = time.perf_counter()
    ours = patching.sweep(model, clean, corr, big_metric, site=site, by=by, progress=False)
    sync()
    t_ours = time.perf_counter() - t0
    peak = peak_gib(device)
    cells = int(np.prod(ours.values.shape))
    index_df, ref, t_tl = tl_sampled(model, clean, corr, site, by, per_layer)
    idx = tuple(torch.tensor(index_df[c].tolist()) for c in index_df.columns)
    mine = ours.values.float().cpu()[idx]
    ref = ref.float().cpu()
    diff = float((mine - ref).abs().max())
    tol = BIG_ATOL + BIG_RTOL * float(ref.abs().max())
    t_tl_all = t_tl * cells / len(index_df)
    return {"check": f"patching.{site} by {'x'.join(by)}", "cells": cells, "ours_s": round(t_ours, 3),
            "tl_sampled_cells": len(index_df), "tl_sampled_s": round(t_tl, 3), "tl_extrapolated_s": round(t_tl_all, 3),
            "speedup": round(t_tl_all / t_ours, 2) if t_ours > 0 else None, "max_diff": diff, "tol": tol,
            "passed": bool(diff <= tol and math.isfinite(diff)), "peak_gib": round(peak, 3)}


def big_shape(name: str, device: str, layers, n_pairs: int, n_pos: int, per_layer: int, deadline: float, log):
    """Build one 7B shape on ``device`` in bf16 and run the big checks on it."""
    from codecircuits.shapes import get_shape, shape_model

    base = {"section": "big", "shape": name, "layers": layers or get_shape(name).n_layers}
    reset_peak(device)
    t0 = time.perf_counter()
    try:
        model = shape_model(name, layers=layers, device=device, dtype=torch.bfloat16)
    except Exception as e:  # out of memory, most likely: the build is the check that fails
        rows = [base | {"check": "build", "passed": False, "note": describe(e), "traceback": traceback.format_exc(6)}]
        log(rows[-1])
        return rows
    sync()
    build = {"check": "build", "seconds": round(time.perf_counter() - t0, 2), "peak_gib": round(peak_gib(device), 3),
             "weights_gib": round(get_shape(name).weight_bytes(layers) / 2**30, 3),
             "fp32_params": sum(p.dtype == torch.float32 for p in model.parameters())}
    build["passed"] = build["fp32_params"] == 0
    rows = [base | build]
    log(rows[-1])
    try:
        rows += big_steps(model, base, device, n_pairs, n_pos, per_layer, deadline, log)
    finally:
        del model
        free_memory()
    return rows


def big_steps(model, base: dict, device: str, n_pairs: int, n_pos: int, per_layer: int, deadline: float, log):
    """The forward, the two sweeps against TransformerLens and EAP-IG on one built shape."""
    from codecircuits.circuits import edge_scores

    rows = []
    clean, corr = big_tokens(n_pairs, n_pos)

    def forward():
        with torch.no_grad():
            logits = model(clean.to(device))
        return {"check": "forward", "passed": bool(torch.isfinite(logits).all()), "dtype": str(logits.dtype),
                "logits_shape": list(logits.shape)}

    def eapig():
        reset_peak(device)
        sync()
        t = time.perf_counter()
        res = edge_scores(model, clean, corr, big_metric, method="EAP-IG-inputs", steps=5)
        sync()
        return {"check": "edges.EAP-IG-inputs", "seconds": round(time.perf_counter() - t, 3),
                "scores_shape": list(res.scores.shape), "passed": bool(torch.isfinite(res.scores).all()),
                "peak_gib": round(peak_gib(device), 3)}

    steps = [("forward", forward)]
    for site, by in [("resid_pre", ("layer", "pos")), ("z", ("layer", "head"))]:
        steps.append((f"patching.{site}", lambda site=site, by=by: big_sweep(model, clean, corr, device, site, by,
                                                                             per_layer)))
    steps.append(("edges.EAP-IG-inputs", eapig))
    for label, fn in steps:
        if time.monotonic() > deadline:
            rows.append(base | {"check": label, "passed": True, "skipped": True, "note": "time limit reached"})
        else:
            rows.append(base | {"check": label} | run_step(fn))
        log(rows[-1])
    return rows


def run_step(fn) -> dict:
    try:
        return fn()
    except Exception as e:  # an out-of-memory or a bug: a failed check with its reason
        return {"passed": False, "note": describe(e), "traceback": traceback.format_exc(limit=6)}


def describe(e: BaseException) -> str:
    """``Type: first line of the message`` (300 characters at most)."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


# ------------------------------------------------------------------------------------------------------------


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="out/device-check")
    p.add_argument("--families", default=None, help="comma-separated (default: codecircuits.testing.FAMILIES)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of the second run (--device cpu)")
    p.add_argument("--big", action="store_true", help="run the 7B shapes on the CPU too")
    p.add_argument("--no-big", action="store_true", help="skip the 7B shapes")
    p.add_argument("--no-tiny", action="store_true", help="skip the tiny matrix")
    p.add_argument("--layers", type=int, default=None, help="layers of each 7B shape (default: all)")
    p.add_argument("--shapes", default="codellama-7b,qwen2.5-coder-7b")
    p.add_argument("--pairs", type=int, default=4, help="prompt pairs for the 7B shapes")
    p.add_argument("--tokens", type=int, default=32, help="tokens per prompt for the 7B shapes")
    p.add_argument("--per-layer", type=int, default=2, help="TransformerLens cells sampled per layer")
    p.add_argument("--time-limit", type=float, default=450.0, help="seconds; later steps are skipped")
    p.add_argument("--tiny-limit", type=float, default=200.0, help="seconds for the tiny matrix (of --time-limit)")
    return p.parse_args(argv)


def environment(device: str) -> dict:
    env = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
           "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if device.startswith("cuda") and torch.cuda.is_available():
        env |= {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}
    return env


def main(argv=None) -> int:
    from codecircuits.testing import FAMILIES

    args = parse(sys.argv[1:] if argv is None else argv)
    if hasattr(faulthandler, "register") and hasattr(__import__("signal"), "SIGUSR1"):
        faulthandler.register(__import__("signal").SIGUSR1)  # `kill -USR1 <pid>` prints where a slow run is
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {device}: CUDA is not available on this machine", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # the CPU reference is plain float32
    torch.backends.cudnn.allow_tf32 = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    deadline = t0 + args.time_limit

    def log(row):
        status = "skip" if row.get("skipped") else ("ok" if row.get("passed") else "FAIL")
        what = " ".join(str(row[k]) for k in ("family", "shape", "check") if k in row)
        extra = {k: row[k] for k in ("max_diff", "tol", "seconds", "ours_s", "tl_extrapolated_s", "peak_gib", "note")
                 if row.get(k) not in (None, "")}
        print(f"[{status:4}] {what} {extra}", flush=True)

    families = tuple(args.families.split(",")) if args.families else FAMILIES
    results = {"environment": environment(device), "tolerances": {
        "tiny": {"rtol": RTOL, "atol": ATOL, "index_tol": INDEX_TOL, "graphs_float64": {"rtol": 1e-6, "atol": 1e-9}},
        "big": {"rtol": BIG_RTOL, "atol": BIG_ATOL}}, "checks": []}
    if not args.no_tiny:
        tiny_deadline = min(deadline, t0 + args.tiny_limit)  # leave the 7B shapes their time
        results["checks"] += tiny_checks(device, families, tiny_deadline, log, args.threads)
    run_big = not args.no_big and (not device.startswith("cpu") or args.big)
    if run_big:
        for name in args.shapes.split(","):
            results["checks"] += big_shape(name, device, args.layers, args.pairs, args.tokens, args.per_layer,
                                           deadline, log)
    else:
        results["big_skipped"] = "the 7B shapes run on a GPU, or on the CPU with --big"
    failed = [c for c in results["checks"] if not c.get("passed")]
    results |= {"passed": not failed, "n_checks": len(results["checks"]), "n_failed": len(failed),
                "seconds": round(time.monotonic() - t0, 1)}
    path = out / "device_check.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    print(f"{len(results['checks'])} checks, {len(failed)} failed, {results['seconds']} s; wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
