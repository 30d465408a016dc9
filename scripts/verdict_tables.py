"""Print the claim -> verdict tables of the studies' results.json files as markdown (for README and findings).

Each study writes its claims (``codecircuits.intervals.Claim``) into ``results.json`` under ``"claims"``; this reads
them back, so the tables in the docs are the numbers of a real run, not retyped::

    .venv/bin/python scripts/verdict_tables.py reports/parens/results.json reports/subspace/results.json ...
    .venv/bin/python scripts/verdict_tables.py --reports reports   # every registered study's reports/<name>/

With ``--reports DIR`` the studies come from the registry (``codecircuits.studies.registry``): each study's
``DIR/<name>/results.json`` that exists, under the study's paper and findings page.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from codecircuits.intervals import Claim, claims_markdown


def claims_of(path: Path) -> list[Claim]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Claim.from_json(c) for c in data.get("claims", [])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="*", type=Path, help="results.json files")
    p.add_argument("--reports", type=Path, default=None, help="a directory of every registered study's reports")
    p.add_argument("--digits", type=int, default=2)
    args = p.parse_args(argv)
    titles = {path: path.parent.name for path in args.results}
    if args.reports is not None:
        from codecircuits.studies.registry import STUDIES

        for spec in STUDIES:
            path = args.reports / spec.name / "results.json"
            if path.exists():
                titles[path] = f"{spec.name}: {spec.paper} (findings: {spec.findings})"
    if not titles:
        p.error("give results.json files or --reports DIR")
    for path, title in titles.items():
        claims = claims_of(path)
        print(f"### {title} ({path})\n")
        print(claims_markdown(claims, digits=args.digits) if claims else "(no claims in this file)")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
