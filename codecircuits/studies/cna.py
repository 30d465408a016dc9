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

>>> study = run(load_model("smollm2-135m"), CNAConfig(n_sweep=8))
>>> html, js = study.save("reports/cna")
"""

from __future__ import annotations

import dataclasses
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .. import cna as cna_mod
from .. import distributed, intervals, neurons
from ..core.sites import head_label
from ..errors import InputError
from ..intervals import Claim, Interval
from ..tasks import arithmetic
from ..tasks.arithmetic import ArithmeticDataset
from .common import Study, configure, json_safe, setting

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
    return dataclasses.replace(
        cfg, **{k: v for k, v in PAPER_SCALE.items() if getattr(cfg, k) == getattr(defaults, k)}
    )


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
            "mask_keep_intervals": mask_keep_intervals(self.mask_keep),
        }


@dataclass(frozen=True)
class HeldOutHeads:
    """The selected heads and a random-head control re-scored on held-out prompts: ``sweep`` holds every prompt's
    outcome for these heads (``correct[layer, head, prompt]``); ``ops[prompt]`` names each prompt's operation."""

    heads: tuple[tuple[int, int], ...]
    random_heads: tuple[tuple[int, int], ...]
    sweep: cna_mod.HeadSweep
    ops: tuple[str, ...]

    def _rows(self, op: str | None) -> torch.Tensor:
        rows = [i for i, o in enumerate(self.ops) if op is None or o == op]
        if not rows:
            raise InputError(f"No held-out prompt of operation {op!r}.")
        return torch.tensor(rows)

    def drops(self, head: tuple[int, int], op: str | None = None) -> torch.Tensor:
        """Per prompt: 1 where the head's ablation breaks a right answer, -1 where it mends a wrong one."""
        r = self._rows(op)
        return self.sweep.base_correct[r].float() - self.sweep.correct[head[0], head[1], r].float()

    def drop(self, head: tuple[int, int], op: str | None = None) -> Interval:
        """The head's accuracy drop (base minus ablated accuracy) with its paired bootstrap interval."""
        return intervals.mean(self.drops(head, op))

    def random_drops(self, op: str | None = None) -> torch.Tensor:
        """Per prompt, the drop averaged over the random control heads."""
        return torch.stack([self.drops(h, op) for h in self.random_heads]).mean(0)

    def random_drop(self, op: str | None = None) -> Interval:
        return intervals.mean(self.random_drops(op))

    def excess(self, head: tuple[int, int], op: str | None = None) -> Interval:
        """The head's drop minus the random heads' mean drop on the same prompts (paired)."""
        return intervals.mean(self.drops(head, op) - self.random_drops(op))

    def base_accuracy(self, op: str | None = None) -> Interval:
        return intervals.mean(self.sweep.base_correct[self._rows(op)].float())

    def specific(self) -> list[tuple[tuple[int, int], str]]:
        """``(head, op)`` pairs where the head's drop interval lies above zero on ``op`` and on no other op."""
        out = []
        ops = list(dict.fromkeys(self.ops))
        for h in self.heads:
            above = [o for o in ops if self.drop(h, o).above(0)]
            if len(above) == 1:
                out.append((h, above[0]))
        return out

    def table(self) -> pd.DataFrame:
        ops = list(dict.fromkeys(self.ops))
        rows = []
        for kind, hs in (("selected", self.heads), ("random", self.random_heads)):
            for h in hs:
                row = {"head": head_label(*h), "kind": kind, "all": self.drop(h).format(3)}
                row.update({o: self.drop(h, o).format(3) for o in ops})
                rows.append(row)
        row = {"head": "mean of random heads", "kind": "control", "all": self.random_drop().format(3)}
        row.update({o: self.random_drop(o).format(3) for o in ops})
        rows.append(row)
        return pd.DataFrame(rows)

    def to_json(self) -> dict:
        ops = list(dict.fromkeys(self.ops))
        per = {}
        for h in (*self.heads, *self.random_heads):
            per[head_label(*h)] = {"all": self.drop(h).to_json(), **{o: self.drop(h, o).to_json() for o in ops}}
        return {
            "heads": [head_label(*h) for h in self.heads],
            "random_heads": [head_label(*h) for h in self.random_heads],
            "n_prompts": len(self.ops),
            "n_prompts_per_op": {o: sum(1 for x in self.ops if x == o) for o in ops},
            "base_accuracy": {"all": self.base_accuracy().to_json(), **{o: self.base_accuracy(o).to_json() for o in ops}},
            "accuracy_drop": per,
            "random_heads_mean_drop": {
                "all": self.random_drop().to_json(), **{o: self.random_drop(o).to_json() for o in ops}
            },
            "specific_heads": [{"head": head_label(*h), "op": o} for h, o in self.specific()],
        }


@dataclass(frozen=True)
class CNAStudy(Study):
    """Everything a run measured: accuracy, the head sweep and its held-out re-scoring, CNA and mask/keep, the
    top-10 comparison, query and attention neurons, and the claims table."""

    model: str
    arithmetic: TaskFindings
    parens: TaskFindings | None
    top10: neurons.TopNeuronEval
    settings: dict = field(default_factory=dict)
    config: CNAConfig | None = None
    accuracy_by_op: dict = field(default_factory=dict)  # op -> Interval
    heldout: HeldOutHeads | None = None
    query: neurons.TopNeuronEval | None = None
    query_layers: dict = field(default_factory=dict)
    attn: neurons.TopNeuronEval | None = None
    claims: tuple[Claim, ...] = ()

    def report(self, model=None):
        """The study as a :class:`codecircuits.report.Report`."""
        return report(self)

    def results(self) -> dict:
        return {**self.to_json(), "metrics": self.metrics()}

    def to_json(self) -> dict:
        return json_safe(
            {
                "model": self.model,
                "settings": self.settings,
                "accuracy_by_op": {k: v.to_json() for k, v in self.accuracy_by_op.items()},
                "arithmetic": self.arithmetic.summary(),
                "heldout_heads": None if self.heldout is None else self.heldout.to_json(),
                "parens": None if self.parens is None else self.parens.summary(),
                "top10_ablation": self.top10.table.to_dict("records"),
                "top10_n_prompts": self.top10.n_prompts,
                "top10_intervals": eval_intervals(self.top10),
                "query_neurons": None if self.query is None else {
                    "table": self.query.table.to_dict("records"),
                    "intervals": eval_intervals(self.query),
                    "layers": self.query_layers,
                },
                "attention_neurons": None if self.attn is None else {
                    "table": self.attn.table.to_dict("records"),
                    "intervals": eval_intervals(self.attn),
                },
                "claims": [c.to_json() for c in self.claims],
            }
        )

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


# ----------------------------------------------------------------------------------------------------------------
# intervals of the tables


def mask_keep_intervals(mk: cna_mod.MaskKeepTable) -> dict:
    """Per N and kind: the accuracy decrease (1 - accuracy on the counted prompts, which were right before) with
    its interval, and the mask-minus-random difference (paired)."""
    if not mk.per_prompt:
        return {}
    out = {}
    ns = sorted({int(k.rsplit("_", 1)[1]) for k in mk.per_prompt if k != "base"})
    for n in ns:
        row = {}
        for kind in ("mask", "keep", "random_mask"):
            row[kind] = intervals.mean(1.0 - mk.per_prompt[f"{kind}_{n}"].float()).to_json()
        row["mask_minus_random"] = intervals.mean(
            mk.per_prompt[f"random_mask_{n}"].float() - mk.per_prompt[f"mask_{n}"].float()
        ).to_json()
        out[str(n)] = row
    return out


def _prob_drop(orig: torch.Tensor, other: torch.Tensor) -> Interval:
    """Relative drop of the mean probability (``1 - mean(other) / mean(orig)``) with its paired interval."""
    return intervals.paired(lambda o, x: 1.0 - x.mean() / o.mean(), orig, other)


def _prob_drop_difference(orig, a, b) -> Interval:
    """How much more ``a`` drops the probability than ``b`` (same prompts): ``(mean(b) - mean(a)) / mean(orig)``."""
    return intervals.paired(lambda o, x, y: (y.mean() - x.mean()) / o.mean(), orig, a, b)


def eval_intervals(ev: neurons.TopNeuronEval) -> dict:
    """Per method: the relative drops of the answer's probability and MRR with intervals (over prompts)."""
    o = ev.per_prompt["original"]
    out = {}
    for m, v in ev.per_prompt.items():
        out[m] = {
            "prob": intervals.mean(v[:, 1]).to_json(),
            "mrr": intervals.mean(v[:, 0]).to_json(),
            "prob_drop": _prob_drop(o[:, 1], v[:, 1]).to_json(),
            "mrr_drop": _prob_drop(o[:, 0], v[:, 0]).to_json(),
        }
    return out


# ----------------------------------------------------------------------------------------------------------------
# running


def _task(model, name, texts, labels, accuracy, *, n_cna, ns, progress, workers=None) -> TaskFindings:
    """The parenthesis task: every head on ``texts``, CNA and the per-prompt mask/keep table on ``n_cna`` of them."""
    sweep = distributed.run(cna_mod.head_sweep, model, texts, labels, progress=progress, workers=workers)
    head = sweep.top_head()
    right = [i for i in range(len(texts)) if bool(sweep.base_correct[i])]
    pick = right[:: max(1, len(right) // n_cna)][:n_cna] if right else list(range(min(n_cna, len(texts))))
    cna_texts = [texts[i] for i in pick]
    cna_labels = labels[pick]
    res = distributed.run(
        cna_mod.compare, model, cna_texts, head, target=cna_labels, progress=progress, workers=workers
    )
    # accuracy decreases are measured on prompts the model gets right; a model that gets none right (a random
    # test model) is measured on all of them instead (its decreases are then n/a)
    mk = cna_mod.mask_keep(model, cna_texts, res, labels=cna_labels, ns=ns, only_correct=bool(right), progress=progress)
    return TaskFindings(name, accuracy, sweep, head, res, mk, len(texts), tuple(cna_texts))


def _op_drop(sweep: cna_mod.HeadSweep, rows: torch.Tensor) -> torch.Tensor:
    """``[layer, head]`` accuracy drop on the prompts ``rows`` of a sweep."""
    return sweep.base_correct[rows].float().mean() - sweep.correct[:, :, rows].float().mean(-1)


def _select_heads(sweep: cna_mod.HeadSweep, ops: list[str], n_top: int) -> list[tuple[int, int]]:
    """The ``n_top`` heads with the largest selection drop, then the most harmful head of each operation."""
    chosen = [tuple(int(x) for x in r) for r in sweep.top(n_top)[["layer", "head"]].values]
    for op in dict.fromkeys(ops):
        rows = torch.tensor([i for i, o in enumerate(ops) if o == op])
        d = _op_drop(sweep, rows)
        # ties by the log-probability drop on those prompts
        lp = sweep.prompt_logprob[:, :, rows].mean(-1)
        key = d * 1e3 - lp
        flat = int(key.flatten().argmax())
        h = (flat // d.shape[1], flat % d.shape[1])
        if h not in chosen:
            chosen.append(h)
    return chosen


def _random_heads(model, exclude, k: int, seed: int) -> list[tuple[int, int]]:
    pool = [(layer, h) for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads) if (layer, h) not in exclude]
    return sorted(random.Random(seed).sample(pool, min(k, len(pool))))


def run(model, config: CNAConfig | None = None, *, progress: bool = True, workers=None, **overrides) -> CNAStudy:
    """Run the study with ``config`` (default :class:`CNAConfig`; keyword ``overrides`` change single settings).
    See the module docstring for the protocol. ``workers`` (a number, a Ray address or a
    :class:`~codecircuits.distributed.Workers`) shards the head sweeps, CNA and the FFN neuron attribution by
    prompt over workers (:mod:`codecircuits.distributed.neurons`); the results are one process's."""
    if workers is not None:
        from ..distributed.workers import Workers

        if not isinstance(workers, Workers):  # one cluster for every job of the study
            from ..distributed import using

            with using(workers) as w:
                return run(model, config, progress=progress, workers=w, **overrides)
    cfg = _scaled(configure(CNAConfig, config, overrides))
    t0 = time.time()
    seed, ops = cfg.seed, tuple(cfg.ops)
    ns = tuple(sorted(cfg.ns))
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)

    # 1. accuracy on every template x operation
    ds = arithmetic.dataset(model, templates=tuple(cfg.templates), ops=ops, digits=cfg.digits, n=cfg.n_acc, seed=seed)
    correct = arithmetic.predictions(model, ds, progress=progress) == ds.label_ids
    acc_by_op = {op: intervals.mean(correct[[i for i, p in enumerate(ds) if p.op == op]].float()) for op in ds.ops}
    acc_by_template = {
        t: float(correct[[i for i, p in enumerate(ds) if p.template == t]].float().mean()) for t in ds.templates
    }

    # 2. selection split: every head; held-out split: the chosen heads and random heads
    # (selection prompts of one token length, so the sweep runs as one batch)
    sel = _one_length(model, ds, max(1, cfg.n_sweep // len(ops)), seed, per_op=True)
    rest = ds.select(exclude=sel)
    sweep = distributed.run(cna_mod.head_sweep, model, sel.texts, sel.label_ids, progress=progress, workers=workers)
    sel_ops = [p.op for p in sel]
    chosen = _select_heads(sweep, sel_ops, cfg.n_top_heads)
    rand = _random_heads(model, set(chosen), len(chosen), seed)
    held = _per_op(rest, ops, cfg.n_heldout, seed + 1)
    hsweep = cna_mod.head_effects(model, held.texts, held.label_ids, [*chosen, *rand], progress=progress)
    heldout = HeldOutHeads(tuple(chosen), tuple(rand), hsweep, tuple(p.op for p in held))
    head = chosen[0]

    # 3. CNA against the top head on correct prompts of one length; mask/keep on other held-out prompts
    mask_set = _per_op(rest, ops, cfg.n_mask, seed + 2)
    is_right = dict(zip(ds.prompts, correct.tolist()))
    cna_pool = rest.select(exclude=mask_set) if len(rest) > len(mask_set) else rest
    if any(is_right[p] for p in cna_pool):
        cna_pool = ArithmeticDataset(tuple(p for p in cna_pool if is_right[p]))
    cna_ds = _one_length(model, cna_pool, max(1, -(-cfg.n_cna // len(ops))), seed + 4, per_op=True)
    cna_ds = cna_ds.select(limit=cfg.n_cna, seed=seed)
    cna_texts, cna_labels = cna_ds.texts, cna_ds.label_ids
    cna_layers = None if cfg.cna_layers is None else range(max(head[0], n_layers - cfg.cna_layers), n_layers)
    res = distributed.run(
        cna_mod.compare, model, cna_texts, head, target=cna_labels, layers=cna_layers, progress=progress, workers=workers
    )
    n_scored = len(res.settings["layers"]) * d_mlp
    ns = tuple(n for n in ns if n <= n_scored) or (min(10, n_scored),)
    ranked = cna_mod.ranked_neurons(res, ns[-1])
    # accuracy decreases are counted on prompts the model gets right; a model that gets none right (a random test
    # model) is counted on all of them instead
    mk = cna_mod.mask_keep_heldout(
        model, mask_set.texts, mask_set.label_ids, ranked, first_layer=head[0], ns=ns,
        random_layers=res.settings["layers"], only_correct=any(is_right[p] for p in mask_set), seed=seed,
        progress=progress,
        head=head,
    )
    arith = TaskFindings("arithmetic", acc_by_template, sweep, head, res, mk, len(sel), tuple(cna_texts))

    # 4. METHODS Table 2 over all layers; query and attention neurons
    ev_ds = _one_length(model, rest, cfg.n_top10, seed + 3)
    layers = None if cfg.top10_layers is None else list(range(max(0, n_layers - cfg.top10_layers), n_layers))
    attr = distributed.run(
        neurons.ffn_neurons, model, ev_ds.texts, target=ev_ds.label_ids, scores="all", layers=layers, progress=progress, workers=workers
    )
    top10 = neurons.evaluate_top_neurons(model, ev_ds.texts, attr, k=10, seed=seed, progress=progress)
    query, query_layers = None, {}
    if layers is None:  # query neurons read the value neurons of every layer
        value_top = min(100, attr["logprob_increase"][0].numel())
        q = neurons.query_neurons(model, ev_ds.texts, attr, top=value_top, progress=progress)
        k_q = min(cfg.k_query, n_layers * d_mlp)
        query = neurons.evaluate_top_neurons(
            model, ev_ds.texts, q.to_attribution(attr), k=k_q, seed=seed, progress=progress
        )
        v_layers = q.value_neurons[..., 0].float().mean(1)  # mean layer of each prompt's top value neurons
        q_idx = q.ffn.reshape(len(ev_ds), -1).topk(value_top, dim=1).indices
        q_layers = (q_idx // d_mlp).float().mean(1)
        query_layers = {
            "value_mean_layer": intervals.mean(v_layers).to_json(),
            "query_mean_layer": intervals.mean(q_layers).to_json(),
            "value_minus_query": intervals.mean(v_layers - q_layers).to_json(),
            "n_value_neurons": value_top,
        }
    attn = None
    if cfg.n_attn > 0 and cfg.attn_layers > 0:
        a_ds = ev_ds.select(indices=range(min(cfg.n_attn, len(ev_ds))))
        a_layers = list(range(max(0, n_layers - cfg.attn_layers), n_layers))
        a_attr = neurons.attention_neurons(model, a_ds.texts, target=a_ds.label_ids, layers=a_layers, progress=progress)
        k_a = min(cfg.k_attn, len(a_layers) * int(model.cfg.n_heads) * int(model.cfg.d_head))
        attn = neurons.evaluate_top_attention_neurons(model, a_ds.texts, a_attr, k=k_a, seed=seed, progress=progress)

    parens_f = None
    if cfg.paren_n_values:
        from ..tasks import parens

        pds = parens.dataset(model, n_values=tuple(cfg.paren_n_values), n_numbers=cfg.paren_numbers, split=None)
        pacc = {str(k): v for k, v in parens.accuracy(model, pds).items()}
        psub = pds.select(limit=max(1, cfg.n_sweep // len(cfg.paren_n_values)))
        ptexts = [p.text for p in psub]
        plabels = torch.tensor([p.label_id for p in psub])
        parens_f = _task(
            model, "parens", ptexts, plabels, pacc, n_cna=cfg.n_cna, ns=tuple(sorted(cfg.ns)), progress=progress,
            workers=workers,
        )

    settings = {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "arith_templates_text": [arithmetic.TEMPLATES.get(t, t) for t in cfg.templates],
        "n_accuracy_prompts": len(ds),
        "n_selection_prompts": len(sel),
        "n_heldout_prompts": len(held),
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


def _per_op(ds: arithmetic.ArithmeticDataset, ops, n: int, seed: int) -> arithmetic.ArithmeticDataset:
    """Up to ``n`` random prompts of each operation (all templates mixed)."""
    idx = []
    rng = random.Random(seed)
    for op in ops:
        rows = [i for i, p in enumerate(ds) if p.op == op]
        idx += rng.sample(rows, min(n, len(rows)))
    if not idx:
        raise InputError("No held-out prompts left: raise n_acc or lower n_sweep.")
    return ds.select(indices=sorted(idx))


def _one_length(
    model, ds: arithmetic.ArithmeticDataset, n: int, seed: int, *, per_op: bool = False
) -> arithmetic.ArithmeticDataset:
    """``n`` random prompts (``per_op``: ``n`` of each operation) of one token length, the length with the most
    operations, so that a sweep or an attribution runs as one batch (the readout rows and the clean forwards are
    shared by a batch) and attention neurons can be compared."""
    by_len: dict[int, list[int]] = {}
    for i, t in enumerate(ds.texts):
        by_len.setdefault(int(model.to_tokens(t).shape[1]), []).append(i)

    def n_ops(ix):
        return len({ds.prompts[i].op for i in ix})

    best = max(by_len.values(), key=lambda ix: (n_ops(ix), len(ix)))
    rng = random.Random(seed)
    if not per_op:
        _warn_short(n, len(best), "")
        return ds.select(indices=sorted(rng.sample(best, min(n, len(best)))))
    idx = []
    for op in dict.fromkeys(ds.prompts[i].op for i in best):
        rows = [i for i in best if ds.prompts[i].op == op]
        _warn_short(n, len(rows), f" of operation {op!r}")
        idx += rng.sample(rows, min(n, len(rows)))
    return ds.select(indices=sorted(idx))


def _warn_short(wanted: int, have: int, what: str) -> None:
    if have < wanted:
        warnings.warn(
            f"Only {have} prompts{what} share one token length, fewer than the {wanted} asked for; the sweep uses "
            f"{have}. Raise n_acc (--n-acc) to draw more prompts, or lower n_sweep (--n-sweep).",
            stacklevel=3,
        )


# ----------------------------------------------------------------------------------------------------------------
# claims


def claims_of(study: CNAStudy) -> list[Claim]:
    """The paper's claims with this run's evidence, control and verdict."""
    out: list[Claim] = []
    a, h = study.arithmetic, study.heldout
    cmd = COMMAND
    if h is not None:
        head = a.head
        d, r = h.drop(head), h.random_drop()
        ex = h.excess(head)
        out.append(
            Claim(
                f"a single head carries much of the arithmetic: ablating {head_label(*head)} (chosen on "
                f"{a.n_sweep} selection prompts) drops held-out accuracy, far more than random heads",
                intervals.verdict(d.above(0.10) and ex.above(0), partly=d.above(0) and ex.above(0)),
                d,
                r,
                detail=f"paper: L17H22 74.8 -> 53.4 (21 points); held-out drop minus random-head drop {ex.format(3)}; "
                f"n={d.n} held-out prompts",
                command=cmd,
            )
        )
        out.append(
            Claim(
                "most heads are harmless: random heads' mean drop is within 2 points of zero",
                intervals.verdict(r.low > -0.02 and r.high < 0.02, partly=r.below(0.05)),
                r,
                None,
                detail=f"paper: 976 of 1,024 heads change accuracy by <= 2%; selection sweep: "
                f"{a.sweep.fraction_harmless(0.02):.0%} of heads within 2 points on {a.n_sweep} prompts",
                command=cmd,
            )
        )
        spec = h.specific()
        best = None
        for hh in h.heads:
            for op in dict.fromkeys(h.ops):
                iv = h.drop(hh, op)
                if best is None or iv.low > best[2].low:
                    best = (hh, op, iv)
        ev = h.drop(spec[0][0], spec[0][1]) if spec else best[2]
        ctrl = h.random_drop(spec[0][1] if spec else best[1])
        out.append(
            Claim(
                "some heads are specific to one operation (drop interval above 0 on one operation only)",
                intervals.verdict(bool(spec), partly=best is not None and best[2].above(0)),
                ev,
                ctrl,
                detail=("specific: " + ", ".join(f"{head_label(*x)} on {o}" for x, o in spec))
                if spec
                else f"none; largest: {head_label(*best[0])} on {best[1]}",
                command=cmd,
            )
        )
    mk = a.mask_keep
    if mk.per_prompt:
        n = max(int(k.rsplit("_", 1)[1]) for k in mk.per_prompt if k != "base")
        small = min(int(k.rsplit("_", 1)[1]) for k in mk.per_prompt if k != "base")
        mask = intervals.mean(1.0 - mk.per_prompt[f"mask_{n}"].float())
        rnd = intervals.mean(1.0 - mk.per_prompt[f"random_mask_{n}"].float())
        diff = intervals.mean(mk.per_prompt[f"random_mask_{n}"].float() - mk.per_prompt[f"mask_{n}"].float())
        out.append(
            Claim(
                f"masking the top-{n} CNA neurons (ranked on the CNA prompts) removes most held-out correct answers, "
                f"far more than {n} random neurons",
                intervals.verdict(mask.above(0.5) and diff.above(0), partly=diff.above(0)),
                mask,
                rnd,
                detail=f"paper (N=99): 100% decrease; mask minus random {diff.format(3)}; n={mask.n}",
                command=cmd,
            )
        )
        keep = intervals.mean(1.0 - mk.per_prompt[f"keep_{small}"].float())
        keep_n = intervals.mean(1.0 - mk.per_prompt[f"keep_{n}"].float())
        out.append(
            Claim(
                f"keeping only the top CNA neurons of layers >= {a.head[0]} keeps most answers (small decrease)",
                intervals.verdict(keep_n.below(0.2), partly=keep_n.below(0.5)),
                keep_n,
                keep,
                detail=f"paper (Llama-7B, layers 17-31): keep-99 decrease 3.9%, keep-10 38.2%; measured: keep-{n}, "
                f"control column: keep-{small}",
                command=cmd,
            )
        )
    t = study.top10.per_prompt
    if "logprob_increase" in t and "random" in t:
        o = t["original"][:, 1]
        lpi = _prob_drop(o, t["logprob_increase"][:, 1])
        rnd = _prob_drop(o, t["random"][:, 1])
        out.append(
            Claim(
                f"zeroing the top-10 FFN neurons by log-probability increase ({study.settings.get('top10_layers')} "
                "layers) lowers the answer's probability far more than 10 random neurons",
                intervals.verdict(lpi.above(0.3) and lpi.low > rnd.high, partly=lpi.low > rnd.high),
                lpi,
                rnd,
                detail=f"paper Llama-7B: 21.5% -> 9.2% (57% drop); n={lpi.n} prompts",
                command=cmd,
            )
        )
        for other in ("logprob", "coefficient"):
            if other in t:
                diff = _prob_drop_difference(o, t["logprob_increase"][:, 1], t[other][:, 1])
                oth = _prob_drop(o, t[other][:, 1])
                out.append(
                    Claim(
                        f"log-probability increase picks more important top-10 neurons than {other}",
                        intervals.verdict(diff.above(0), partly=diff.estimate > 0),
                        diff,
                        oth,
                        detail=f"measured: extra relative probability drop over {other}; control: {other}'s own "
                        f"drop; paper Llama-7B: 9.2% vs {'10.8' if other == 'logprob' else '22.9'}% probability",
                        command=cmd,
                    )
                )
    if study.query is not None:
        qp = study.query.per_prompt
        o = qp["original"][:, 1]
        qd, rd = _prob_drop(o, qp["query_score"][:, 1]), _prob_drop(o, qp["random"][:, 1])
        out.append(
            Claim(
                f"zeroing the top-{study.query.k} query FFN neurons lowers the answer's probability far more than "
                "random neurons",
                intervals.verdict(qd.above(0.3) and qd.low > rd.high, partly=qd.low > rd.high),
                qd,
                rd,
                detail=f"paper (top-1000 query neurons): 95-96% probability drop, random 1.1%; n={qd.n}",
                command=cmd,
            )
        )
        ql = Interval.from_json(study.query_layers["value_minus_query"])
        out.append(
            Claim(
                "query neurons lie in shallower layers than value neurons",
                intervals.verdict(ql.above(0)),
                ql,
                None,
                detail="measured: mean layer of each prompt's top value neurons minus that of its top query neurons "
                f"(value {Interval.from_json(study.query_layers['value_mean_layer']).format(1)}, query "
                f"{Interval.from_json(study.query_layers['query_mean_layer']).format(1)})",
                command=cmd,
            )
        )
    if study.attn is not None:
        ap = study.attn.per_prompt
        o = ap["original"][:, 1]
        ad, rd = _prob_drop(o, ap["logprob_increase"][:, 1]), _prob_drop(o, ap["random"][:, 1])
        out.append(
            Claim(
                f"zeroing the top-{study.attn.k} attention neurons (last {study.settings.get('attn_layers')} layers) "
                "lowers the answer's probability more than random attention neurons",
                intervals.verdict(ad.above(0.3) and ad.low > rd.high, partly=ad.low > rd.high),
                ad,
                rd,
                detail=f"paper: top-200 attention + top-100 FFN value neurons: 99% probability drop, random 0.1%; n={ad.n}",
                command=cmd,
            )
        )
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
    iv = mask_keep_intervals(f.mask_keep)
    table = f.mask_keep.table.copy()
    if iv:
        for kind in ("mask", "keep", "random_mask"):
            table[f"{kind} decrease (95% CI)"] = [
                Interval.from_json(iv[str(int(n))][kind]).format(2, percent=True) for n in table["N"]
            ]
    r.table(
        table,
        caption=f"mask (zero the top-N CNA neurons) vs keep (zero every other neuron of layers >= {f.head[0]}) vs N "
        f"random neurons: accuracy decrease %, on {f.mask_keep.n_prompts} correct prompts",
    )


def _eval_table(ev: neurons.TopNeuronEval) -> pd.DataFrame:
    iv = eval_intervals(ev)
    t = ev.table.copy()
    t["prob drop (95% CI)"] = [Interval.from_json(iv[m]["prob_drop"]).format(2, percent=True) for m in t["method"]]
    t["MRR drop (95% CI)"] = [Interval.from_json(iv[m]["mrr_drop"]).format(2, percent=True) for m in t["method"]]
    return t


def report(study: CNAStudy):
    """The study as a :class:`codecircuits.report.Report`."""
    from ..report import Report

    r = Report(
        title=f"Arithmetic heads and comparative neuron analysis on {study.model}",
        subtitle="Yu & Ananiadou (EMNLP 2024): the paper's arithmetic task (four operations, two-digit operands) "
        "with held-out selection, random controls and bootstrap 95% intervals",
    )
    r.section("Key numbers")
    r.metrics(study.metrics())
    if study.claims:
        r.claims(list(study.claims))
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
