"""The closing-paren circuit found by edge attribution, and how faithful it is (MIB's CPR and CMD).

The task is Miller, Rai and Yao's closing-parenthesis prompt (:mod:`codecircuits.tasks.parens`): a clean prompt
with ``n_open`` open parens (default 3, ``print(str(str(123`` -> ``)))``) and a corrupted prompt of the same token
length whose answer closes a different number (default: a ``str(`` neutralised, ``print(str.str(123`` -> ``))``).
The metric of a pair is the logit difference, at the last position, between the clean and the corrupted answer.

Steps (:func:`run`):

1. pairs of the train numbers (``n_pairs``) and of the held-out test numbers (``n_test_pairs``);
2. every edge scored on the train pairs (:func:`codecircuits.circuits.edge_scores`, default EAP-IG over the input
   embeddings, 5 steps) with the loss ``-logit difference``, as EAP-IG and MIB score, so that a positive score
   means the edge supports the clean answer;
3. MIB's two faithfulness curves on the held-out pairs
   (:func:`~codecircuits.circuits.faithfulness.faithfulness_curves`): circuits of the top edges by signed score
   (CPR, the area under the curve: higher is better) and by ``|score|`` (CMD, the area between the curve and 1:
   lower is better), beside ``n_random`` random circuits of each size;
4. the circuits of the top ``|score|`` edges at the ``drawn`` sizes (1, 5, 10% of edges): their faithfulness with
   a bootstrap interval over the held-out pairs, drawn as graphs in the report;
5. the heads of those circuits beside the paren-promoting and counting heads of the parens study
   (:mod:`codecircuits.heads`), found on prompts of the train numbers;
6. the claims: CPR above and CMD below every random circuit's, each with a bootstrap interval over the held-out
   pairs (MIB reports that attribution methods such as EAP-IG score best).

    >>> study = run(model)                 # CircuitConfig() defaults
    >>> study.cpr, study.cmd, study.to_json()["random"]
    >>> study.save("reports/circuit")      # report.html + results.json

The pieces are public: :func:`build_pairs` (the pairs), :func:`codecircuits.core.metrics.logit_diff` of
``pairs.answer_ids()`` (the metric), :func:`codecircuits.heads.find_paren_heads` (the heads).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .. import circuits as cc
from .. import distributed, intervals
from .. import heads as heads_mod
from ..circuits import faithfulness as ev
from ..core.metrics import logit_diff
from ..core.sites import head_label
from ..errors import InputError
from ..tasks import parens as task
from .common import ClaimSpec, Study, check_config, configure, json_safe, model_name, result, setting, timed

#: MIB's circuit sizes (percent of edges), the faithfulness curve's default points
PERCENTAGES = tuple(float(p) for p in ev.MIB_PERCENTAGES)


@dataclass(frozen=True)
class CircuitConfig:
    """Settings of the study (defaults keep smollm2-135m to a few minutes on 2 CPU cores)."""

    n_open: int = setting(3, "open parens of the clean prompts (the answer closes them all)")
    counterfactual: str = setting(
        "fewer", "corrupted prompts: fewer (a str( neutralised: one paren fewer) or extra (a ( made ((: one more)"
    )
    n_pairs: int = setting(8, "pairs of train numbers whose edges are scored")
    n_test_pairs: int = setting(8, "pairs of held-out test numbers the faithfulness is measured on")
    method: str = setting("EAP-IG-inputs", "edge attribution method: EAP, EAP-IG-inputs, EAP-IG-activations, ...")
    steps: int = setting(5, "integration steps of the EAP-IG methods")
    ablation: str = setting("patch", "what a removed edge carries: patch (corrupted), zero or mean")
    percentages: tuple[float, ...] = setting(
        PERCENTAGES, "circuit sizes of the faithfulness curve, in percent of the edges"
    )
    drawn: tuple[float, ...] = setting((1.0, 5.0, 10.0), "circuit sizes drawn as graphs, in percent of the edges")
    n_random: int = setting(3, "random circuits of each size (the baseline)")
    n_bootstrap: int = setting(1000, "bootstrap resamples of the held-out pairs for faithfulness intervals")
    head_counts: tuple[int, ...] = setting((1, 2, 3, 4), "paren counts of the prompts that find the paren heads")
    head_prompts: int = setting(8, "train prompts per count for the paren-promoting and counting heads")
    top_heads: int = setting(5, "paren-promoting and counting heads compared with the circuit")
    promoter_ratio: float = setting(0.8, "a head promotes a count when its logit is >= ratio x its largest")
    n_numbers: int = setting(500, "numbers drawn for the prompts (the first 70 percent train, the rest test)")
    seed: int = setting(20, "seed of the dataset (the paper's)")
    random_seed: int = setting(0, "seed of the random circuits and of the bootstrap")
    max_edges_drawn: int = setting(2500, "edges drawn per circuit graph at most (the largest |score| first)")
    budget: str | None = setting(
        None, "memory per chunk of examples, e.g. 2GB (none: the library's default)", convert=str
    )

    def __post_init__(self):
        check_config(self, at_least={1: "n_open n_pairs n_test_pairs steps head_prompts top_heads n_bootstrap",
                                     0: "n_random"},
                     choices={"counterfactual": ("fewer", "extra"), "method": cc.METHODS, "ablation": ev.ABLATIONS})
        if self.counterfactual == "fewer" and self.n_open < 2:
            raise InputError("counterfactual='fewer' needs n_open >= 2 (a str( call to neutralise).")
        for name in ("percentages", "drawn"):
            vals = getattr(self, name)
            if not vals or any(not 0 < p <= 100 for p in vals):
                raise InputError(f"CircuitConfig.{name} must be percentages in (0, 100], got {vals}.")
        if list(self.percentages) != sorted(set(self.percentages)) or len(self.percentages) < 2:
            raise InputError(f"percentages must be at least two increasing sizes, got {self.percentages}.")
        if len(set(self.head_counts)) < 2 or min(self.head_counts) < 1:
            raise InputError(f"head_counts must be at least two paren counts >= 1, got {self.head_counts}.")

    @classmethod
    def tiny(cls, **kw) -> CircuitConfig:
        """Small sizes for tests and smoke runs on tiny models (the registry's smoke settings)."""
        from .registry import get

        return cls(**{**get("circuit").smoke, **kw})


def _key(p: float) -> str:
    return f"{p:g}".replace(".", "_") + "pct"


@dataclass(frozen=True)
class CircuitStudy(Study):
    """Every result of a study run; :meth:`to_json` has every number, :meth:`report` the HTML."""

    model_name: str = result(key="model")
    config: CircuitConfig = result()
    graph: cc.Graph = result(json=lambda g: {**g.to_dict(), "n_edges": g.n_edges})
    scores: cc.EdgeScores = result(json=lambda sc: {
        "method": sc.method, "steps": sc.steps, "n_examples": sc.n_examples,
        "metric": "loss = -(logit[clean answer] - logit[corrupted answer]) at the last position",
        "top_edges": [{"edge": e, "score": v} for e, v in sc.top_edges(30)],
        "node_scores": dict(zip(sc.graph.source_names, sc.node_scores.tolist()))})
    curves: dict = result()  # "signed" / "absolute" -> FaithfulnessCurve
    circuits: dict = result(json=None)  # percent -> Circuit (top |score| edges)
    # percent -> {faithfulness, interval, random, heads, shared, ...}
    drawn: dict = result(key="circuits", json=lambda d: {_key(p): v for p, v in d.items()})
    pairs: dict = result()  # "train" / "test" -> list of pair dicts
    accuracy: dict = result()  # "train" / "test" -> share of clean prompts answered correctly
    paren_heads: dict = result()  # "promoters" / "counting" -> [labels], with their numbers
    timings: dict = result(default_factory=dict)
    claims: list = result(default_factory=list)  # intervals.Claim rows: CPR and CMD against random circuits
    JSON_DIGITS = None

    # ------------------------------------------------------------------------------------------ headlines
    @property
    def cpr(self) -> float:
        return ev.cpr(self.curves)

    @property
    def cmd(self) -> float:
        return ev.cmd(self.curves)

    @property
    def random_cpr(self) -> list[float]:
        return list(self.curves["signed"].random_area)

    @property
    def random_cmd(self) -> list[float]:
        return list(self.curves["absolute"].random_area_from_1)

    @property
    def caveats(self) -> list[str]:
        out = [
            f"the faithfulness is measured on {len(self.pairs['test'])} held-out pairs (edges were scored on "
            f"{len(self.pairs['train'])} others); its bootstrap intervals resample these pairs, not the scored ones",
            "edge scores are a linear (integrated-gradient) estimate of each edge's effect, not the exact effect of "
            "removing it; the curves measure the circuits they select exactly",
        ]
        if self.accuracy["test"] < 0.5:
            out.append(
                f"the model answers only {self.accuracy['test']:.0%} of the held-out clean prompts correctly: the "
                "circuit is found for a behaviour the model mostly lacks"
            )
        if self.curves["signed"].full - self.curves["signed"].empty <= 0:
            out.append("the full model's logit difference is not above the empty circuit's: faithfulness is undefined")
        return out

    def metrics(self) -> dict:
        """The report's metric cards (also ``results.json``'s ``metrics``)."""

        def mean(v):
            return sum(v) / len(v) if v else None

        m = {
            "cpr": self.cpr,
            "random_cpr_mean": mean(self.random_cpr),
            "random_cpr_max": max(self.random_cpr, default=None),
            "cmd": self.cmd,
            "random_cmd_mean": mean(self.random_cmd),
            "random_cmd_min": min(self.random_cmd, default=None),
        }
        for p, d in self.drawn.items():
            k = _key(p)
            m[f"faithfulness_{k}"] = d["faithfulness"]
            m[f"faithfulness_{k}_low"] = d["interval"][0]
            m[f"faithfulness_{k}_high"] = d["interval"][1]
            m[f"random_faithfulness_{k}_max"] = max(d["random"]) if d["random"] else None
        m["clean_logit_diff"] = self.curves["signed"].full
        m["empty_logit_diff"] = self.curves["signed"].empty
        m["train_pairs"] = len(self.pairs["train"])
        m["test_pairs"] = len(self.pairs["test"])
        m["edges"] = self.graph.n_edges
        m["wall_s"] = self.timings.get("total_s")
        return json_safe(m, digits=None)

    def json_extra(self) -> dict:
        return {"caveats": self.caveats, "cpr": self.cpr, "cmd": self.cmd, "wall_s": self.timings.get("total_s"),
                "random": {"cpr": self.random_cpr, "cmd": self.random_cmd}}

    def summary_text(self) -> str:
        """What ``codecircuits circuit`` prints: CPR and CMD beside random circuits, then each drawn circuit."""
        m = self.metrics()
        lines = [
            f"CPR {_f3(m['cpr'])}  (random circuits: mean {_f3(m['random_cpr_mean'])}, largest "
            f"{_f3(m['random_cpr_max'])})",
            f"CMD {_f3(m['cmd'])}  (random circuits: mean {_f3(m['random_cmd_mean'])}, smallest "
            f"{_f3(m['random_cmd_min'])})",
        ]
        for p, d in self.drawn.items():
            lo, hi = d["interval"]
            ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None else ""
            shared = d["shared_promoters"] + [h for h in d["shared_counting"] if h not in d["shared_promoters"]]
            lines.append(
                f"{p:g}% of edges: {d['n_edges']} edges, faithfulness {d['faithfulness']:.3f}{ci}, shared heads: "
                f"{' '.join(shared) or '-'}"
            )
        return "\n".join(lines)

    def report(self, model=None):
        return build_report(self)


# ----------------------------------------------------------------------------------------------------------------
# data


def _pairs_of(model, ds: task.ParensDataset, cfg: CircuitConfig, n: int, split: str) -> task.ParenPairs:
    """``n`` same-length counterfactual pairs of ``ds``'s prompts (one token length: the most common)."""
    found = task.pairs(model, ds, strategy=cfg.counterfactual, on_missing="skip") if len(ds) else ()
    found = [p for p in found if p.corrupted_n_open != p.n_open]
    if not found:
        other = "extra" if cfg.counterfactual == "fewer" else "fewer"
        raise InputError(
            f"No {cfg.counterfactual!r} counterfactual with a single-token answer for {cfg.n_open} open parens "
            f"({split} numbers) under this tokenizer: try counterfactual='{other}' or another n_open."
        )
    return task.ParenPairs(tuple(found), cfg.counterfactual).one_length(model, n)


def build_pairs(model, cfg: CircuitConfig) -> dict[str, task.ParenPairs]:
    """Train and held-out pairs (train and test numbers of the paren dataset), each of one token length:
    ``pairs["train"].tokens(model)`` are their clean and corrupted tokens, ``.answer_ids()`` their answers (the
    study's metric is :func:`codecircuits.core.metrics.logit_diff` of them)."""
    ds = task.dataset(model, n_values=(cfg.n_open - 1,), n_numbers=cfg.n_numbers, seed=cfg.seed)
    out = {}
    for split, n in (("train", cfg.n_pairs), ("test", cfg.n_test_pairs)):
        sub = ds.select(split=split, limit=min(4 * n, 900))
        out[split] = _pairs_of(model, sub, cfg, n, split)
    return out


@torch.no_grad()
def _accuracy(model, clean_t, pairs: task.ParenPairs) -> float:
    pred = model(clean_t)[:, -1].argmax(-1).cpu()
    return float((pred == pairs.answer_ids()[0]).float().mean())


@dataclass(frozen=True)
class _Data:
    pairs: dict[str, task.ParenPairs]
    tokens: dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (clean, corrupted)
    accuracy: dict[str, float]  # split -> share of clean prompts answered correctly

    def rows(self, split: str) -> list[dict]:
        return [
            {
                "clean": p.clean,
                "corrupted": p.corrupted,
                "answer": task.label_text(p.n_open),
                "corrupted_answer": task.label_text(p.corrupted_n_open),
                "kind": p.kind,
                "position": p.position,
            }
            for p in self.pairs[split]
        ]


def _prepare(model, cfg: CircuitConfig) -> _Data:
    pairs = build_pairs(model, cfg)
    tokens = {split: pairs[split].tokens(model) for split in ("train", "test")}
    return _Data(pairs, tokens, {split: _accuracy(model, tokens[split][0], pairs[split]) for split in tokens})


# ----------------------------------------------------------------------------------------------------------------
# paren-promoting and counting heads (the parens study's, on train prompts)


def _paren_heads(model, cfg: CircuitConfig) -> dict:
    """The top paren-promoting heads of ``n_open`` parens (by F1) and the top counting heads, found on up to
    ``head_prompts`` train prompts of one token length per count (:func:`codecircuits.heads.find_paren_heads`)."""
    counts = tuple(sorted(set(cfg.head_counts) | {cfg.n_open}))
    ds = task.dataset(model, n_values=tuple(k - 1 for k in counts), n_numbers=cfg.n_numbers, seed=cfg.seed)
    ds = ds.select(split="train").one_length(model, cfg.head_prompts)
    groups = [(toks, k) for k, (_, toks) in ds.groups(model).items()]
    found = heads_mod.find_paren_heads(model, groups, [ds.label_ids[k] for k in counts], ratio=cfg.promoter_ratio)
    ci = counts.index(cfg.n_open)
    prom = found.promoters.heads(cfg.n_open, cfg.top_heads)
    cnt = found.counting.heads(cfg.top_heads)
    return {
        "counts": list(counts),
        "prompts_per_count": [int(g[0].shape[0]) for g in groups],
        "split": "train",
        "promoters": [head_label(a, b) for a, b in prom],
        "promoters_f1": [float(found.promoters.f1[ci, a, b]) for a, b in prom],
        "promoters_mean_logit": [float(found.promoters.mean_logit[ci, a, b]) for a, b in prom],
        "counting": [head_label(a, b) for a, b in cnt],
        "counting_attn_corr": [float(found.counting.attn_corr[a, b]) for a, b in cnt],
        "counting_score": [float(found.counting.score()[a, b]) for a, b in cnt],
    }


# ----------------------------------------------------------------------------------------------------------------
# the run


def _drawn_values(model, cfg: CircuitConfig, data: _Data, scores, curves, circuits: dict, metric, progress):
    """``[2 + n_drawn, n_test]`` per-pair metric of the full circuit, the empty one and each drawn circuit: the
    absolute curve's own runs where it has the drawn sizes, else one evaluation of those circuits."""
    absolute = curves["absolute"]
    at = {q: i for i, q in enumerate(absolute.percentages)}
    if all(p in at for p in circuits):  # the same circuits as the absolute curve's points: no second run
        rows = [absolute.full_per_example, absolute.empty_per_example]
        return torch.tensor(rows + [absolute.per_example[at[p]] for p in circuits])
    graph = scores.graph
    full = cc.Circuit(graph, graph.valid.clone())
    empty = cc.Circuit(graph, torch.zeros_like(graph.valid))
    return ev.circuit_metric(
        model, *data.tokens["test"], metric, [full, empty, *circuits.values()], graph=graph, ablation=cfg.ablation,
        budget=cfg.budget, progress=progress,
    )


def _drawn_entry(cfg, p: float, circ, scores, per_pair, faithfulness, interval, curves, paren_heads) -> dict:
    """One drawn circuit: its size, faithfulness with its interval, the random circuits of its size, its nodes,
    the heads it shares with the parens study's and its strongest edges."""
    graph, absolute = scores.graph, curves["absolute"]
    j = next((k for k, q in enumerate(absolute.percentages) if abs(q - p) < 1e-9), None)
    heads = circ.heads()  # the heads whose output the circuit uses
    shared = {kind: [h for h in paren_heads[kind] if h in heads] for kind in ("promoters", "counting")}
    top = sorted(
        ((circ.graph.edge_name(s, d), float(scores.edge_matrix[s, d])) for s, d in circ.edges.nonzero().tolist()),
        key=lambda t: -abs(t[1]),
    )
    lo, hi = (None, None) if math.isnan(interval.low) else (interval.low, interval.high)  # no finite resample
    return {
        "percent": p,
        "requested_edges": int(p / 100 * int(graph.valid.sum())),
        "n_edges": circ.n_edges,
        "faithfulness": faithfulness,
        "interval": [lo, hi],
        "interval_level": 0.95,
        "random": [r[j] for r in absolute.random] if j is not None else [],
        "metric_per_pair": per_pair.tolist(),
        "nodes": circ.node_names(),
        "heads": heads,
        "mlps": circ.mlps(),
        "shared_promoters": shared["promoters"],
        "shared_counting": shared["counting"],
        # how many of the top heads of one kind a random set of as many heads holds on average
        "chance_shared": len(heads) * cfg.top_heads / (graph.n_layers * graph.n_heads),
        "top_edges": [{"edge": e, "score": s} for e, s in top[:40]],
    }


def _drawn_circuits(model, cfg, data: _Data, scores, curves, metric, progress):
    """The circuits of the top ``|score|`` edges at the ``drawn`` sizes (MIB's sizes: ``int(p%)`` of the edges,
    pruned), their per-pair metric (:func:`_drawn_values`) and each one's faithfulness interval over the held-out
    pairs."""
    total = int(scores.graph.valid.sum())
    circuits = {float(p): scores.top_n(int(float(p) / 100 * total), absolute=True) for p in cfg.drawn}
    values = _drawn_values(model, cfg, data, scores, curves, circuits, metric, progress)
    boot = intervals.statistic(
        ev.faithfulness_stat, values.T, n_resamples=cfg.n_bootstrap, seed=cfg.random_seed, dtype=None
    )
    return circuits, values, boot


def run(
    model, config: CircuitConfig | None = None, *, progress: bool = True, workers=None, **overrides
) -> CircuitStudy:
    """Run the study on ``model`` (see the module docstring); returns a :class:`CircuitStudy`.

    ``config`` defaults to :class:`CircuitConfig`; keyword ``overrides`` change single settings. A model whose
    blocks edge attribution cannot split (post-norm, CodeGen's bridge) is refused with an
    :class:`~codecircuits.errors.UnsupportedArchitectureError` naming the block, before any work.

    ``workers`` (a number, a Ray address or a :class:`~codecircuits.distributed.Workers`) shards the edge scores
    by train pair over workers (:mod:`codecircuits.distributed.edges`); the rest runs here.
    """
    cfg = configure(CircuitConfig, config, overrides)
    cc.check_supported(model)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    with timed(timings, "data_s"):
        data = _prepare(model, cfg)
    with timed(timings, "scores_s"):
        scores = distributed.run(
            cc.edge_scores, model, *data.tokens["train"],
            logit_diff(*data.pairs["train"].answer_ids(), loss=True, rows=workers is not None), method=cfg.method,
            steps=cfg.steps, budget=cfg.budget, progress=progress, workers=workers,
        )
    metric = logit_diff(*data.pairs["test"].answer_ids())
    with timed(timings, "curves_s"):
        curves = ev.faithfulness_curves(
            model, scores, *data.tokens["test"], metric, percentages=cfg.percentages, ablation=cfg.ablation,
            n_random=cfg.n_random, seed=cfg.random_seed, budget=cfg.budget, progress=progress,
        )
    with timed(timings, "drawn_s"):
        circuits, values, boot = _drawn_circuits(model, cfg, data, scores, curves, metric, progress)
    with timed(timings, "heads_s"):
        paren_heads = _paren_heads(model, cfg)
    span = float(values[0].mean() - values[1].mean())
    drawn = {}
    for i, (p, circ) in enumerate(tqdm(circuits.items(), disable=not progress, desc="circuit: summaries")):
        f = (float(values[2 + i].mean() - values[1].mean()) / span) if span else float("nan")
        drawn[p] = _drawn_entry(cfg, p, circ, scores, values[2 + i], f, boot[i], curves, paren_heads)
    timings["total_s"] = time.perf_counter() - t_all
    return CircuitStudy(
        model_name=model_name(model),
        config=cfg,
        graph=scores.graph,
        scores=scores,
        curves=curves,
        circuits=circuits,
        drawn=drawn,
        pairs={
            "train": data.rows("train"),
            "test": data.rows("test"),
            "test_full_logit_diff": values[0].tolist(),
            "test_empty_logit_diff": values[1].tolist(),
        },
        accuracy=data.accuracy,
        paren_heads=paren_heads,
        timings=timings,
        claims=_claims(cfg, curves),
    )


# ----------------------------------------------------------------------------------------------------------------
# the claims: the circuits against random circuits of the same sizes, CPR and CMD with intervals over the pairs

MIB = "MIB (Mueller et al. 2025), circuit-localization track"


CLAIM = ClaimSpec("edge attribution's circuits beat random circuits on {name} ({better} is better)",
                  "reproduced: the interval lies {side} every random circuit's {name}; partly: its estimate does",
                  "attribution (EAP-IG) and mask-optimisation methods score best", MIB)


def _claims(cfg: CircuitConfig, curves: dict) -> list[intervals.Claim]:
    out = []
    for name, curve, from_1 in (("CPR", curves["signed"], False), ("CMD", curves["absolute"], True)):
        iv = curve.area_interval(from_1, n_resamples=cfg.n_bootstrap, seed=cfg.random_seed)
        rand = curve.random_area_from_1 if from_1 else curve.random_area
        if not rand:
            beats = near = False
        elif from_1:
            beats, near = iv.high < min(rand), iv.estimate < min(rand)
        else:
            beats, near = iv.low > max(rand), iv.estimate > max(rand)
        out.append(CLAIM(
            beats, near, iv, None,
            f"{name} of the {cfg.method} circuits (ranked by {'|score|' if from_1 else 'signed score'}) on {iv.n} "
            f"held-out pairs, interval over the pairs; random circuits of the same sizes ({cfg.n_random} per size): "
            f"{_range(rand)}", name=name, better="lower" if from_1 else "higher", side="below" if from_1 else "above"))
    return out


# ----------------------------------------------------------------------------------------------------------------
# the HTML report


def _pct(p: float) -> str:
    return f"{p:g}%"


def _f3(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def build_report(s: CircuitStudy):
    """The study's self-contained HTML report (see :class:`codecircuits.report.Report`): the claims and key
    numbers, then the task, the faithfulness curves, the drawn circuits and the heads they share with the parens
    study."""
    cfg = s.config
    r = s.open_report(
        f"The closing-paren circuit of {s.model_name}",
        f"edge attribution ({s.scores.method}) on {len(s.pairs['train'])} pairs, faithfulness (MIB's CPR and CMD) on "
        f"{len(s.pairs['test'])} held-out pairs",
        meta={"n_open": cfg.n_open, "counterfactual": cfg.counterfactual, "ablation": cfg.ablation},
        labels=_labels(s),
        claims_text="The circuits against random circuits of the same sizes; each interval is a 95% bootstrap "
        f"interval over the held-out pairs ({cfg.n_bootstrap} resamples), the circuits fixed.",
        key_text="CPR: the area under the faithfulness curve of the circuits of the highest signed scores (higher is "
        "better); CMD: the area between 1 and the curve of the highest |scores| (lower is better); beside random "
        "circuits of the same sizes. Faithfulness 1 = the circuit alone keeps the full model's logit difference.",
    )
    for caveat in s.caveats:
        r.text("Caveat: " + caveat + ".")
    _report_task(r, s)
    _report_faithfulness(r, s)
    _report_circuits(r, s)
    _report_heads(r, s)
    r.table([{"step": k, "seconds": v} for k, v in s.timings.items()], caption="time per step")
    return s.close_report(r, _labels(s))


def _report_task(r, s: CircuitStudy) -> None:
    p0 = s.pairs["train"][0]
    r.section(
        "Task and pairs",
        text=f"Clean prompts have {s.config.n_open} open parens and the answer {p0['answer']!r}; each corrupted "
        f"prompt has the same token length and the answer {p0['corrupted_answer']!r}. The metric of a pair is "
        "logit(clean answer) - logit(corrupted answer) at the last position. Edges are scored on pairs of the train "
        "numbers and every faithfulness number is measured on pairs of the held-out test numbers.",
    )
    r.code(p0["clean"] + p0["answer"], title="a clean prompt and its answer")
    r.code(p0["corrupted"] + p0["corrupted_answer"], title="its corrupted prompt and answer")
    r.table(
        [
            {"split": "train", "pairs": len(s.pairs["train"]), "clean accuracy": s.accuracy["train"]},
            {"split": "test (held out)", "pairs": len(s.pairs["test"]), "clean accuracy": s.accuracy["test"]},
        ],
        caption="pairs per split and the share of clean prompts the model answers correctly",
    )
    r.table(s.pairs["test"], caption="held-out pairs")


def _report_faithfulness(r, s: CircuitStudy) -> None:
    cfg = s.config
    sig, ab = s.curves["signed"], s.curves["absolute"]
    rand = torch.tensor(sig.random) if sig.random else None
    has_random = rand is not None and rand.numel() > 0
    series = {"by signed score (CPR)": sig.faithfulness, "by |score| (CMD)": ab.faithfulness}
    bands = None
    if has_random:
        series["random (mean)"] = rand.nanmean(0).tolist()
        bands = {
            f"random circuits (range of {rand.shape[0]})": (rand.min(0).values.tolist(), rand.max(0).values.tolist())
        }
    removed = "patched from the corrupted run" if cfg.ablation == "patch" else cfg.ablation + "-ablated"
    r.section(
        "Faithfulness",
        text="Faithfulness of a circuit = (m(circuit) - m(empty)) / (m(full) - m(empty)), m the mean metric on the "
        f"held-out pairs, every edge outside the circuit {removed}. "
        f"m(full) = {sig.full:.3f}, m(empty) = {sig.empty:.3f}. CPR is the area under the curve of circuits of the "
        f"highest signed scores (higher is better); CMD the area between 1 and the curve of the highest |scores| "
        f"(lower is better). Random circuits of the same sizes are the baseline. CPR {s.cpr:.3f} (random "
        f"{_range(s.random_cpr)}); CMD {s.cmd:.3f} (random {_range(s.random_cmd)}).",
    )
    r.line_chart(
        [_pct(p) for p in sig.percentages], series, bands=bands, title="faithfulness by circuit size",
        x_title="circuit size (% of edges)", y_title="faithfulness",
    )
    r.table(
        [
            {
                "size": _pct(p),
                "edges (signed)": sig.n_edges[i],
                "faithfulness (signed)": sig.faithfulness[i],
                "edges (|score|)": ab.n_edges[i],
                "faithfulness (|score|)": ab.faithfulness[i],
                **(
                    {
                        "random mean": float(rand[:, i].nanmean()),
                        "random min": float(rand[:, i].min()),
                        "random max": float(rand[:, i].max()),
                    }
                    if has_random
                    else {}
                ),
            }
            for i, p in enumerate(sig.percentages)
        ],
        caption="the curves' points (edges after pruning)",
    )


def _marks(s: CircuitStudy) -> dict:
    ph = s.paren_heads
    marks = {h: "paren-promoting head" for h in ph["promoters"]}
    for h in ph["counting"]:
        marks[h] = "counting head" if h not in marks else "paren-promoting and counting head"
    return marks


def _report_circuits(r, s: CircuitStudy) -> None:
    from ..report.circuit_graph import circuit_graph

    grouped = s.graph.grouped and s.graph.group_size > 1
    r.section(
        "The circuits",
        text="The circuits of the top |score| edges at "
        + ", ".join(_pct(p) for p in s.drawn)
        + " of the graph's edges, pruned to what connects the input to the logits. Nodes: the input at the bottom, "
        "heads (circles, by head index) and MLPs (boxes, right) by layer upward, the logits at the top; only "
        "layers with a node get a row. Edge width follows |score|, red edges support the clean answer (positive "
        "score), blue ones oppose it; query edges are solid, key edges dashed, value edges dotted"
        + (", and key/value edges end at the small square of the key/value group they share" if grouped else "")
        + ". Outlined heads are the parens study's paren-promoting and counting heads.",
    )
    marks = _marks(s)
    for p, d in s.drawn.items():
        lo, hi = d["interval"]
        ci = f" (95% bootstrap interval {lo:.2f} to {hi:.2f})" if lo is not None else ""
        rnd = f"; random circuits of this size: {_range(d['random'])}" if d["random"] else ""
        r.add(
            circuit_graph(
                s.circuits[p], s.scores, marks=marks, max_edges=s.config.max_edges_drawn,
                title=f"{_pct(p)} of edges: {d['n_edges']} edges, {len(d['heads'])} heads, {len(d['mlps'])} MLPs",
                caption=f"faithfulness {d['faithfulness']:.3f}{ci}{rnd}",
            )
        )
        if d["top_edges"]:
            r.table(d["top_edges"][:15], caption=f"{_pct(p)}: the strongest edges")
        else:
            r.text(f"At {_pct(p)} no edge survives pruning: none of the top edges connects the input to the logits.")


def _report_heads(r, s: CircuitStudy) -> None:
    cfg, ph = s.config, s.paren_heads
    r.section(
        "Shared heads",
        text=f"The circuit's heads beside the top {cfg.top_heads} paren-promoting heads of {cfg.n_open} parens (by "
        f"F1, codecircuits.heads.paren_promoters) and the top {cfg.top_heads} counting heads "
        "(codecircuits.heads.counting_heads), found on prompts of the train numbers with "
        + ", ".join(map(str, ph["counts"]))
        + " open parens. A head is shared when the circuit uses its output (an edge leaves it); a head that is in "
        "the circuit only because an edge reads into its key/value group does not count. 'by chance' is how many "
        "of the top heads of one kind a random set of as many heads holds on average.",
    )
    r.table(
        [
            {
                "size": _pct(p),
                "heads in circuit (output used)": len(d["heads"]),
                "shared paren-promoting": " ".join(d["shared_promoters"]) or "—",
                "shared counting": " ".join(d["shared_counting"]) or "—",
                "by chance (each kind)": d["chance_shared"],
            }
            for p, d in s.drawn.items()
        ],
        caption="heads the circuit shares with the parens study's heads",
    )
    r.table(
        [
            {"kind": "paren-promoting", "head": h, "F1": f, "mean relative logit": m}
            for h, f, m in zip(ph["promoters"], ph["promoters_f1"], ph["promoters_mean_logit"])
        ]
        + [
            {"kind": "counting", "head": h, "attention-count correlation": c, "score": sc}
            for h, c, sc in zip(ph["counting"], ph["counting_attn_corr"], ph["counting_score"])
        ],
        caption="the parens study's heads (train prompts)",
    )
    r.table(
        [{"edge": e["edge"], "score": e["score"]} for e in s.to_json()["scores"]["top_edges"]],
        caption="the 30 edges of largest |score| (scored on the train pairs)",
    )
def _range(v: list[float]) -> str:
    if not v:
        return "none"
    return f"mean {sum(v) / len(v):.3f}, {min(v):.3f} to {max(v):.3f}"


def _labels(s: CircuitStudy) -> dict:
    out = {"cpr": "CPR (higher is better)", "random_cpr_mean": "CPR of random circuits, mean",
           "cmd": "CMD (lower is better)", "random_cmd_mean": "CMD of random circuits, mean"}
    return out | {f"faithfulness_{_key(p)}": f"faithfulness at {_pct(p)} of edges" for p in s.drawn}
