"""Study: arithmetic heads, neuron attribution and Comparative Neuron Analysis (Yu & Ananiadou, EMNLP 2024;
METHODS §3) on the paper's arithmetic task (four operations, two-digit operands, the paper's templates and
arithmetic written as code), and optionally on the closing-parenthesis task.

The protocol, with every selection made on one split and every effect scored on another:

1. Accuracy per operation on ``n_acc`` operand pairs per template and operation (bootstrap 95% intervals).
2. Selection split (``n_sweep`` prompts of one template length, balanced over operations): every head of every
   layer ablated alone.
   The ``n_top_heads`` heads whose ablation hurts most overall, and the most harmful head of each operation, are
   re-scored on a held-out split (``n_heldout`` prompts per operation) beside as many random heads (the control):
   accuracy drop per head and operation with intervals; a head is *operation-specific* when its drop interval on
   one operation lies above zero and on no other.
3. CNA against the top head on ``n_cna`` correctly answered prompts (in the last ``cna_layers`` layers); the
   neurons ranked by their mean CNA are then masked / kept on ``n_mask`` other held-out prompts per operation
   (the correct ones counted), beside N random neurons of the same layers.
4. METHODS Table 2 over **all layers**: per prompt, zero the top-10 FFN neurons by each attribution score (and 10
   random ones) and measure MRR and the answer's probability; query neurons of the top value neurons (zero the
   top ``k_query``, beside random); attention neurons of the last ``attn_layers`` layers (zero the top
   ``k_attn``, beside random).
5. A claims table: each of the paper's claims with the number it rests on, its interval, its control and a
   verdict.

``paper_scale=True`` (``codecircuits cna --paper-scale``) raises every size left at its default to the paper's
order (:data:`PAPER_SCALE`); it runs for hours on a CPU.

The run's steps (:func:`run`): :func:`measure_accuracy`, :func:`sweep_heads`, :func:`cna_and_mask_keep`,
:func:`top_neurons` and :func:`parens_task`; the statistics of their tables are methods of the results they
summarise (:meth:`codecircuits.cna.MaskKeepTable.intervals`, :meth:`codecircuits.neurons.TopNeuronEval.drop`).

>>> study = run(load_model("smollm2-135m"), CNAConfig(n_sweep=8))
>>> html, js = study.save("reports/cna")
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import pandas as pd
import torch

from .. import cna as cna_mod
from .. import distributed, heads, intervals, neurons
from ..core.sites import head_label
from ..errors import InputError
from ..intervals import Claim, Interval, claims_markdown
from ..tasks import arithmetic
from ..tasks.arithmetic import ArithmeticDataset
from .common import Study, claim_specs, configure, json_safe, result, setting

ARITH_TEMPLATES = (*arithmetic.PAPER_TEMPLATES, "assert")
COMMAND = "codecircuits cna --model smollm2-135m"
#: operation -> the name its metric keys use
OP_NAMES = {"+": "add", "-": "sub", "*": "mul", "/": "div", "//": "floordiv"}


@dataclass(frozen=True)
class CNAConfig:
    """Settings of the study; the command line's options are generated from these fields."""

    templates: tuple[str, ...] = setting(
        ARITH_TEMPLATES, "arithmetic templates, comma-separated (tasks.arithmetic; the paper's four and 'assert')"
    )
    ops: tuple[str, ...] = setting(arithmetic.PAPER_OPS, "operations, comma-separated (+,-,*,/)")
    digits: int = setting(2, "digits of each operand")
    n_acc: int = setting(24, "operand pairs per template and operation for the accuracy")
    n_sweep: int = setting(12, "selection prompts (balanced over operations) for the every-head sweep")
    n_top_heads: int = setting(2, "heads with the largest selection drop re-scored on the held-out split")
    n_heldout: int = setting(25, "held-out prompts per operation re-scoring the top heads and random heads")
    n_cna: int = setting(8, "correct selection prompts for CNA against the top head")
    cna_layers: int | None = setting(
        8, "score CNA in the last N layers only (0: every layer from the head's on)", convert="zero_is_none"
    )
    n_mask: int = setting(25, "held-out prompts per operation for mask/keep (correct ones are counted)")
    ns: tuple[int, ...] = setting((10, 50), "numbers of top CNA neurons in the mask/keep table")
    n_top10: int = setting(4, "prompts for the top-10 attribution comparison (METHODS Table 2)")
    top10_layers: int | None = setting(
        None, "score the last N layers for the comparison (0: all layers)", convert="zero_is_none"
    )
    k_query: int = setting(100, "query neurons zeroed per prompt (of the top-100 value neurons)")
    n_attn: int = setting(2, "prompts for the attention-neuron scores (a subset of the top-10 prompts)")
    attn_layers: int = setting(4, "last layers whose attention neurons are scored")
    k_attn: int = setting(20, "attention neurons zeroed per prompt")
    paren_n_values: tuple[int, ...] = setting(
        (), "paren counts of the parenthesis task (empty: skip it)", convert="int_list", switches={"--no-parens": ()}
    )
    paren_numbers: int = setting(40, "numbers per paren count in the parenthesis dataset")
    paper_scale: bool = setting(False, "raise every size left at its default to the paper's order (hours on a CPU)")
    seed: int = setting(0, "seed of prompt selection and the random controls")


#: the sizes ``paper_scale`` sets (where the config keeps its default): >= 200 sweep prompts, >= 50 per operation
#: for mask/keep, the paper's five N, 100 pairs per template and operation for accuracy
PAPER_SCALE = {
    "n_acc": 100,
    "n_sweep": 200,
    "n_top_heads": 5,
    "n_heldout": 100,
    "n_cna": 32,
    "cna_layers": None,
    "n_mask": 60,
    "ns": (10, 20, 30, 50, 99),
    "n_top10": 64,
    "k_query": 1000,
    "n_attn": 16,
    "attn_layers": 8,
    "k_attn": 200,
}


def _scaled(cfg: CNAConfig) -> CNAConfig:
    if not cfg.paper_scale:
        return cfg
    defaults = CNAConfig()
    return dataclasses.replace(cfg, **{k: v for k, v in PAPER_SCALE.items() if getattr(cfg, k) == getattr(defaults, k)})


# ----------------------------------------------------------------------------------------------------------------
# result dataclasses


@dataclass(frozen=True)
class TaskFindings:
    """One task's results: ``sweep`` over all heads (the selection split), ``cna`` against ``head``, the
    ``mask_keep`` table (for arithmetic on held-out prompts with the neurons ranked on the CNA prompts)."""

    name: str
    accuracy: dict[str, float]
    sweep: cna_mod.HeadSweep
    head: tuple[int, int]
    cna: cna_mod.CNAResult
    mask_keep: cna_mod.MaskKeepTable
    n_sweep: int
    cna_prompts: tuple[str, ...]

    def to_json(self) -> dict:
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
            "mask_keep_intervals": self.mask_keep.intervals(),
        }

    summary = to_json


def _evals(ev, **extra):
    return None if ev is None else {"table": ev.table.to_dict("records"), "intervals": ev.intervals(), **extra}


@dataclass(frozen=True)
class CNAStudy(Study):
    """Everything a run measured: accuracy, the head sweep and its held-out re-scoring, CNA and mask/keep, the
    top-10 comparison, query and attention neurons, and the claims table."""

    model: str
    arithmetic: TaskFindings
    parens: TaskFindings | None
    top10: neurons.TopNeuronEval = result(key="top10_ablation", json=lambda ev: ev.table.to_dict("records"))
    settings: dict = field(default_factory=dict)
    config: CNAConfig | None = result(None, json=None)  # its settings are in ``settings``
    accuracy_by_op: dict = field(default_factory=dict)  # op -> Interval
    heldout: cna_mod.HeldOutHeads | None = result(None, key="heldout_heads")
    query: neurons.TopNeuronEval | None = result(None, json=None)
    query_layers: dict = result(default_factory=dict, json=None)
    attn: neurons.TopNeuronEval | None = result(None, key="attention_neurons", json=lambda ev: _evals(ev))
    claims: tuple[Claim, ...] = ()

    def report(self, model=None):
        """The study as a :class:`codecircuits.report.Report`."""
        return report(self)

    def json_extra(self) -> dict:
        return {"top10_n_prompts": self.top10.n_prompts, "top10_intervals": self.top10.intervals(),
                "query_neurons": _evals(self.query, layers=self.query_layers)}

    def metrics(self) -> dict[str, float]:
        """The key numbers (flat), as written to the report's metric cards and the JSON."""
        a = self.arithmetic
        out = {f"arith_accuracy_{k}": v for k, v in a.accuracy.items()}
        for op, iv in self.accuracy_by_op.items():
            out[f"accuracy_op_{OP_NAMES.get(op, op)}"] = iv.estimate
        out["arith_top_head_accuracy_drop"] = float(a.sweep.accuracy_drop[a.head])
        out["arith_fraction_heads_within_2pct"] = a.sweep.fraction_harmless(0.02)
        if self.heldout is not None:
            d = self.heldout.drop(a.head)
            out["heldout_top_head_drop"] = d.estimate
            out["heldout_top_head_drop_low"] = d.low
            out["heldout_top_head_drop_high"] = d.high
            out["heldout_random_heads_drop"] = self.heldout.random_drop().estimate
            out["n_specific_heads"] = len(self.heldout.specific())
        t = a.mask_keep.table.set_index("N")
        for n in t.index:
            out[f"arith_mask_{n}"] = float(t.loc[n, "mask_acc_decrease_pct"])
            out[f"arith_keep_{n}"] = float(t.loc[n, "keep_acc_decrease_pct"])
            out[f"arith_random_mask_{n}"] = float(t.loc[n, "random_mask_acc_decrease_pct"])
        ev = self.top10.table.set_index("method")
        for m in ev.index:
            out[f"top10_mrr_{m}"] = float(ev.loc[m, "mrr"])
        if self.query is not None:
            out["query_prob_drop_pct"] = float(self.query.table.set_index("method").loc["query_score", "prob_drop_pct"])
        if self.attn is not None:
            q = self.attn.table.set_index("method")
            out["attn_neuron_prob_drop_pct"] = float(q.loc["logprob_increase", "prob_drop_pct"])
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

    def claim(self, start: str) -> Claim:
        """The claim whose text starts with ``start``."""
        for c in self.claims:
            if c.claim.startswith(start):
                return c
        raise InputError(f"No claim starts with {start!r}; claims: {[c.claim for c in self.claims]}")

    def summary_text(self) -> str:
        """What ``codecircuits cna`` prints: accuracy per operation and template, the top heads, the mask/keep
        table and the claims."""
        m, a = self.metrics(), self.arithmetic
        lines = [
            f"accuracy per operation: {', '.join(f'{k} {v.format(3)}' for k, v in self.accuracy_by_op.items())}",
            f"accuracy per template: {', '.join(f'{k} {v:.2f}' for k, v in a.accuracy.items())}",
            f"top arithmetic head {head_label(*a.head)}: selection drop {m['arith_top_head_accuracy_drop']:.3f}",
            a.mask_keep.table.round(1).to_string(index=False),
            claims_markdown(self.claims),
        ]
        if self.parens is not None:
            p = self.parens
            lines.append(f"top parens head {head_label(*p.head)}: accuracy drop {m['parens_top_head_accuracy_drop']:.3f}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# the steps of a run


def measure_accuracy(model, cfg: CNAConfig, progress: bool = True):
    """Step 1: the dataset (``n_acc`` operand pairs per template and operation), which prompts the model answers
    right, and its accuracy per operation (with intervals) and per template."""
    ops = tuple(cfg.ops)
    ds = arithmetic.dataset(model, templates=tuple(cfg.templates), ops=ops, digits=cfg.digits, n=cfg.n_acc, seed=cfg.seed)
    correct = arithmetic.predictions(model, ds, progress=progress) == ds.label_ids
    acc_by_op = {op: intervals.mean(correct[[i for i, p in enumerate(ds) if p.op == op]].float()) for op in ds.ops}
    acc_by_template = {
        t: float(correct[[i for i, p in enumerate(ds) if p.template == t]].float().mean()) for t in ds.templates
    }
    return ds, correct, acc_by_op, acc_by_template


def sweep_heads(model, cfg: CNAConfig, ds: ArithmeticDataset, progress: bool = True, workers=None):
    """Step 2: every head ablated alone on the selection split (prompts of one token length, so the sweep runs
    as one batch), the chosen heads (:func:`codecircuits.cna.select_heads`) and as many random heads re-scored on held-out
    prompts. Returns the selection split, the rest of the dataset, the sweep and the
    :class:`~codecircuits.cna.HeldOutHeads`."""
    seed, ops = cfg.seed, tuple(cfg.ops)
    sel = arithmetic.one_length(model, ds, max(1, cfg.n_sweep // len(ops)), seed, per_op=True)
    rest = ds.select(exclude=sel)
    sweep = distributed.run(cna_mod.head_sweep, model, sel.texts, sel.label_ids, progress=progress, workers=workers)
    chosen = cna_mod.select_heads(sweep, [p.op for p in sel], cfg.n_top_heads)
    rand = heads.random_heads(model, len(chosen), exclude=set(chosen), seed=seed, rng="python")[0]
    held = rest.per_op(cfg.n_heldout, ops, seed=seed + 1)
    hsweep = cna_mod.head_effects(model, held.texts, held.label_ids, [*chosen, *rand], progress=progress)
    return sel, rest, sweep, cna_mod.HeldOutHeads(tuple(chosen), tuple(rand), hsweep, tuple(p.op for p in held))


def cna_and_mask_keep(model, cfg: CNAConfig, ds, correct, rest, head, progress: bool = True, workers=None):
    """Step 3: CNA against ``head`` on correctly answered prompts of one length (in the last ``cna_layers``
    layers), the neurons ranked by their mean CNA, and the mask/keep table of those neurons on other held-out
    prompts. Returns the mask/keep prompts, the CNA result, the table, the CNA prompts and the N measured."""
    seed, ops = cfg.seed, tuple(cfg.ops)
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    mask_set = rest.per_op(cfg.n_mask, ops, seed=seed + 2)
    is_right = dict(zip(ds.prompts, correct.tolist()))
    cna_pool = rest.select(exclude=mask_set) if len(rest) > len(mask_set) else rest
    if any(is_right[p] for p in cna_pool):
        cna_pool = ArithmeticDataset(tuple(p for p in cna_pool if is_right[p]))
    cna_ds = arithmetic.one_length(model, cna_pool, max(1, -(-cfg.n_cna // len(ops))), seed + 4, per_op=True)
    cna_ds = cna_ds.select(limit=cfg.n_cna, seed=seed)
    cna_texts, cna_labels = cna_ds.texts, cna_ds.label_ids
    cna_layers = None if cfg.cna_layers is None else range(max(head[0], n_layers - cfg.cna_layers), n_layers)
    res = distributed.run(
        cna_mod.compare, model, cna_texts, head, target=cna_labels, layers=cna_layers, progress=progress, workers=workers
    )
    n_scored = len(res.settings["layers"]) * d_mlp
    ns = tuple(n for n in sorted(cfg.ns) if n <= n_scored) or (min(10, n_scored),)
    ranked = cna_mod.ranked_neurons(res, ns[-1])
    # accuracy decreases are counted on prompts the model gets right; a model that gets none right (a random test
    # model) is counted on all of them instead
    mk = cna_mod.mask_keep_heldout(
        model, mask_set.texts, mask_set.label_ids, ranked, first_layer=head[0], ns=ns,
        random_layers=res.settings["layers"], only_correct=any(is_right[p] for p in mask_set), seed=seed,
        progress=progress, head=head,
    )
    return mask_set, res, mk, cna_texts, ns


def top_neurons(model, cfg: CNAConfig, rest, progress: bool = True, workers=None):
    """Step 4: METHODS Table 2 (the top-10 FFN neurons of each attribution score zeroed, beside 10 random ones),
    query neurons of the top value neurons (when every layer is scored) and attention neurons of the last
    ``attn_layers`` layers. Returns the layers scored (None: all), the Table 2 evaluation, the query evaluation
    and the layers of value and query neurons, and the attention evaluation (None where not run)."""
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    ev_ds = arithmetic.one_length(model, rest, cfg.n_top10, cfg.seed + 3)
    layers = None if cfg.top10_layers is None else list(range(max(0, n_layers - cfg.top10_layers), n_layers))
    attr = distributed.run(
        neurons.ffn_neurons, model, ev_ds.texts, target=ev_ds.label_ids, scores="all", layers=layers,
        progress=progress, workers=workers,
    )
    top10 = neurons.evaluate_top_neurons(model, ev_ds.texts, attr, k=10, seed=cfg.seed, progress=progress)
    query, query_layers = None, {}
    if layers is None:  # query neurons read the value neurons of every layer
        value_top = min(100, attr["logprob_increase"][0].numel())
        q = neurons.query_neurons(model, ev_ds.texts, attr, top=value_top, progress=progress)
        k_q = min(cfg.k_query, n_layers * d_mlp)
        query = neurons.evaluate_top_neurons(
            model, ev_ds.texts, q.to_attribution(attr), k=k_q, seed=cfg.seed, progress=progress
        )
        query_layers = {k: iv.to_json() for k, iv in q.mean_layers(value_top).items()} | {"n_value_neurons": value_top}
    attn = None
    if cfg.n_attn > 0 and cfg.attn_layers > 0:
        a_ds = ev_ds.select(indices=range(min(cfg.n_attn, len(ev_ds))))
        a_layers = list(range(max(0, n_layers - cfg.attn_layers), n_layers))
        a_attr = neurons.attention_neurons(model, a_ds.texts, target=a_ds.label_ids, layers=a_layers, progress=progress)
        k_a = min(cfg.k_attn, len(a_layers) * int(model.cfg.n_heads) * int(model.cfg.d_head))
        attn = neurons.evaluate_top_attention_neurons(model, a_ds.texts, a_attr, k=k_a, seed=cfg.seed, progress=progress)
    return layers, top10, query, query_layers, attn


def parens_task(model, cfg: CNAConfig, progress: bool = True, workers=None) -> TaskFindings | None:
    """Step 5 (when ``paren_n_values`` is set): the closing-parenthesis task -- every head on its prompts, CNA
    against the top head and the per-prompt mask/keep table on ``n_cna`` of the prompts it gets right."""
    if not cfg.paren_n_values:
        return None
    from ..tasks import parens

    pds = parens.dataset(model, n_values=tuple(cfg.paren_n_values), n_numbers=cfg.paren_numbers, split=None)
    accuracy = {str(k): v for k, v in parens.accuracy(model, pds).items()}
    psub = pds.select(limit=max(1, cfg.n_sweep // len(cfg.paren_n_values)))
    texts, labels = [p.text for p in psub], torch.tensor([p.label_id for p in psub])
    sweep = distributed.run(cna_mod.head_sweep, model, texts, labels, progress=progress, workers=workers)
    head = sweep.top_head()
    right = [i for i in range(len(texts)) if bool(sweep.base_correct[i])]
    n_cna = cfg.n_cna
    pick = right[:: max(1, len(right) // n_cna)][:n_cna] if right else list(range(min(n_cna, len(texts))))
    cna_texts, cna_labels = [texts[i] for i in pick], labels[pick]
    res = distributed.run(cna_mod.compare, model, cna_texts, head, target=cna_labels, progress=progress, workers=workers)
    # accuracy decreases are measured on prompts the model gets right; a model that gets none right (a random
    # test model) is measured on all of them instead (its decreases are then n/a)
    mk = cna_mod.mask_keep(
        model, cna_texts, res, target=cna_labels, ns=tuple(sorted(cfg.ns)), only_correct=bool(right), progress=progress
    )
    return TaskFindings("parens", accuracy, sweep, head, res, mk, len(texts), tuple(cna_texts))


def run(model, config: CNAConfig | None = None, *, progress: bool = True, workers=None, **overrides) -> CNAStudy:
    """Run the study with ``config`` (default :class:`CNAConfig`; keyword ``overrides`` change single settings).
    See the module docstring for the protocol. ``workers`` (a number, a Ray address or a
    :class:`~codecircuits.distributed.Workers`) shards the head sweeps, CNA and the FFN neuron attribution by
    prompt over workers (:func:`codecircuits.distributed.run`); the results are one process's."""
    if workers is not None:
        from ..distributed.workers import Workers

        if not isinstance(workers, Workers):  # one cluster for every job of the study
            from ..distributed import using

            with using(workers) as w:
                return run(model, config, progress=progress, workers=w, **overrides)
    cfg = _scaled(configure(CNAConfig, config, overrides))
    t0 = time.time()
    ds, correct, acc_by_op, acc_by_template = measure_accuracy(model, cfg, progress)
    sel, rest, sweep, heldout = sweep_heads(model, cfg, ds, progress, workers)
    head = heldout.heads[0]
    mask_set, res, mk, cna_texts, ns = cna_and_mask_keep(model, cfg, ds, correct, rest, head, progress, workers)
    arith = TaskFindings("arithmetic", acc_by_template, sweep, head, res, mk, len(sel), tuple(cna_texts))
    layers, top10, query, query_layers, attn = top_neurons(model, cfg, rest, progress, workers)
    parens_f = parens_task(model, cfg, progress, workers)
    settings = {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "arith_templates_text": [arithmetic.TEMPLATES.get(t, t) for t in cfg.templates],
        "n_accuracy_prompts": len(ds),
        "n_selection_prompts": len(sel),
        "n_heldout_prompts": len(heldout.ops),
        "n_mask_prompts": len(mask_set),
        "mask_keep_ns": list(ns),
        "cna_scored_layers": [res.settings["layers"][0], res.settings["layers"][-1]],
        "top10_layers": "all" if layers is None else f"{layers[0]}-{layers[-1]}",
        "seconds": round(time.time() - t0, 1),
    }
    name = str(getattr(model.cfg, "model_name", "model"))
    study = CNAStudy(
        name, arith, parens_f, top10, settings, cfg, accuracy_by_op=acc_by_op, heldout=heldout, query=query,
        query_layers=query_layers, attn=attn,
    )
    return dataclasses.replace(study, claims=tuple(claims_of(study)))

# ----------------------------------------------------------------------------------------------------------------
# claims

#: where the paper's numbers come from: the arithmetic-heads paper (Table 1), CNA's mask/keep verification and the
#: neuron-attribution paper (Table 2 and its headline numbers); METHODS §3 quotes them
HEADS_PAPER, CNA_PAPER, ATTRIBUTION_PAPER = (
    "Yu & Ananiadou, arithmetic heads, Table 1",
    "Yu & Ananiadou, CNA mask/keep verification (METHODS §3.4)",
    "Yu & Ananiadou, neuron attribution",
)
_BEATS_RANDOM = "reproduced: the drop's interval lies above 0.3 and above the random neurons'; partly: above theirs"
CLAIMS = claim_specs(
    COMMAND,
    head=("a single head carries much of the arithmetic: ablating {head} (chosen on {n} selection prompts) drops "
          "held-out accuracy, far more than random heads",
          "reproduced: the held-out drop's interval lies above 0.10 and its excess over random heads above 0; partly: "
          "both above 0", "L17H22: accuracy 74.8 -> 53.4 (21 points)", HEADS_PAPER),
    harmless=("most heads are harmless: random heads' mean drop is within 2 points of zero",
              "reproduced: the random heads' interval lies within (-0.02, 0.02); partly: below 0.05",
              "976 of 1,024 heads change accuracy by <= 2%", HEADS_PAPER),
    specific=("some heads are specific to one operation (drop interval above 0 on one operation only)",
              "reproduced: a chosen head's drop interval lies above 0 on exactly one operation; partly: the largest "
              "drop on one operation lies above 0"),
    mask=("masking the top-{n} CNA neurons (ranked on the CNA prompts) removes most held-out correct answers, far "
          "more than {n} random neurons",
          "reproduced: the decrease's interval lies above 0.5 and mask minus random above 0; partly: mask minus random "
          "above 0", "N=99: 100% accuracy decrease", CNA_PAPER),
    keep=("keeping only the top CNA neurons of layers >= {layer} keeps most answers (small decrease)",
          "reproduced: the keep decrease's interval lies below 0.2; partly: below 0.5",
          "keep-99 decrease 3.9%, keep-10 38.2% (Llama-7B, layers 17-31)", CNA_PAPER),
    top10=("zeroing the top-10 FFN neurons by log-probability increase ({layers} layers) lowers the answer's "
           "probability far more than 10 random neurons", _BEATS_RANDOM,
           "Llama-7B: probability 21.5% -> 9.2% (57% drop)", f"{ATTRIBUTION_PAPER}, Table 2"),
    score=("log-probability increase picks more important top-10 neurons than {other}",
           "reproduced: the extra drop's interval lies above 0; partly: its estimate does",
           "Llama-7B: probability 9.2% vs {theirs}%", f"{ATTRIBUTION_PAPER}, Table 2"),
    query=("zeroing the top-{k} query FFN neurons lowers the answer's probability far more than random neurons",
           _BEATS_RANDOM, "top-1000 query neurons: 95-96% probability drop, random 1.1%",
           f"{ATTRIBUTION_PAPER} (METHODS §3.1)"),
    query_layers=("query neurons lie in shallower layers than value neurons",
                  "reproduced: the interval of value minus query mean layer lies above 0"),
    attention=("zeroing the top-{k} attention neurons (last {layers} layers) lowers the answer's probability more "
               "than random attention neurons", _BEATS_RANDOM,
               "top-200 attention + top-100 FFN value neurons: 99% probability drop, random 0.1%",
               f"{ATTRIBUTION_PAPER} (METHODS §3.1)"),
)


def claims_of(study: CNAStudy) -> list[Claim]:
    """The paper's claims with this run's evidence, control and verdict."""
    return [*_head_claims(study), *_neuron_claims(study)]


def _head_claims(study: CNAStudy) -> list[Claim]:
    a, h = study.arithmetic, study.heldout
    if h is None:
        return []
    head = a.head
    d, r, ex = h.drop(head), h.random_drop(), h.excess(head)
    spec = h.specific()
    best = None
    for hh in h.heads:
        for op in h.op_names:
            iv = h.drop(hh, op)
            if best is None or iv.low > best[2].low:
                best = (hh, op, iv)
    return [
        CLAIMS["head"](d.above(0.10) and ex.above(0), d.above(0) and ex.above(0), d, r,
                       f"paper: L17H22 74.8 -> 53.4 (21 points); held-out drop minus random-head drop {ex.format(3)}; "
                       f"n={d.n} held-out prompts", head=head_label(*head), n=a.n_sweep),
        CLAIMS["harmless"](r.low > -0.02 and r.high < 0.02, r.below(0.05), r, None,
                           f"paper: 976 of 1,024 heads change accuracy by <= 2%; selection sweep: "
                           f"{a.sweep.fraction_harmless(0.02):.0%} of heads within 2 points on {a.n_sweep} prompts"),
        CLAIMS["specific"](
            bool(spec), best is not None and best[2].above(0), h.drop(spec[0][0], spec[0][1]) if spec else best[2],
            h.random_drop(spec[0][1] if spec else best[1]),
            ("specific: " + ", ".join(f"{head_label(*x)} on {o}" for x, o in spec)) if spec
            else f"none; largest: {head_label(*best[0])} on {best[1]}",
        ),
    ]


def _neuron_claims(study: CNAStudy) -> list[Claim]:
    """Mask/keep of the CNA neurons, METHODS Table 2, query and attention neurons, each against random neurons."""
    out = []
    mk, head = study.arithmetic.mask_keep, study.arithmetic.head
    if mk.per_prompt:
        small, n = mk.ns[0], mk.ns[-1]
        mask, diff, keep_n = mk.decrease("mask", n), mk.mask_minus_random(n), mk.decrease("keep", n)
        out += [
            CLAIMS["mask"](mask.above(0.5) and diff.above(0), diff.above(0), mask, mk.decrease("random_mask", n),
                           f"paper (N=99): 100% decrease; mask minus random {diff.format(3)}; n={mask.n}", n=n),
            CLAIMS["keep"](keep_n.below(0.2), keep_n.below(0.5), keep_n, mk.decrease("keep", small),
                           f"paper (Llama-7B, layers 17-31): keep-99 decrease 3.9%, keep-10 38.2%; measured: keep-{n}, "
                           f"control column: keep-{small}", layer=head[0]),
        ]
    ev = study.top10
    if "logprob_increase" in ev.per_prompt and "random" in ev.per_prompt:
        lpi, rnd = ev.drop("logprob_increase"), ev.drop("random")
        out.append(CLAIMS["top10"](lpi.above(0.3) and lpi.low > rnd.high, lpi.low > rnd.high, lpi, rnd,
                                   f"paper Llama-7B: 21.5% -> 9.2% (57% drop); n={lpi.n} prompts",
                                   layers=study.settings.get("top10_layers")))
        for other, theirs in (("logprob", "10.8"), ("coefficient", "22.9")):
            if other in ev.per_prompt:
                diff = ev.extra_drop("logprob_increase", other)
                out.append(CLAIMS["score"](diff.above(0), diff.estimate > 0, diff, ev.drop(other),
                                           f"measured: extra relative probability drop over {other}; control: "
                                           f"{other}'s own drop; paper Llama-7B: 9.2% vs {theirs}% probability",
                                           other=other, theirs=theirs))
    if study.query is not None:
        qd, rd = study.query.drop("query_score"), study.query.drop("random")
        ql = Interval.from_json(study.query_layers["value_minus_query"])
        out += [
            CLAIMS["query"](qd.above(0.3) and qd.low > rd.high, qd.low > rd.high, qd, rd,
                            f"paper (top-1000 query neurons): 95-96% probability drop, random 1.1%; n={qd.n}",
                            k=study.query.k),
            CLAIMS["query_layers"](
                ql.above(0), False, ql, None,
                "measured: mean layer of each prompt's top value neurons minus that of its top query neurons "
                f"(value {Interval.from_json(study.query_layers['value_mean_layer']).format(1)}, "
                f"query {Interval.from_json(study.query_layers['query_mean_layer']).format(1)})"),
        ]
    if study.attn is not None:
        ad, rd = study.attn.drop("logprob_increase"), study.attn.drop("random")
        out.append(CLAIMS["attention"](
            ad.above(0.3) and ad.low > rd.high, ad.low > rd.high, ad, rd,
            f"paper: top-200 attention + top-100 FFN value neurons: 99% probability drop, random 0.1%; n={ad.n}",
            k=study.attn.k, layers=study.settings.get("attn_layers")))
    return out

# ----------------------------------------------------------------------------------------------------------------
# report


def _task_sections(r, f: TaskFindings, paper: str) -> None:
    n_layers, n_heads = f.sweep.accuracy.shape
    r.section(
        f"{f.name}: single-head ablation",
        text=f"Each head zeroed alone (attn.hook_z at every position) over {f.n_sweep} prompts. {paper}",
    )
    r.heatmap(
        f.sweep.accuracy_drop.numpy(), x_labels=list(range(n_heads)), y_labels=list(range(n_layers)),
        title="accuracy drop when the head is ablated", x_title="head", y_title="layer", center=0.0,
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
        lt["layer"].tolist(), {"positive CNA": lt["positive_cna"].tolist()}, title="where the head's effect lands",
        x_title="layer", y_title="summed positive CNA",
    )
    table = f.mask_keep.table.copy()
    for kind in ("mask", "keep", "random_mask") if f.mask_keep.per_prompt else ():
        table[f"{kind} decrease (95% CI)"] = [f.mask_keep.decrease(kind, int(n)).format(2, percent=True) for n in table["N"]]
    r.table(
        table,
        caption=f"mask (zero the top-N CNA neurons) vs keep (zero every other neuron of layers >= {f.head[0]}) vs N "
        f"random neurons: accuracy decrease %, on {f.mask_keep.n_prompts} correct prompts",
    )


def _eval_table(ev: neurons.TopNeuronEval) -> pd.DataFrame:
    t = ev.table.copy()
    t["prob drop (95% CI)"] = [ev.drop(m, "prob").format(2, percent=True) for m in t["method"]]
    t["MRR drop (95% CI)"] = [ev.drop(m, "mrr").format(2, percent=True) for m in t["method"]]
    return t


#: the metric cards the report opens with, after the claims (those a run has; N: the largest mask/keep N), and their
#: labels ("{head}": the top head); every other card follows at the end, named by its key
KEY_NUMBERS = {
    "heldout_top_head_drop": "held-out accuracy drop, top head {head} ablated",
    "heldout_random_heads_drop": "held-out accuracy drop, random heads (mean)",
    "arith_fraction_heads_within_2pct": "share of heads that change accuracy by at most 2 points",
    "arith_mask_{n}": "accuracy decrease %, top-{n} CNA neurons zeroed",
    "arith_random_mask_{n}": "accuracy decrease %, {n} random neurons zeroed",
    "arith_keep_{n}": "accuracy decrease %, only the top-{n} CNA neurons kept",
    "top10_mrr_original": "MRR of the answer (nothing zeroed)",
    "top10_mrr_logprob_increase": "MRR with the top-10 neurons by log-probability increase zeroed",
}


def report(study: CNAStudy):
    """The study as a :class:`codecircuits.report.Report`: the claims, a few key numbers, then each step."""
    n = study.settings.get("mask_keep_ns", [0])[-1]
    labels = {k.format(n=n): v.format(n=n, head=head_label(*study.arithmetic.head)) for k, v in KEY_NUMBERS.items()}
    r = study.open_report(
        f"Arithmetic heads and comparative neuron analysis on {study.model}",
        "Yu & Ananiadou (EMNLP 2024): the paper's arithmetic task (four operations, two-digit operands) with held-out "
        "selection, random controls and bootstrap 95% intervals",
        labels=labels,
    )
    if study.accuracy_by_op:
        r.table(
            [{"operation": k, "accuracy (95% CI)": v.format(3), "n": v.n} for k, v in study.accuracy_by_op.items()],
            caption="first-token accuracy per operation (every template)",
        )
    for t in study.settings["arith_templates_text"]:
        r.code(t.format(a=23, b=45, op="+", noun="sum", word="plus") + "68", title="arithmetic template (answer shown)")
    _task_sections(
        r,
        study.arithmetic,
        "Selection split. Paper (Llama-7B): a few heads carry arithmetic; L17H22 drops accuracy 74.8 -> 53.4 and 976 "
        "of 1,024 heads change it by at most 2%.",
    )
    if study.heldout is not None:
        r.section(
            "Held-out: the selected heads beside random heads",
            text=f"Accuracy drop (base minus ablated) of each selected head and {len(study.heldout.random_heads)} "
            f"random heads on {len(study.heldout.ops)} held-out prompts, with bootstrap 95% intervals, per operation.",
        )
        r.table(study.heldout.table(), caption="held-out accuracy drop per head and operation")
    r.section(
        "Which score finds the neurons that matter (METHODS Table 2, all layers)",
        text="Per prompt, zero the top-10 FFN neurons chosen by each score and measure the answer's MRR and "
        "probability (lower = the score found more important neurons). Paper, Llama-7B: original 0.551 / 21.5%, "
        "log prob increase 0.312 / 9.2%, coefficient 0.529 / 22.9%, norm 0.549 / 21.3%.",
    )
    r.table(_eval_table(study.top10), caption=f"top-10 ablation on {study.top10.n_prompts} prompts")
    if study.query is not None:
        r.section("Query neurons", text="Zero each prompt's top query FFN neurons (METHODS §3.2) beside random ones.")
        r.table(_eval_table(study.query), caption=f"top-{study.query.k} query neurons zeroed")
    if study.attn is not None:
        r.section("Attention neurons", text="Zero each prompt's top attention neurons (hook_z[..., h, j]) beside random ones.")
        r.table(_eval_table(study.attn), caption=f"top-{study.attn.k} attention neurons zeroed")
    if study.parens is not None:
        _task_sections(r, study.parens, "Closing-parenthesis prompts with 1..n open parens.")
    return study.close_report(r)


def tables(study: CNAStudy) -> dict[str, pd.DataFrame]:
    """The study's tables as DataFrames (for notebooks and the findings page)."""
    out = {
        "arith_top_heads": study.arithmetic.sweep.top(10),
        "arith_cna": study.arithmetic.cna.top(10),
        "arith_mask_keep": study.arithmetic.mask_keep.table,
        "top10": study.top10.table,
        "claims": pd.DataFrame([c.row() for c in study.claims]),
    }
    if study.heldout is not None:
        out["heldout_heads"] = study.heldout.table()
    if study.query is not None:
        out["query"] = study.query.table
    if study.attn is not None:
        out["attention_neurons"] = study.attn.table
    if study.parens is not None:
        out.update(
            {
                "parens_top_heads": study.parens.sweep.top(10),
                "parens_cna": study.parens.cna.top(10),
                "parens_mask_keep": study.parens.mask_keep.table,
            }
        )
    return out
