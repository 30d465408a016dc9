"""Study: arithmetic heads and Comparative Neuron Analysis (Yu & Ananiadou) on arithmetic written as code and on
the closing-parenthesis task.

For each task: accuracy; every head ablated alone (accuracy and log-probability of the label); CNA against the
head whose ablation hurts most, on prompts the model gets right; the mask-versus-keep table (METHODS §3.4).
For arithmetic also the attribution-method comparison of METHODS Table 2 (zero the top-10 FFN neurons chosen by
each score; MRR and probability of the answer; random control).

>>> study = run(load_model("smollm2-135m"), CNAConfig(n_sweep=8))
>>> html, js = study.save("reports/cna")
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .. import cna as cna_mod
from .. import neurons
from ..core.sites import head_label
from ..tasks import arithmetic
from .common import Study, configure, json_safe, setting

ARITH_TEMPLATES = ("assert", "comment")


@dataclass(frozen=True)
class CNAConfig:
    """Settings of the study; the command line's options are generated from these fields."""

    templates: tuple[str, ...] = setting(ARITH_TEMPLATES, "arithmetic templates, comma-separated (tasks.arithmetic)")
    n_sweep: int = setting(16, "prompts per task for the head sweep (every head each)")
    n_cna: int = setting(4, "correct prompts per task for CNA and mask/keep")
    n_top10: int = setting(8, "prompts for the top-10 attribution comparison")
    top10_layers: int | None = setting(
        10, "score the last N layers for the comparison (0: all)", convert="zero_is_none"
    )
    paren_n_values: tuple[int, ...] = setting(
        (0, 1, 2), "paren counts of the parenthesis task", switches={"--no-parens": ()}
    )
    paren_numbers: int = setting(40, "numbers per paren count in the parenthesis dataset")
    ns: tuple[int, ...] = setting((10, 20, 30, 50, 99), "numbers of top CNA neurons in the mask/keep table")
    seed: int = setting(0, "seed of prompt selection and the random control")


@dataclass(frozen=True)
class TaskFindings:
    """One task's results: ``sweep`` over all heads, ``cna`` against ``head``, the ``mask_keep`` table."""

    name: str
    accuracy: dict[str, float]
    sweep: cna_mod.HeadSweep
    head: tuple[int, int]
    cna: cna_mod.CNAResult
    mask_keep: cna_mod.MaskKeepTable
    n_sweep: int
    cna_prompts: tuple[str, ...]

    def summary(self) -> dict:
        top = self.sweep.top(5)
        return {
            "accuracy": self.accuracy,
            "n_sweep_prompts": self.n_sweep,
            "base_accuracy_sweep": self.sweep.base_accuracy,
            "top_head": head_label(*self.head),
            "top_head_accuracy_drop": float(self.sweep.accuracy_drop[self.head]),
            "top_heads": top[["name", "accuracy", "accuracy_drop", "logprob_drop"]].to_dict("records"),
            "fraction_heads_within_2pct": self.sweep.fraction_harmless(0.02),
            "n_heads_drop_ge_10pct": int((self.sweep.accuracy_drop >= 0.10).sum()),
            "n_cna_prompts": len(self.cna_prompts),
            "cna_top_neurons": self.cna.top(10)[
                ["name", "cna", "imp_original", "imp_ablated", "coef_original", "coef_ablated"]
            ].to_dict("records"),
            "cna_prob_original": float(self.cna.prob_original.mean()),
            "cna_prob_ablated": float(self.cna.prob_ablated.mean()),
            "mask_keep": self.mask_keep.table.to_dict("records"),
            "mask_keep_n_prompts": self.mask_keep.n_prompts,
        }


@dataclass(frozen=True)
class CNAStudy(Study):
    """Everything a run measured: per task the head sweep, CNA and mask/keep; the top-10 comparison."""

    model: str
    arithmetic: TaskFindings
    parens: TaskFindings | None
    top10: neurons.TopNeuronEval
    settings: dict = field(default_factory=dict)
    config: CNAConfig | None = None

    def report(self):
        """The study as a :class:`codecircuits.report.Report`."""
        return report(self)

    def results(self) -> dict:
        return {**self.to_json(), "metrics": self.metrics()}

    def to_json(self) -> dict:
        return json_safe(
            {
                "model": self.model,
                "settings": self.settings,
                "arithmetic": self.arithmetic.summary(),
                "parens": None if self.parens is None else self.parens.summary(),
                "top10_ablation": self.top10.table.to_dict("records"),
                "top10_n_prompts": self.top10.n_prompts,
            }
        )

    def metrics(self) -> dict[str, float]:
        """The key numbers (flat), as written to the report's metric cards and the JSON."""
        a = self.arithmetic
        out = {f"arith_accuracy_{k}": v for k, v in a.accuracy.items()}
        out["arith_top_head_accuracy_drop"] = float(a.sweep.accuracy_drop[a.head])
        out["arith_fraction_heads_within_2pct"] = a.sweep.fraction_harmless(0.02)
        t = a.mask_keep.table.set_index("N")
        for n in t.index:
            out[f"arith_mask_{n}"] = float(t.loc[n, "mask_acc_decrease_pct"])
            out[f"arith_keep_{n}"] = float(t.loc[n, "keep_acc_decrease_pct"])
        ev = self.top10.table.set_index("method")
        for m in ev.index:
            out[f"top10_mrr_{m}"] = float(ev.loc[m, "mrr"])
        if self.parens is not None:
            p = self.parens
            out.update({f"parens_accuracy_{k}": v for k, v in p.accuracy.items()})
            out["parens_top_head_accuracy_drop"] = float(p.sweep.accuracy_drop[p.head])
            out["parens_fraction_heads_within_2pct"] = p.sweep.fraction_harmless(0.02)
            t = p.mask_keep.table.set_index("N")
            for n in t.index:
                out[f"parens_mask_{n}"] = float(t.loc[n, "mask_acc_decrease_pct"])
                out[f"parens_keep_{n}"] = float(t.loc[n, "keep_acc_decrease_pct"])
        return json_safe(out)


def _task(model, name, texts, labels, accuracy, *, n_cna, ns, progress, workers=None) -> TaskFindings:
    sweep = cna_mod.head_sweep(model, texts, labels, progress=progress, workers=workers)
    head = sweep.top_head()
    right = [i for i in range(len(texts)) if bool(sweep.base_correct[i])]
    pick = right[:: max(1, len(right) // n_cna)][:n_cna] if right else list(range(min(n_cna, len(texts))))
    cna_texts = [texts[i] for i in pick]
    cna_labels = labels[pick]
    res = cna_mod.compare(model, cna_texts, head, target=cna_labels, progress=progress, workers=workers)
    # accuracy decreases are measured on prompts the model gets right; a model that gets none right (a random
    # test model) is measured on all of them instead (its decreases are then n/a)
    mk = cna_mod.mask_keep(model, cna_texts, res, labels=cna_labels, ns=ns, only_correct=bool(right), progress=progress)
    return TaskFindings(name, accuracy, sweep, head, res, mk, len(texts), tuple(cna_texts))


def run(model, config: CNAConfig | None = None, *, progress: bool = True, workers=None, **overrides) -> CNAStudy:
    """Run the study with ``config`` (default :class:`CNAConfig`; keyword ``overrides`` change single settings).

    ``n_sweep`` prompts per task for the head sweep (arithmetic: the first template; parens: balanced over
    ``paren_n_values``; accuracy uses every prompt), ``n_cna`` (correct) prompts for CNA and the mask/keep table,
    ``n_top10`` prompts for the top-10 comparison (over the last ``top10_layers`` layers, where value neurons
    concentrate; None = all layers). ``paren_n_values=()`` skips the parenthesis task.

    ``workers`` (a number, a Ray address or a :class:`~codecircuits.distributed.Workers`) shards the head sweeps,
    CNA and the FFN neuron attribution by prompt over workers (:mod:`codecircuits.distributed.neurons`); the
    results are one process's."""
    if workers is not None:
        from ..distributed.workers import Workers

        if not isinstance(workers, Workers):  # one cluster for every job of the study
            from ..distributed import using

            with using(workers) as w:
                return run(model, config, progress=progress, workers=w, **overrides)
    cfg = configure(CNAConfig, config, overrides)
    templates, n_sweep, n_cna, n_top10 = tuple(cfg.templates), cfg.n_sweep, cfg.n_cna, cfg.n_top10
    top10_layers, paren_n_values, paren_numbers, ns, seed = (
        cfg.top10_layers,
        tuple(cfg.paren_n_values),
        cfg.paren_numbers,
        tuple(cfg.ns),
        cfg.seed,
    )
    t0 = time.time()
    ds = arithmetic.dataset(model, templates=templates)
    acc = arithmetic.accuracy(model, ds, by="template")
    sub = ds.select(template=templates[0], limit=n_sweep, seed=seed)
    arith = _task(
        model, "arithmetic", sub.texts, sub.label_ids, acc, n_cna=n_cna, ns=ns, progress=progress, workers=workers
    )

    ev_ds = ds.select(template=templates[0], limit=n_top10, seed=seed + 1)
    n_layers = model.cfg.n_layers
    layers = None if top10_layers is None else list(range(max(0, n_layers - top10_layers), n_layers))
    attr = neurons.ffn_neurons(
        model, ev_ds.texts, target=ev_ds.label_ids, scores="all", layers=layers, progress=progress, workers=workers
    )
    top10 = neurons.evaluate_top_neurons(model, ev_ds.texts, attr, k=10, seed=seed, progress=progress)

    parens_f = None
    if paren_n_values:
        from ..tasks import parens

        pds = parens.dataset(model, n_values=paren_n_values, n_numbers=paren_numbers, split=None)
        pacc = {str(k): v for k, v in parens.accuracy(model, pds).items()}
        psub = pds.select(limit=max(1, n_sweep // len(paren_n_values)))
        ptexts = [p.text for p in psub]
        plabels = torch.tensor([p.label_id for p in psub])
        parens_f = _task(
            model, "parens", ptexts, plabels, pacc, n_cna=n_cna, ns=ns, progress=progress, workers=workers
        )

    settings = {
        "templates": list(templates),
        "arith_templates_text": [arithmetic.TEMPLATES.get(t, t) for t in templates],
        "n_sweep": n_sweep,
        "n_cna": n_cna,
        "n_top10": n_top10,
        "top10_layers": layers if layers is None else [layers[0], layers[-1]],
        "paren_n_values": list(paren_n_values),
        "paren_numbers": paren_numbers,
        "seed": seed,
        "seconds": round(time.time() - t0, 1),
    }
    name = str(getattr(model.cfg, "model_name", "model"))
    return CNAStudy(name, arith, parens_f, top10, settings, cfg)


def _task_sections(r, f: TaskFindings, paper: str) -> None:
    n_layers, n_heads = f.sweep.accuracy.shape
    r.section(
        f"{f.name}: single-head ablation",
        text=f"Each head zeroed alone (attn.hook_z at every position) over {f.n_sweep} prompts. {paper}",
    )
    r.heatmap(
        f.sweep.accuracy_drop.numpy(),
        x_labels=list(range(n_heads)),
        y_labels=list(range(n_layers)),
        title="accuracy drop when the head is ablated",
        x_title="head",
        y_title="layer",
        center=0.0,
    )
    r.table(f.sweep.top(10), caption="heads whose ablation hurts most")
    r.section(
        f"{f.name}: comparative neuron analysis against head {head_label(*f.head)}",
        text="CNA(l, k) = log-prob increase of FFN neuron k of layer l in the model minus the same in the model "
        "with the head ablated (both with the original frozen final scale), averaged over "
        f"{len(f.cna_prompts)} prompts the model gets right.",
    )
    r.table(f.cna.top(15), caption="top neurons by mean CNA")
    lt = f.cna.layer_totals()
    r.line_chart(
        lt["layer"].tolist(),
        {"positive CNA": lt["positive_cna"].tolist()},
        title="where the head's effect lands",
        x_title="layer",
        y_title="summed positive CNA",
    )
    r.table(
        f.mask_keep.table,
        caption=f"mask (zero the top-N CNA neurons) vs keep (zero every other neuron of layers >= {f.head[0]}): "
        f"accuracy decrease %, on {f.mask_keep.n_prompts} correct prompts",
    )


def report(study: CNAStudy):
    """The study as a :class:`codecircuits.report.Report`."""
    from ..report import Report

    r = Report(
        title=f"Arithmetic heads and comparative neuron analysis on {study.model}",
        subtitle="Yu & Ananiadou (EMNLP 2024), reproduced on arithmetic written as code and on closing parentheses",
    )
    r.section("Key numbers")
    r.metrics(study.metrics())
    for t in study.settings["arith_templates_text"]:
        r.code(t.format(a=3, b=5, op="+") + "8", title="arithmetic template (answer shown)")
    _task_sections(
        r,
        study.arithmetic,
        "Paper (Llama-7B): a few heads carry arithmetic; L17H22 drops accuracy 74.8 -> 53.4 and 976 of 1,024 heads "
        "change it by at most 2%.",
    )
    r.section(
        "Which score finds the neurons that matter (METHODS Table 2)",
        text="Per prompt, zero the top-10 FFN neurons chosen by each score and measure the answer's MRR and "
        "probability (lower = the score found more important neurons). Paper, Llama-7B: original 0.551 / 21.5%, "
        "log prob increase 0.312 / 9.2%, coefficient 0.529 / 22.9%, norm 0.549 / 21.3%.",
    )
    r.table(study.top10.table, caption=f"top-10 ablation on {study.top10.n_prompts} prompts")
    if study.parens is not None:
        _task_sections(r, study.parens, "Closing-parenthesis prompts with 1..n open parens.")
    r.data(study.to_json(), name="results")
    return r


def write(study: CNAStudy, out_dir) -> tuple[Path, Path]:
    """``study.save(out_dir)``: ``report.html`` and ``results.json`` (the same numbers) under ``out_dir``."""
    return study.save(out_dir)


def tables(study: CNAStudy) -> dict[str, pd.DataFrame]:
    """The study's tables as DataFrames (for notebooks and the findings page)."""
    out = {
        "arith_top_heads": study.arithmetic.sweep.top(10),
        "arith_cna": study.arithmetic.cna.top(10),
        "arith_mask_keep": study.arithmetic.mask_keep.table,
        "top10": study.top10.table,
    }
    if study.parens is not None:
        out.update(
            {
                "parens_top_heads": study.parens.sweep.top(10),
                "parens_cna": study.parens.cna.top(10),
                "parens_mask_keep": study.parens.mask_keep.table,
            }
        )
    return out
