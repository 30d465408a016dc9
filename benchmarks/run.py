"""Run the benchmarks: every ``benchmarks/bench_*.py`` module's ``main(quick=...)``, in name order.

    python -m benchmarks.run                  # all benchmarks, full size (``make bench``)
    python -m benchmarks.run --quick          # tiny models, seconds each (a smoke test that they still run)
    python -m benchmarks.run --only patching  # just bench_patching (repeatable; 'bench_patching' works too)

Each benchmark prints its own numbers and returns them as a dict; ``--json PATH`` writes them all to one file.
A benchmark that fails is reported and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Names of the benchmark modules (``bench_patching`` ...), sorted."""
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def _select(names: list[str], only: list[str] | None) -> list[str]:
    if not only:
        return names
    chosen = []
    for want in only:
        stem = want if want.startswith("bench_") else f"bench_{want}"
        if stem not in names:
            raise SystemExit(f"No benchmark named {want!r}: choose from {', '.join(n[6:] for n in names)}.")
        chosen.append(stem)
    return chosen


def run(only: list[str] | None = None, quick: bool = False) -> tuple[dict, list[str]]:
    """Run the selected benchmarks; return ``({name: result}, [failed names])``."""
    results, failed = {}, []
    for name in _select(discover(), only):
        print(f"== {name}{' (quick)' if quick else ''}", flush=True)
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(f"benchmarks.{name}")
            main = mod.main
            kwargs = {"quick": quick} if "quick" in inspect.signature(main).parameters else {}
            results[name] = main(**kwargs)
        except Exception:  # report and go on with the others
            traceback.print_exc()
            failed.append(name)
        print(f"   ({name} took {time.perf_counter() - t0:.1f} s)\n", flush=True)
    return results, failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    ap.add_argument("--quick", action="store_true", help="tiny models: check that every benchmark still runs")
    ap.add_argument("--json", metavar="PATH", help="also write every benchmark's numbers to this JSON file")
    args = ap.parse_args(argv)
    results, failed = run(args.only, args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
