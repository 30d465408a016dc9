"""Feed-forward key-value memories in code models (Haider et al. 2024, after Geva et al. 2021), end to end.

RQ1 what keys store: a streaming trigger-example scan (:mod:`codecircuits.memories`), the tokens each value
promotes, and regex concept scores with the shallow / semantic distribution per layer
(:mod:`codecircuits.memories.concepts`);
RQ2 concept editing by masking the concept's keys, next to a random-key control;
RQ3-RQ4 layer agreement of ``mlp_out`` and residuals with the final prediction, by context length
(:mod:`codecircuits.memories.agreement`).

>>> study = run(model, MemoriesConfig(corpus="stdlib:test", max_tokens=6000))
>>> html, js = study.save("reports/memories", model=model)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import distributed, intervals
from .. import memories as mem
from ..errors import InputError
from ..memories import agreement as ag
from ..memories import concepts as cc
from ..memories.languages import corpus_language
from .common import Study, claim_specs, configure, result, setting, timed

TAUS = (0.3, 0.5, 0.7)  # thresholds at which the per-layer semantic share is also reported

PAPER = {
    "rq1": "lower layers store shallow patterns (keywords, n-grams), higher layers more abstract, semantic ones; "
    "many keys are polysemantic",
    "rq2": "masking a concept's keys drops the model's performance on that concept much more than on the rest",
    "rq3": "early layers rarely agree with the final prediction; agreement rises sharply in the later layers",
    "rq4": "with small contexts earlier layers already agree with the final prediction; larger contexts need "
    "the later layers",
}


@dataclass(frozen=True)
class MemoriesConfig:
    """Settings of the study; the command line's options are generated from these fields."""

    corpus: object = setting("stdlib:test", "corpus to scan: stdlib[:split], humaneval or a directory")
    eval_corpus: object = setting("stdlib:validation", "corpus for the masking edits and agreement")
    max_tokens: int | None = setting(6000, "token budget of the scan (0: the whole corpus)", convert="zero_is_none")
    window: int = setting(128, "chunk length in tokens, BOS included")
    order: str = setting(
        "sample",
        "which chunks the scan and the edits' evaluation take: 'sample' (a seeded uniform sample of the corpus's "
        "chunks) or 'breadth' (the first chunk of every file, then the second, ...: file headers at small budgets)",
    )
    seed: int = setting(0, "seed of the chunk sample")
    k: int = setting(20, "trigger examples kept per key", flag="--top-k")
    concepts: object = setting(None, "concepts to score (None: the built-in set)", cli=False)
    tau: float = setting(0.5, "share of a key's triggers that must match a concept")
    min_lift: float = setting(2.0, "score / base rate needed to label a key")
    edit: tuple[str, ...] | None = setting(None, "comma-separated concepts to mask (none: chosen from the scores)", convert="csv")
    n_edit_per_kind: int = setting(2, "concepts masked per kind when --edit is not given")
    edit_max_keys: int | None = setting(300, "at most this many keys masked per concept")
    edit_tokens: int = setting(512, "evaluation tokens for the edits (0 skips them)")
    edit_at: str = setting(
        "trigger",
        "which predictions count as the concept's: 'trigger' (made at a concept token, as keys are labelled by "
        "their trigger token) or 'target' (of a concept token)",
    )
    edit_controls: int = setting(
        5, "random-key control draws per edit, each matched on layer and on activation magnitude (RMS)"
    )
    agreement_docs: int = setting(
        16, "documents in every context bucket of the layer agreement, the same ones in each (0 skips it)"
    )
    agreement_positions: int = setting(3, "predictions drawn per document and context bucket")
    agreement_context: int = setting(1024, "longest context of the layer agreement, in tokens")
    kv_keys: int | None = setting(128, "random keys per layer for key-value agreement (0: all)", convert="zero_is_none")
    batch_size: int = setting(8, "chunks per forward of the scan")


@dataclass(frozen=True)
class MemoriesStudy(Study):
    """Everything the study measured on one model, with the settings that produced it."""

    model: str
    scan: mem.TriggerScan = result(json=lambda s: {
        "corpus": s.corpus, "chunks": s.chunks_done, "tokens": s.tokens_done, "k": s.k, "window": s.settings["window"],
        "rank_by": s.settings["rank_by"]})
    chunked: mem.ChunkedCorpus = result(repr=False, json=None)
    values: mem.ValueTokens = result(repr=False, json=None)
    scores: cc.ConceptScores = result(repr=False, key="concepts", json=lambda c: c.to_dataframe().to_dict("records"))
    distribution: pd.DataFrame = result(repr=False, key="layer_distribution")
    kv_agreement: pd.DataFrame = result(repr=False, key="key_value_agreement")
    edits: tuple[cc.ConceptEdit, ...] = result((), json=None)
    agreement: ag.LayerAgreement | None = result(None, json=None)
    showcase: tuple = result((), json=None)  # (concept, layer, neuron, score) of the keys shown with their triggers
    showcase_values: mem.ValueTokens | None = result(None, repr=False, json=None)
    settings: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    config: MemoriesConfig | None = result(None, json=None)  # its settings are in ``settings``

    def promotes(self, layer: int, neuron: int) -> list[str]:
        """The tokens key (``layer``, ``neuron``) promotes, in the sign of its strongest trigger's coefficient."""
        li = self.scan.layers.index(layer)
        sign = 1 if float(self.scan.values[li, neuron, 0]) >= 0 else -1
        for v in (self.showcase_values, self.values):
            if v is not None and layer in v.layers and neuron in v.neurons:
                return v.tokens(layer, neuron, sign=sign)
        raise InputError(f"The value vector of L{layer}N{neuron} was not projected in this study.")

    def edit_table(self) -> pd.DataFrame:
        return cc.edit_table(self.edits)

    def depth_shares(self) -> dict[str, float]:
        """Semantic share of labelled keys in the first, middle and last third of the layers."""
        return {k: iv.estimate for k, iv in self.semantic_by_depth.items()}

    def depth_means(self, column: str) -> dict[str, float]:
        """Mean of a per-layer column of :attr:`distribution` over the first, middle and last third of the layers."""
        return {k: float(p[column].mean()) if len(p) else float("nan") for k, p in _thirds(self.distribution).items()}

    def metrics(self) -> dict[str, float]:
        """The key numbers (also shown as cards in the report, with the same keys)."""
        m: dict[str, float] = {
            "scan_chunks": self.scan.chunks_done,
            "scan_tokens": self.scan.tokens_done,
            "scan_tokens_per_s": self.timings.get("scan_tokens_per_s", float("nan")),
        }
        m.update({f"semantic_share_{k}": v for k, v in self.depth_shares().items()})
        m.update({f"token_purity_{k}": v for k, v in self.depth_means("token_purity").items()})
        m["labelled_keys"] = int((self.distribution["shallow"] + self.distribution["semantic"]).sum())
        if self.edits:
            t = self.edit_table()
            m["edit_mean_concept_acc_drop"] = float((t["concept_acc"] - t["concept_acc_masked"]).mean())
            m["edit_mean_general_acc_drop"] = float((t["general_acc"] - t["general_acc_masked"]).mean())
            m["edit_mean_control_concept_acc_drop"] = float((t["concept_acc"] - t["concept_acc_control"]).mean())
        a = self.agreement
        if a is not None:
            for comp in a.components:
                c = a.curve(comp)
                q = max(1, len(c) // 4)
                m[f"agree_{comp}_first_quarter"] = float(np.mean(c[:q]))
                m[f"agree_{comp}_last_quarter"] = float(np.mean(c[len(c) - q :]))
            filled = a.total.tolist()
            ml = [x for x, t in zip(a.mean_layer("resid_post"), filled) if t > 0]
            la = [x for x, t in zip(a.late_agreement("resid_post"), filled) if t > 0]
            m["resid_depth_shortest_bucket"], m["resid_depth_longest_bucket"] = float(ml[0]), float(ml[-1])
            m["resid_late_agreement_shortest_bucket"] = float(la[0])
            m["resid_late_agreement_longest_bucket"] = float(la[-1])
        return m

    @cached_property
    def rq4(self) -> dict:
        """RQ4's numbers with intervals over documents (:func:`codecircuits.memories.agreement.depth_intervals`;
        ``{}`` without a balanced agreement), computed once."""
        return ag.depth_intervals(self.agreement) if self.agreement is not None else {}

    @cached_property
    def semantic_by_depth(self) -> dict:
        """:meth:`ConceptScores.semantic_share_by_depth` at the study's tau and lift, computed once."""
        return self.scores.semantic_share_by_depth(
            tau=self.settings.get("tau", 0.5), min_lift=self.settings.get("min_lift", 2.0)
        )

    def claims(self) -> list[intervals.Claim]:
        """The paper's four claims (RQ1-RQ4) with the number each verdict rests on, its interval and control."""
        d = self.semantic_by_depth
        e, late = d["early"], d["late"]
        ok = e.n and late.n
        out = [CLAIMS["rq1"](bool(ok and late.low > e.high), bool(ok and late.estimate > e.estimate),
                             late if late.n else None, e if e.n else None,
                             "semantic share of labelled keys, last third of the layers (control: first third); "
                             "interval over the labelled keys")]
        for ed in self.edits:
            ex, gen = ed.intervals.get("excess_concept_drop"), ed.intervals.get("general_drop")
            if ex is not None and gen is not None:
                out.append(CLAIMS["rq2"](
                    ex.above(0) and gen.estimate < ex.low, ex.estimate > 0, ed.intervals["concept_drop"],
                    ed.intervals["control_concept_drop"],
                    f"{ed.n_keys} keys; accuracy drop on its predictions vs {len(ed.controls)} magnitude-matched "
                    f"random draws; excess {ex.format(3)}; general drop {gen.format(3)}",
                    concept=ed.concept.name, kind=ed.concept.kind,
                ))
        a = self.agreement
        if a is not None and a.doc_agree is not None:
            n = a.n_layers
            q = max(1, n // 4)

            def quarter(part):
                return lambda x: float(x.curve("resid_post")[part].mean())

            early, late_q = a.interval(quarter(slice(0, q))), a.interval(quarter(slice(n - 1 - q, n - 1)))
            gap = self.rq4["depth_gap"]
            out += [
                CLAIMS["rq3"](late_q.low > early.high and early.estimate < 0.2, late_q.low > early.high, late_q, early,
                              "residual agreement, the last quarter of layers before the final one (control: the "
                              "first quarter); interval over documents"),
                CLAIMS["rq4"](gap.above(0), gap.estimate > 0, self.rq4["depth_longest"], self.rq4["depth_shortest"],
                              f"residual depth to agree, longest vs shortest contexts (same {len(a.docs)} documents); "
                              f"gap {gap.format(3)}"),
            ]
        return out

    def json_extra(self) -> dict:
        out = {
            "paper": PAPER,
            "edits": self.edit_table().to_dict(orient="records") if self.edits else [],
            "edit_keys": {e.concept.name: {str(k): v for k, v in e.keys.items()} for e in self.edits},
            "edit_intervals": {
                e.concept.name: {"drops": {k: v.to_json() for k, v in e.intervals.items()},
                                 "control_draws": list(e.control_draws), "magnitude": e.magnitude}
                for e in self.edits
            },
            "examples": self._example_records(),
            "semantic_share_by_depth": {k: v.to_json() for k, v in self.semantic_by_depth.items()},
        }
        if self.agreement is not None:
            out["agreement"] = {**self.agreement.to_json(), "intervals": {k: v.to_json() for k, v in self.rq4.items()}}
        return out

    def _example_records(self, n_keys: int = 6, n_examples: int = 3) -> list[dict]:
        """The showcase keys with their value's tokens and the tails of their strongest trigger examples."""
        return [
            {
                "concept": concept.name,
                "kind": concept.kind,
                "layer": layer,
                "neuron": neuron,
                "score": score,
                "promotes": self.promotes(layer, neuron),
                "triggers": [
                    {"doc": e.doc, "coefficient": e.coefficient, "tail": e.prefix[-120:], "next": e.next_token}
                    for e in self.scan.examples(layer, neuron, self.chunked, k=n_examples)
                ],
            }
            for concept, layer, neuron, score in self.showcase[:n_keys]
        ]

    def summary_text(self) -> str:
        """What ``codecircuits memories`` prints: the scan, the semantic share by depth, the edits, the agreement."""
        m = self.metrics()
        lines = [
            f"{self.model}: scanned {m['scan_tokens']} tokens in {m['scan_chunks']} chunks "
            f"({m['scan_tokens_per_s']:.0f} tok/s)",
            "semantic share of labelled keys by depth: "
            + ", ".join(f"{k} {v:.2f}" for k, v in self.depth_shares().items()),
        ]
        if self.edits:
            lines.append(self.edit_table()[EDIT_COLUMNS].round(3).to_string(index=False))
        a = self.agreement
        if a is not None:
            lines += [f"{c} agreement by layer: " + " ".join(f"{x:.2f}" for x in a.curve(c)) for c in a.components]
            lines.append(
                f"residual depth to agree by context ({', '.join(a.bucket_labels())}): "
                + " ".join(f"{x:.2f}" for x in a.mean_layer("resid_post"))
            )
            lines.append(
                "residual agreement over the last quarter of layers by context: "
                + " ".join(f"{x:.2f}" for x in a.late_agreement("resid_post"))
            )
        return "\n".join(lines)

    def report(self, model=None, *, n_keys: int = 6, n_examples: int = 2, tail_tokens: int = 48):
        """The study as a :class:`codecircuits.report.Report`: the claims and key numbers first, then RQ1-RQ4;
        with ``model``, trigger examples get per-token coefficients."""
        s = self.settings
        r = self.open_report(
            f"Feed-forward key-value memories in {self.model}",
            f"Haider et al. 2024 (after Geva et al. 2021) on {s['corpus']}: trigger examples, concept keys, masking "
            "edits, layer agreement",
            meta={"window": s["window"], "top-K": s["k"], "tau": s["tau"], "min lift": s["min_lift"]},
            labels={k: LABELS[k] for k in KEY_NUMBERS},
        )
        _report_keys(r, self)
        _report_examples(r, self, model, n_keys, n_examples, tail_tokens)
        if self.edits:
            _report_edits(r, self)
        if self.agreement is not None:
            _report_agreement(r, self)
        return self.close_report(r, LABELS)

COMMAND = "codecircuits memories"

#: the columns of the edit table the command prints
EDIT_COLUMNS = [
    "concept", "keys", "concept_acc", "concept_acc_masked", "concept_acc_control", "general_acc",
    "general_acc_masked", "general_acc_control",
]  # fmt: skip


#: the paper's four claims: the paper's finding in words (its numbers are not known to us) and the rule
CLAIMS = claim_specs(
    COMMAND,
    rq1=("RQ1: lower layers store shallow patterns, higher layers more semantic ones",
         "reproduced: the last third's interval lies above the first third's; partly: its estimate is higher",
         PAPER["rq1"], "Haider et al. 2024, RQ1"),
    rq2=("RQ2: masking the {concept} keys ({kind}) hurts that concept more than random keys do",
         "reproduced: the excess drop over random keys lies above 0 and the general drop is below its lower end; "
         "partly: the excess is positive", PAPER["rq2"], "Haider et al. 2024, RQ2"),
    rq3=("RQ3: early layers rarely agree with the final prediction; agreement rises in later layers",
         "reproduced: the late quarter's interval lies above the early quarter's and the early quarter agrees below "
         "0.2; partly: the intervals are apart", PAPER["rq3"], "Haider et al. 2024, RQ3"),
    rq4=("RQ4: short contexts are resolved in earlier layers than long ones",
         "reproduced: the depth gap (longest − shortest) lies above 0; partly: its estimate is positive",
         PAPER["rq4"], "Haider et al. 2024, RQ4"),
)


def _thirds(d: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The rows of a per-layer table in the first, middle and last third of the layers."""
    n = len(d)
    return {"early": d.iloc[: n // 3], "middle": d.iloc[n // 3 : n - n // 3], "late": d.iloc[n - n // 3 :]}


# ----------------------------------------------------------------------------------------------------------------
# the steps of a run


def _scan(model, cfg: MemoriesConfig, checkpoint, resume: bool, progress: bool, workers, timings: dict):
    """The scan corpus cut into chunks, and its trigger-example scan (resumed from ``checkpoint``)."""
    chunked = mem.chunk_corpus(
        model, cfg.corpus, window=cfg.window, max_tokens=cfg.max_tokens, order=cfg.order, seed=cfg.seed
    )
    start_tokens = 0  # a resumed scan starts from its checkpoint's count; the throughput is this run's
    ck = Path(checkpoint) if checkpoint is not None else None
    ck = ck / "scan.safetensors" if ck is not None and ck.is_dir() else ck
    if resume and ck is not None and ck.is_file():
        start_tokens = mem.load_scan(ck).tokens_done
    with timed(timings, "scan_s"):
        scan = distributed.run(
            mem.scan, model, chunked, k=cfg.k, batch_size=cfg.batch_size, checkpoint=checkpoint, resume=resume,
            progress=progress, workers=workers,
        )
    if scan.tokens_done > start_tokens:
        timings["scan_tokens_per_s"] = (scan.tokens_done - start_tokens) / max(timings["scan_s"], 1e-9)
    return chunked, scan


def _keys(model, cfg: MemoriesConfig, scan, chunked, concepts, progress: bool) -> dict:
    """RQ1's measurements: value tokens and key-value agreement on a key sample, concept scores, the showcase keys,
    and per layer the shallow / semantic labels (at each of :data:`TAUS` too) and the trigger-token purity."""
    g = torch.Generator().manual_seed(0)
    sample = torch.randperm(int(model.cfg.d_mlp), generator=g)[: cfg.kv_keys].tolist() if cfg.kv_keys else None
    values = mem.value_tokens(model, k=10, neurons=sample, progress=progress)
    kva = mem.key_value_agreement(scan, values, chunked)
    scores = cc.key_scores(scan, chunked, concepts)
    show = tuple(cc.showcase_keys(scores, 6, tau=cfg.tau, min_lift=cfg.min_lift))
    show_values = (
        mem.value_tokens(model, k=10, layers=[x[1] for x in show], neurons=[x[2] for x in show], progress=False)
        if show
        else None
    )
    dist = scores.layer_distribution(tau=cfg.tau, min_lift=cfg.min_lift)
    dist["token_purity"] = scan.token_purity(chunked).mean(-1).numpy()
    for t in TAUS:
        dist[f"semantic_share_tau{t}"] = scores.layer_distribution(tau=t, min_lift=cfg.min_lift)["semantic_share"]
    return dict(values=values, kv_agreement=kva, scores=scores, showcase=show, showcase_values=show_values,
                distribution=dist)


def _edits(model, cfg: MemoriesConfig, scan, scores, progress: bool) -> tuple[tuple, dict[str, float]]:
    """RQ2: each chosen concept's keys masked on the evaluation corpus, next to magnitude-matched random keys;
    returns the edits and the tau each concept's keys were selected at."""
    ev = mem.chunk_corpus(
        model, cfg.eval_corpus, window=cfg.window, max_tokens=cfg.edit_tokens, order=cfg.order, seed=cfg.seed + 1
    )
    if cfg.edit is None:
        masks = cc.token_masks(ev, scores.concepts, force_token=cfg.edit_at == "target").mask
        names = cc.pick_edit_concepts(
            scores, masks[:, cc.chunk_flat_tokens(ev)], cfg.n_edit_per_kind, tau=cfg.tau, min_lift=cfg.min_lift
        )
    else:
        names = [(c, cfg.tau) for c in cfg.edit]
    base = cc.evaluate(model, ev, batch_size=cfg.batch_size, progress=progress)
    stats = scan.activation_stats() if scan.act_sum is not None else None
    edits = tuple(
        cc.edit_concept(
            model, scores, name, ev, tau=tau, min_lift=cfg.min_lift, max_keys=cfg.edit_max_keys,
            n_controls=cfg.edit_controls, at=cfg.edit_at, match=stats, batch_size=cfg.batch_size, baseline=base,
            progress=progress,
        )
        for name, tau in names
    )
    return edits, dict(names)


def _settings(cfg: MemoriesConfig, name: str, chunked, concepts, language: str, edit_taus: dict) -> dict:
    """The settings results.json records."""
    keep = ("max_tokens", "window", "order", "seed", "k", "tau", "min_lift", "edit_max_keys", "edit_tokens",
            "edit_controls", "edit_at")
    agreement = ("agreement_docs", "agreement_positions", "agreement_context", "kv_keys")
    ev = cfg.eval_corpus
    return {
        "model": name,
        "corpus": chunked.name,
        "eval_corpus": str(ev) if not isinstance(ev, (list, tuple)) else "texts",
        **{k: getattr(cfg, k) for k in keep},
        "edit_taus": edit_taus,
        **{k: getattr(cfg, k) for k in agreement},
        "concepts": [c.name for c in concepts],
        "language": language,
        "threads": torch.get_num_threads(),
    }


def run(
    model,
    config: MemoriesConfig | None = None,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    workers=None,
    **overrides,
) -> MemoriesStudy:
    """Run RQ1-RQ4 on ``model``: scan ``corpus`` (``max_tokens``), edit on ``eval_corpus``, agreement on it too.

    ``edit`` names the concepts to mask (default: per kind the ``n_edit_per_kind`` concepts with most selected
    keys); ``edit_tokens`` caps the evaluation corpus for the edits (0 skips them); layer agreement
    (:func:`codecircuits.memories.agreement.balanced_agreement`) draws ``agreement_positions`` predictions per
    context bucket from each of the same ``agreement_docs`` documents, with contexts up to ``agreement_context``
    tokens (0 documents skips it). Key-value agreement is
    measured on ``kv_keys`` random keys per layer (None: all, which costs ``n_layers × d_mlp × d_model × d_vocab``).
    ``workers`` shards the scan over Ray workers (:mod:`codecircuits.distributed`); the result is the same.
    """
    cfg = configure(MemoriesConfig, config, overrides)
    timings: dict[str, float] = {}
    name = str(getattr(model.cfg, "model_name", "") or "model")
    chunked, scan = _scan(model, cfg, checkpoint, resume, progress, workers, timings)
    language = corpus_language(chunked.names)
    concepts = cc.resolve_concepts(cfg.concepts, language)
    with timed(timings, "values_and_scores_s"):
        keys = _keys(model, cfg, scan, chunked, concepts, progress)
    edits, edit_taus = (), {}
    if cfg.edit_tokens:
        with timed(timings, "edit_s"):
            edits, edit_taus = _edits(model, cfg, scan, keys["scores"], progress)
    agreement = None
    if cfg.agreement_docs:
        with timed(timings, "agreement_s"):
            agreement = ag.balanced_agreement(
                model, cfg.eval_corpus, n_docs=cfg.agreement_docs, positions=cfg.agreement_positions,
                max_context=cfg.agreement_context, progress=progress,
            )
    return MemoriesStudy(
        model=name, scan=scan, chunked=chunked, edits=edits, agreement=agreement,
        settings=_settings(cfg, name, chunked, concepts, language, edit_taus),
        timings={k: round(v, 3) for k, v in timings.items()}, config=cfg, **keys,
    )


# ----------------------------------------------------------------------------------------------------------------
# the report

#: the numbers the report opens with, after the claims
KEY_NUMBERS = (
    "semantic_share_early",
    "semantic_share_late",
    "edit_mean_concept_acc_drop",
    "edit_mean_control_concept_acc_drop",
    "agree_resid_post_first_quarter",
    "agree_resid_post_last_quarter",
    "resid_depth_shortest_bucket",
    "resid_depth_longest_bucket",
)

LABELS = {
    "scan_chunks": "chunks scanned",
    "scan_tokens": "tokens scanned",
    "scan_tokens_per_s": "scan tokens / s",
    "semantic_share_early": "semantic share of labelled keys, first third of the layers",
    "semantic_share_middle": "semantic share of labelled keys, middle third",
    "semantic_share_late": "semantic share of labelled keys, last third of the layers",
    "labelled_keys": "keys with a concept label",
    "token_purity_early": "trigger-token purity, first third",
    "token_purity_middle": "trigger-token purity, middle third",
    "token_purity_late": "trigger-token purity, last third",
    "edit_mean_concept_acc_drop": "concept accuracy drop, its keys masked",
    "edit_mean_general_acc_drop": "general accuracy drop, concept keys masked",
    "edit_mean_control_concept_acc_drop": "concept accuracy drop, random keys masked",
    "agree_mlp_out_first_quarter": "mlp_out agreement, first quarter",
    "agree_mlp_out_last_quarter": "mlp_out agreement, last quarter",
    "agree_resid_post_first_quarter": "residual agrees with the final prediction, first quarter of layers",
    "agree_resid_post_last_quarter": "residual agrees with the final prediction, last quarter of layers",
    "resid_depth_shortest_bucket": "depth to agree, shortest contexts (0: at once, 1: never)",
    "resid_depth_longest_bucket": "depth to agree, longest contexts (0: at once, 1: never)",
    "resid_late_agreement_shortest_bucket": "late-layer agreement, shortest contexts",
    "resid_late_agreement_longest_bucket": "late-layer agreement, longest contexts",
}


def _report_keys(r, study: MemoriesStudy) -> None:
    """RQ1: labelled keys per layer, the semantic share by tau, trigger-token purity, the concept tables."""
    s = study.settings
    r.section(
        "What the keys store (RQ1)",
        text=f"Paper: {PAPER['rq1']}. Each key (neuron of mlp.hook_post) keeps its top-{s['k']} trigger chunks; "
        f"a key is labelled with a concept when at least {s['tau']:.0%} of its trigger tokens match the concept's "
        f"regex and that is at least {s['min_lift']}x the concept's base rate among all scanned tokens.",
    )
    d = study.distribution
    layers = d["layer"].tolist()
    r.line_chart(layers, {"shallow": d["shallow"].tolist(), "semantic": d["semantic"].tolist()},
                 title="Labelled keys per layer", x_title="layer", y_title="keys")
    r.line_chart(
        layers,
        {
            f"tau {t}": [None if math.isnan(x) else x for x in d[f"semantic_share_tau{t}"]]
            for t in TAUS
            if f"semantic_share_tau{t}" in d
        },
        title="Semantic share of labelled keys per layer, by score threshold tau",
        x_title="layer",
        y_title="share",
    )
    r.line_chart(
        layers, {"trigger-token purity": d["token_purity"].tolist()}, title="Trigger-token purity per layer",
        caption="Mean over keys of the share of trigger examples whose trigger is the key's most common token",
        x_title="layer", y_title="purity",
    )
    r.table(d, caption="Keys per layer labelled shallow, semantic or not at all; mean trigger-token purity")
    r.table(study.scores.to_dataframe(), caption="Concepts: base rate among scanned tokens and keys that store them")
    r.table(
        study.kv_agreement,
        caption="Key-value agreement: the value's top-10 tokens contain the token after the "
        "key's top trigger (chance = 10 / vocabulary)",
    )


def _report_examples(r, study: MemoriesStudy, model, n_keys: int, n_examples: int, tail_tokens: int) -> None:
    """The showcase keys' strongest trigger chunks (per-token coefficients with ``model``, else the text)."""
    r.section(
        "Trigger examples",
        text="For a few labelled keys, the tail of their strongest trigger chunks, "
        "coloured by the key's coefficient; the outlined token is the trigger (the prefix ends there).",
    )
    for concept, layer, neuron, score in study.showcase[:n_keys]:
        promotes = " ".join(repr(t) for t in study.promotes(layer, neuron)[:8])
        r.text(f"L{layer}N{neuron}: {concept.name} ({concept.kind}), score {score:.2f}; its value promotes {promotes}")
        for e in study.scan.examples(layer, neuron, study.chunked, k=n_examples):
            title = f"L{layer}N{neuron} #{e.rank + 1} · {e.doc} · coefficient {e.coefficient:.3g}"
            if model is None:
                r.code(e.prefix[-400:], title=title)
                continue
            toks, acts = mem.chunk_activations(model, study.chunked, e.chunk, layer, neuron)
            end = e.pos - int(study.chunked.chunk_start[e.chunk]) + 1
            a = max(0, end - tail_tokens)
            r.token_values(
                toks[a:end], acts[a:end], title=title, center=0.0, value_label="coefficient", marked=[end - 1 - a]
            )


def _report_edits(r, study: MemoriesStudy) -> None:
    """RQ2: accuracy and loss with a concept's keys masked, beside random keys, with intervals."""
    s = study.settings
    at = (
        "Concept predictions are those made at a token inside a regex match (the token a key's trigger "
        "examples end in, which is how keys are labelled)"
        if s.get("edit_at", "target") == "trigger"
        else "Concept predictions are those of a next token inside a regex match"
    )
    r.section(
        "Masking a concept's keys (RQ2)",
        text=f"Paper: {PAPER['rq2']}. The concept's keys (at most {s['edit_max_keys']}) are zeroed at every "
        f"position. {at}; general predictions are all others; the control zeroes as many random keys per layer, "
        "matched on activation magnitude.",
    )
    r.table(study.edit_table(), caption="Next-token accuracy and loss: baseline, concept keys masked, random keys")
    r.table(
        cc.edit_interval_table(study.edits),
        caption=f"Accuracy drops with 95% bootstrap intervals over the evaluation tokens; the control is "
        f"{s.get('edit_controls', 1)} draws of random keys matched on layer and activation RMS",
    )


def _report_agreement(r, study: MemoriesStudy) -> None:
    """RQ3 and RQ4: agreement with the final prediction per layer, and by context length."""
    a = study.agreement
    r.section(
        "Layer agreement (RQ3)",
        text=f"Paper: {PAPER['rq3']}. Share of positions whose per-layer top-1 "
        "(read through the unembedding with the frozen final scale) equals the model's final top-1.",
    )
    r.line_chart(list(range(a.n_layers)), {c: a.curve(c).tolist() for c in a.components},
                 title="Agreement with the final prediction", x_title="layer", y_title="agreement")
    r.section(
        "Agreement by context length (RQ4)",
        text=f"Paper: {PAPER['rq4']}. Rows: layers; columns: context length (document tokens before the prediction).",
    )
    for c in a.components:
        r.heatmap(
            a.by_bucket(c), x_labels=a.bucket_labels(), y_labels=[str(i) for i in range(a.n_layers)],
            title=f"{c} agreement by context length", x_title="context length", y_title="layer", vmin=0.0, vmax=1.0,
            value_label="agreement",
        )
    r.table(
        pd.DataFrame(
            {
                "context": a.bucket_labels(),
                "predictions": a.total.tolist(),
                "first layer ≥ 0.5 (resid)": a.first_layer("resid_post", 0.5),
                "depth to agree (resid)": a.mean_layer("resid_post"),
                "late-layer agreement (resid)": a.late_agreement("resid_post"),
            }
        ),
        caption="Per context bucket: first layer whose residual agrees on half the positions; "
        "depth to agree = mean over layers of (1 - agreement), 0 = every layer agrees",
    )
    if study.rq4:
        r.table(
            [{"number": k, "estimate (95% CI over documents)": v.format(3)} for k, v in study.rq4.items()],
            caption=f"RQ4 with intervals: every bucket holds predictions from the same {len(a.docs)} documents "
            "(resampled with replacement for the interval)",
        )
