"""Run every study on a tiny random model at a small configuration and write its results.json, or compare two
such directories number by number: the check that a refactor of the studies leaves their numbers unchanged.

    python scripts/study_equivalence.py run OUT [--studies parens,cna] [--family llama]
    PYTHONPATH=/path/to/old/checkout python scripts/study_equivalence.py run OUT_OLD   # the code before
    python scripts/study_equivalence.py compare OUT_OLD OUT_NEW

The configurations are the ones the tests use for each study's tiny run. Timings (keys ending in ``_s``,
``timings``, rates per second) differ between runs and are skipped; every other number must be equal (bit for
bit: JSON keeps what the study rounded); keys only in the new results are listed but allowed. The repair study's cost claim (seconds per case) is a timing too.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

CODE = "x = f(g(h(1)))\ny = f(g(2))\nz = print(3)\nw = a(b(c(d(4))))\n" * 3
TEXTS = [
    "import os\n\n\ndef read(path):\n    with open(path) as f:\n        return f.read()\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n    def norm(self):\n"
    "        return (self.x ** 2 + self.y ** 2) ** 0.5\n",
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "try:\n    import json\nexcept ImportError:\n    json = None\n\nprint(json.dumps({'a': [1, 2, 3]}))\n",
]


def _parens(model, tmp):
    from codecircuits.corpus import directory
    from codecircuits.studies import parens

    code = Path(tempfile.gettempdir()) / "cc-study-equivalence-code"  # one path: the study records it
    code.mkdir(exist_ok=True)
    (code / "a.py").write_text(CODE)
    return parens.run(model, parens.ParensConfig.tiny(), corpus=directory(code), progress=False)


def _circuit(model, tmp):
    from codecircuits.studies import circuit

    return circuit.run(model, circuit.CircuitConfig.tiny(), progress=False)


def _cna(model, tmp):
    from codecircuits.studies import cna

    return cna.run(model, n_sweep=4, n_cna=2, n_top10=2, top10_layers=None, paren_n_values=(0, 1), paren_numbers=2,
                   ns=(2, 3), progress=False)


def _subspace(model, tmp):
    from codecircuits.studies import subspace

    cfg = subspace.SubspaceConfig(train_pairs=6, test_pairs=4, template_pairs=2, sweep_pairs=4, epochs=1, seeds=(0,),
                                  only_correct=False)
    return subspace.run(model, cfg, progress=False)


def _memories(model, tmp):
    from codecircuits.studies import memories

    return memories.run(model, corpus=TEXTS, eval_corpus=TEXTS[::-1], max_tokens=150, window=24, k=3, tau=0.3,
                        min_lift=1.0, edit=["indentation", "loops"], edit_tokens=60, agreement_docs=2,
                        agreement_context=16, edit_controls=2, kv_keys=16, progress=False)


def _signatures(model, tmp):
    from codecircuits.studies import signatures

    return signatures.run(model, shifts=("tabs", "rename", "quotes"), steps=2, batch_size=2, seq_len=32,
                          train_chunks=6, eval_docs=4, eval_tokens=32, alphas=(0.5, 1.0), seeds=(0, 1),
                          backbone_steps=1, n_resamples=50, progress=False)


def _repair(model, tmp):
    from codecircuits.studies import repair

    return repair.run(model, n_cases=2, n_select=1, sources=("humaneval",), max_errors=64, context_tokens=24,
                      n_candidates=2, max_edits=1, sgd_lrs=(1e-2,), sgd_steps=(1, 2), n_gen=2, heldout_tokens=64,
                      n_resamples=50, progress=False)


def _languages(model, tmp):
    from codecircuits.studies import languages

    dirs, root = [], Path(tempfile.gettempdir()) / "cc-study-equivalence-languages"  # one path: the study records it
    for lang, text in (("java", "class A {\n    int f(int x) { return x + 1; }\n}\n"),
                       ("go", "package main\n\nfunc f(x int) int {\n\treturn x + 1\n}\n")):
        (root / lang).mkdir(parents=True, exist_ok=True)
        (root / lang / f"a.{lang}").write_text(text * 8)
        dirs.append(f"{lang}:{root / lang}")
    return languages.run(model, corpora=("stdlib:test", *dirs), max_tokens=200, window=24, k=3, n_draws=20,
                         out_dir=tmp, progress=False)


STUDIES = {"parens": _parens, "circuit": _circuit, "cna": _cna, "subspace": _subspace, "memories": _memories,
           "signatures": _signatures, "repair": _repair, "languages": _languages}


def run(out: Path, studies: list[str], family: str) -> None:
    from codecircuits import load_model
    from codecircuits.testing import save_tiny_model

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = load_model(save_tiny_model(family, tmp / "model"), device="cpu")
        for name in studies:
            torch.manual_seed(0)
            study = STUDIES[name](model, tmp)
            target = out / name
            target.mkdir(parents=True, exist_ok=True)
            payload = study.results() if hasattr(study, "results") else study.to_json()
            (target / "results.json").write_text(json.dumps(payload, indent=1, default=str))
            print(f"{name}: {target / 'results.json'}")


def _timing(key: str) -> bool:
    return key in ("timings", "wall_s") or key.endswith("_s") or "per_s" in key or "seconds" in key


def diff(a, b, path: str = "") -> list[str]:
    """Every place where two JSON values differ (timings skipped)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        timed_claim = "time" in str(a.get("claim", ""))  # a claim about speed: its numbers are timings
        for k in sorted(set(a) | set(b)):
            if _timing(k) or (timed_claim and k in ("evidence", "control")):
                continue
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'new' if k in b else 'old'}")
                continue
            out += diff(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def compare(old: Path, new: Path) -> int:
    bad = 0
    for js in sorted(old.glob("*/results.json")):
        other = new / js.parent.name / "results.json"
        if not other.exists():
            print(f"{js.parent.name}: no results.json in {new}")
            bad += 1
            continue
        found = diff(json.loads(js.read_text()), json.loads(other.read_text()))
        added = [x for x in found if x.endswith("only in new")]  # new keys: allowed, listed
        d = [x for x in found if not x.endswith("only in new")]
        print(f"{js.parent.name}: {'equal' if not d else f'{len(d)} differences'}"
              + (f" ({len(added)} keys only in new)" if added else ""))
        for line in (d + added)[:40]:
            print("   ", line)
        bad += bool(d)
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--studies", default=",".join(STUDIES))
    r.add_argument("--family", default="llama")
    c = sub.add_parser("compare")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "run":
        run(args.out, args.studies.split(","), args.family)
        return 0
    return compare(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
