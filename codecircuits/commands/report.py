"""``codecircuits report``: an offline HTML report on one prompt (prediction, logit lens, attention views of
chosen heads, neuron activations over the code), and the JSON of its numbers beside it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "report"
HELP = "write an offline HTML report on one prompt: prediction, logit lens, attention views, neurons"
DESCRIPTION = (
    "Write a self-contained HTML report (opens offline, in any browser) on one prompt: the next-token prediction, "
    "where it emerges in depth (logit lens), the attention patterns of chosen heads (circuitsvis, from its bundled "
    "JavaScript) and the activations of chosen MLP neurons over the code. Prints where the report was written."
)
DEFAULT_PROMPT = "#print the string 123\nprint(str(str(123"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name or directory (default: smollm2-135m)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt (default: a nested-parenthesis prompt)")
    p.add_argument(
        "--heads",
        default=None,
        help="heads to view, e.g. L3H2,L5H0 (default: the 6 heads with the largest direct logit onto the predicted token)",
    )
    p.add_argument(
        "--neurons",
        default=None,
        help="MLP neurons to view, e.g. L3N17,L5N100 (default: the 8 most active at the last position)",
    )
    p.add_argument(
        "--out", default="reports/prompt/report.html", help="where to write the report (default: %(default)s)"
    )
    p.add_argument("--device", default="cpu")


def run(args) -> int:
    import torch

    from ..models import DEFAULT_MODEL, load_model
    from ..report.prompt import prompt_report

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    name = args.model or DEFAULT_MODEL
    model = load_model(name, device=args.device)
    prompt = args.prompt.replace("\\n", "\n").replace("\\t", "\t")
    report, summary = prompt_report(model, prompt, heads=args.heads, neurons=args.neurons, model_name=Path(name).name)
    path = report.save(args.out)
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(summary.to_dict(), indent=1), encoding="utf-8")
    print(f"report written to {path}")
    print(f"numbers written to {json_path}")
    return 0
