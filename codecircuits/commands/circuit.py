"""``codecircuits circuit``: the closing-paren circuit by edge attribution, with MIB's faithfulness (CPR, CMD)."""

from __future__ import annotations

import argparse

from ._options import config_from, config_options, worker_options, workers_of

NAME = "circuit"
HELP = "find the closing-paren circuit by edge attribution, measure its faithfulness, write report.html + results.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..studies.circuit import CircuitConfig

    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--out", default="reports/circuit", help="directory for report.html and results.json")
    config_options(p, CircuitConfig)  # one option per setting; CircuitConfig holds the defaults
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    worker_options(p)


def run(args) -> int:
    import torch

    from ..models import DEFAULT_MODEL, load_model
    from ..studies import circuit

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model or DEFAULT_MODEL, device="cpu")
    cfg = config_from(args, circuit.CircuitConfig)
    with workers_of(args) as workers:
        study = circuit.run(model, cfg, progress=not args.quiet, workers=workers)
    html, js = study.save(args.out)
    m = study.metrics()
    print(f"CPR {m['cpr']:.3f}  (random circuits: mean {m['random_cpr_mean']:.3f}, largest {m['random_cpr_max']:.3f})")
    print(f"CMD {m['cmd']:.3f}  (random circuits: mean {m['random_cmd_mean']:.3f}, smallest {m['random_cmd_min']:.3f})")
    for p, d in study.drawn.items():
        lo, hi = d["interval"]
        ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None else ""
        shared = " ".join(d["shared_promoters"] + [h for h in d["shared_counting"] if h not in d["shared_promoters"]])
        print(
            f"{p:g}% of edges: {d['n_edges']} edges, faithfulness {d['faithfulness']:.3f}{ci}, shared heads: {shared or '-'}"
        )
    print(f"report  {html}\nresults {js}")
    return 0
