"""Print the claim -> verdict tables of the studies' results.json files as markdown (for README and findings).

Each study writes its claims (``codecircuits.intervals.Claim``) into ``results.json`` under ``"claims"``; this reads
them back, so the tables in the docs are the numbers of a real run, not retyped::

    .venv/bin/python scripts/verdict_tables.py reports/parens/results.json reports/subspace/results.json ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from codecircuits.intervals import Claim, Interval, claims_markdown


def claims_of(path: Path) -> list[Claim]:
    data = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for c in data.get("claims", []):
        ev = Interval.from_json(c["evidence"]) if c.get("evidence") else None
        ctl = Interval.from_json(c["control"]) if c.get("control") else None
        out.append(Claim(c["claim"], c["verdict"], ev, ctl, c.get("detail", ""), c.get("command", "")))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="results.json files")
    p.add_argument("--digits", type=int, default=2)
    args = p.parse_args(argv)
    for path in args.results:
        claims = claims_of(path)
        print(f"### {path.parent.name} ({path})\n")
        print(claims_markdown(claims, digits=args.digits) if claims else "(no claims in this file)")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
