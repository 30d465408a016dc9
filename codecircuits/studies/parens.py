"""The closing-parenthesis study (Miller, Rai and Yao 2025, METHODS §2) end to end on one model.

Composes the task (:mod:`codecircuits.tasks.parens`), the lens (:mod:`codecircuits.lens`), the heads
(:mod:`codecircuits.heads`) and the patching/ablation engine (:mod:`codecircuits.patching`,
:mod:`codecircuits.ablation`):

1. accuracy per number of closing parens;
2. logit lens of the correct-minus-wrong logit difference at every ``resid_pre`` / ``resid_post``;
3. attention versus MLP: direct contributions of each sublayer, and patching ``attn_out`` / ``mlp_out``
   from clean into counterfactual runs;
4. paren-promoting heads with precision, recall and F1;
5. counting heads (attention to the ``(`` tokens that tracks the count), and whether they promote it;
6. zero-ablation of candidate heads, and amplification of the top promoters of the hardest count;
7. the same readouts on prompts mined from real held-out code.

The "wrong" token of a prompt with ``k`` open parens is the neighbouring count: ``k + 1`` parens when the
dataset has that token, else ``k - 1`` (the counterfactual's answer, as in the paper's patching).

    >>> study = run(model, ParensConfig(prompts_per_n=24))
    >>> study.accuracy, study.emergence, study.to_json()
    >>> study.save("reports/parens")     # report.html + results.json
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import heads as heads_mod
from .. import lens
from ..core.sites import head_label, hook_name
from ..errors import InputError
from ..tasks import parens as task
from .common import Study, configure, json_safe, model_name, setting, write_study

PAPER_CLAIMS = {
    "emergence": "the correct label becomes confidently predicted only in middle-to-late layers",
    "attn_vs_mlp": "both MHA and FF sublayers matter, MHA more",
    "counting": "some heads track the number of parens precisely but may or may not promote the right count; "
    "one head can even hurt performance",
    "amplification": "amplifying the top 5-10 paren-promoting heads (hook_z x c, c in 1.1-1.6) repairs the failing "
    "count (follow-up code: gpt2-small 3 parens 0.48 -> 1.0; gpt2-xl 4 parens 0 -> 1.0)",
}


@dataclass(frozen=True)
class ParensConfig:
    """Sizes and settings of a study run (defaults keep smollm2-135m under ~3 minutes on 2 CPU cores)."""

    n_values: tuple[int, ...] = setting((0, 1, 2, 3), "numbers of closing parens in the prompts")
    n_numbers: int = setting(500, "numbers drawn for the prompts")
    seed: int = setting(20, "seed of the dataset")
    split: str = setting("test", "split of the numbers: train or test")
    prompts_per_n: int = setting(20, "prompts per paren count for lens, attributions and heads (one forward)")
    pairs_per_n: int = setting(2, "counterfactual pairs per count for sublayer patching")
    intervention_prompts_per_n: int = setting(4, "prompts per count for head ablation and scaling")
    n_candidates: int = setting(10, "heads ablated one at a time")
    promoter_ratio: float = setting(
        0.8, "a head promotes a prompt's answer when its direct logit for it is >= ratio x its largest paren logit"
    )
    scale_top_k: tuple[int, ...] = setting((5, 10), "numbers of top promoters amplified")
    scale_factors: tuple[float, ...] = setting((1.5, 2.0), "amplification factors c (hook_z x c)")
    scale_rankings: tuple[str, ...] = setting(
        ("f1", "logit"), "promoter rankings: f1 (the paper's code) and/or logit (direct logit)"
    )
    mined: bool = setting(True, "readouts on prompts mined from real held-out code")
    mined_per_count: int = setting(12, "mined prompts per paren count")
    mined_window: int = setting(24, "tokens of context of a mined prompt")
    mined_max_chars: int | None = setting(
        None, "read at most this many characters of the corpus (none: all)", convert=int
    )
    emergence_fraction: float = setting(
        0.5, "the answer emerges at the first layer from which the logit difference stays >= this share of its final"
    )
    batch_size: int = setting(32, "prompts per forward")

    def __post_init__(self):
        for name in ("prompts_per_n", "pairs_per_n", "intervention_prompts_per_n", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"ParensConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.n_candidates < 0 or self.mined_per_count < 1:
            raise InputError("ParensConfig.n_candidates must be >= 0 and mined_per_count >= 1.")
        if any(r not in ("f1", "logit") for r in self.scale_rankings):
            raise InputError(f"scale_rankings must be 'f1' and/or 'logit', got {self.scale_rankings}.")
        if any(c <= 0 for c in self.scale_factors):
            raise InputError(f"scale_factors must be positive, got {self.scale_factors}.")

    @classmethod
    def tiny(cls, **kw) -> ParensConfig:
        """Small sizes for tests and smoke runs on tiny models."""
        base = dict(
            n_numbers=20,
            prompts_per_n=4,
            pairs_per_n=2,
            intervention_prompts_per_n=2,
            n_candidates=3,
            scale_top_k=(2,),
            scale_factors=(1.5,),
            mined_per_count=3,
            mined_window=8,
            mined_max_chars=60_000,
        )
        base.update(kw)
        return cls(**base)


@dataclass(frozen=True)
class ParensStudy(Study):
    """Every result of a study run; :meth:`to_json` has every number, :meth:`report` the HTML."""

    model_name: str
    config: ParensConfig
    counts: tuple[int, ...]  # numbers of closing parens studied (n + 1)
    paren_ids: dict[int, int]
    wrong_of: dict[int, int]  # count -> the neighbouring count used as the wrong answer
    accuracy: dict[int, float]
    predictions: dict[int, list[str]]  # count -> predicted tokens of the eval prompts
    lens: dict[int, lens.LogitDiffLens]
    contributions: dict[int, lens.SublayerContributions]
    head_logits: dict[int, lens.HeadLogits]
    promoters: heads_mod.PromoterHeads
    counting: heads_mod.CountingHeads
    patching: dict[int, dict[str, list[float]]]  # count -> {"attn_out": [layer], "mlp_out": [layer], ...}
    ablation: dict  # candidate heads, baseline and per-head accuracy / logit diff per count
    scaling: dict  # hardest count, configs and their accuracies
    mined: dict  # accuracy and emergence on real code
    examples: dict  # count -> (tokens, patterns of top heads) for attention views
    post_attention_norm: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------ summaries
    @property
    def emergence(self) -> dict[int, int | None]:
        """count -> first layer from which the mean logit difference stays >= fraction × final."""
        return {k: v.emergence_layer(self.config.emergence_fraction) for k, v in self.lens.items()}

    @property
    def caveats(self) -> list[str]:
        """Limits of this run's numbers that a reader must know."""
        out = []
        if self.post_attention_norm:
            out.append(
                "this model normalises each attention output before adding it to the residual stream: per-head "
                "direct logits (promoters, counting heads' output) pass that norm with its scale frozen from the "
                "run, so they sum exactly to the attention sublayer's contribution but, like any frozen-scale "
                "attribution, ignore how one head changes the norm's scale for the others"
            )
        return out

    @property
    def attn_share(self) -> dict[int, float]:
        """count -> share of the absolute direct effect carried by attention sublayers."""
        return {k: v.attn_share() for k, v in self.contributions.items()}

    def to_json(self) -> dict:
        """Every number of the study as JSON-able data (NaN becomes None); ``metrics`` are the report's cards."""
        pr = self.promoters
        out = {
            "model": self.model_name,
            "config": asdict(self.config),
            "paper_claims": PAPER_CLAIMS,
            "counts": list(self.counts),
            "caveats": self.caveats,
            "paren_token_ids": self.paren_ids,
            "wrong_count": self.wrong_of,
            "accuracy": self.accuracy,
            "predictions": self.predictions,
            "emergence_layer": self.emergence,
            "attn_share": self.attn_share,
            "logit_lens": {
                k: {"sites": v.labels, "mean": v.mean(), "std": v.values.std(-1), "final": v.final.mean()}
                for k, v in self.lens.items()
            },
            "contributions": {
                k: {
                    "attn": v.attn.mean(-1),
                    "mlp": v.mlp.mean(-1),
                    "attn_sum": v.attn.sum(0).mean(),
                    "mlp_sum": v.mlp.sum(0).mean(),
                    "embed": v.embed.mean(),
                    "bias": v.bias.mean(),
                    "total": v.total.mean(),
                }
                for k, v in self.contributions.items()
            },
            "head_logits_mean": {
                k: {"tokens": list(v.token_labels), "values": v.values.mean(0)} for k, v in self.head_logits.items()
            },
            "promoters": {
                "classes": list(pr.classes),
                "ratio": pr.ratio,
                "support": list(pr.support),
                "precision": pr.precision,
                "recall": pr.recall,
                "f1": pr.f1,
                "mean_logit": pr.mean_logit,
                "top": {c: pr.top(5, c).to_dict("records") for c in pr.classes},
            },
            "counting": {
                "counts": list(self.counting.counts),
                "attn_mass": self.counting.attn_mass,
                "per_paren": self.counting.per_paren,
                "attn_corr": self.counting.attn_corr,
                "output_corr": self.counting.output_corr,
                "promotes_correct": self.counting.promotes_correct,
                "top": self.counting.top(8).to_dict("records"),
            },
            "patching": self.patching,
            "ablation": self.ablation,
            "scaling": self.scaling,
            "mined": self.mined,
            "timings_s": self.timings,
            "metrics": self.key_metrics(),
        }
        return json_safe(out, digits=None)

    def key_metrics(self) -> dict[str, float | None]:
        """The headline numbers (also the report's metric cards)."""
        m: dict[str, float] = {}
        for k in self.counts:
            m[f"accuracy_{k}"] = round(float(self.accuracy[k]), 4)
        for k in self.counts:
            e = self.emergence[k]
            m[f"emergence_layer_{k}"] = None if e is None else int(e)  # None: never (shown as "—")
        for k in self.counts:
            m[f"attn_share_{k}"] = round(float(self.attn_share[k]), 4)
        if self.scaling.get("best") is not None:
            m["scaled_accuracy_hardest"] = round(float(self.scaling["best"]["accuracy"]), 4)
        return m

    def report(self):
        """The study as a :class:`codecircuits.report.Report`."""
        return build_report(self)

    def save(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``report.html`` and ``results.json`` into ``out_dir``; returns both paths."""
        return write_study(out_dir, self.to_json(), self.report)


# ----------------------------------------------------------------------------------------------------------------
# the run


def _neighbour(counts: tuple[int, ...], k: int) -> int:
    if k + 1 in counts:
        return k + 1
    if k - 1 in counts:
        return k - 1
    raise InputError(f"The study needs at least two adjacent paren counts; got {counts}.")


def _logit_diff_metric(correct: torch.Tensor, wrong: torch.Tensor):
    def metric(logits: torch.Tensor) -> torch.Tensor:
        ar = torch.arange(logits.shape[0], device=logits.device)
        last = logits[:, -1]
        return last[ar, correct.to(logits.device)] - last[ar, wrong.to(logits.device)]

    return metric


@torch.no_grad()
def _acc_and_ld(model, groups, paren_ids, wrong_of, batch_size):
    """count -> (accuracy, mean logit diff) of the current model (hooks in effect) on ``groups``."""
    out = {}
    for k, toks in groups.items():
        preds, lds = [], []
        for i in range(0, toks.shape[0], batch_size):
            last = model(toks[i : i + batch_size])[:, -1]
            preds.append(last.argmax(-1))
            lds.append(last[:, paren_ids[k]] - last[:, paren_ids[wrong_of[k]]])
        preds, lds = torch.cat(preds), torch.cat(lds)
        out[k] = (float((preds == paren_ids[k]).float().mean()), float(lds.mean()))
    return out


def run(
    model, config: ParensConfig | None = None, *, corpus=None, progress: bool = True, **overrides
) -> ParensStudy:
    """Run the whole study on ``model`` (see the module docstring); returns a :class:`ParensStudy`.

    ``config`` defaults to :class:`ParensConfig`; keyword ``overrides`` change single settings. ``corpus``: the code
    to mine real closing-paren positions from (a :class:`codecircuits.corpus.Corpus`; default the standard
    library's held-out ``"test"`` split).
    """
    from .. import ablation, patching

    cfg = configure(ParensConfig, config, overrides)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ds = task.dataset(model, n_values=cfg.n_values, n_numbers=cfg.n_numbers, seed=cfg.seed, split=cfg.split)
    counts = ds.n_opens
    paren_ids = dict(ds.label_ids)
    wrong_of = {k: _neighbour(counts, k) for k in counts}
    token_ids = [paren_ids[k] for k in counts]
    col = {k: i for i, k in enumerate(counts)}
    timings["data"] = time.perf_counter() - t0

    # 1-5: one cached forward per count
    t0 = time.perf_counter()
    ev = ds.select(limit=cfg.prompts_per_n)
    groups = {k: toks for k, (_, toks) in ev.groups(model).items()}
    caches, lenses, contribs, hls, accuracy, preds = {}, {}, {}, {}, {}, {}
    for k in tqdm(counts, disable=not progress, desc="parens: lens and heads"):
        toks = groups[k]
        logits, cache = lens.run_cache(model, toks, extra=("attn.hook_pattern",))
        caches[k] = cache
        pred = logits[:, -1].argmax(-1)
        accuracy[k] = float((pred == paren_ids[k]).float().mean())
        preds[k] = [model.tokenizer.decode([i]) for i in pred.tolist()]
        lenses[k] = lens.logit_diff_lens(model, toks, paren_ids[k], paren_ids[wrong_of[k]], cache=cache, logits=logits)
        contribs[k] = lens.sublayer_contributions(model, toks, paren_ids[k], paren_ids[wrong_of[k]], cache=cache)
        hls[k] = lens.head_logits(model, toks, token_ids, cache=cache)
    all_values = torch.cat([hls[k].values for k in counts])
    labels = torch.cat([torch.full((hls[k].values.shape[0],), col[k]) for k in counts])
    merged = lens.HeadLogits(all_values, tuple(token_ids), hls[counts[0]].token_labels, True, -1)
    promoters = heads_mod.paren_promoters(merged, labels, classes=counts, ratio=cfg.promoter_ratio)
    counting = heads_mod.counting_heads(
        model,
        [(groups[k], k) for k in counts],
        caches=[caches[k] for k in counts],
        head_logits=[hls[k] for k in counts],
        correct_index=[col[k] for k in counts],
    )
    # attention of the top heads on one example per count
    show = []
    for k in counts:
        show += [h for h in promoters.heads(k, 2) if h not in show]
    show += [h for h in counting.heads(3) if h not in show]
    examples = {}
    for k in counts:
        toks = groups[k][0]
        pats = torch.stack([caches[k][hook_name("pattern", layer)][0, h] for layer, h in show])
        examples[k] = {
            "tokens": [model.tokenizer.decode([t]) for t in toks.tolist()],
            "heads": [head_label(layer, h) for layer, h in show],
            "patterns": pats.float().cpu(),
        }
    del caches
    timings["lens_and_heads"] = time.perf_counter() - t0

    # 3b: patching attn_out / mlp_out (clean into counterfactual)
    t0 = time.perf_counter()
    pairs = task.pairs(model, ds, on_missing="skip")
    patch: dict = {}
    if not hasattr(patching, "sweep"):  # the engine's sweep has not landed in this checkout
        patch["unavailable"] = "codecircuits.patching.sweep is missing in this installation"
    for k in tqdm(pairs.n_opens if hasattr(patching, "sweep") else (), disable=not progress, desc="parens: patching"):
        sub = pairs.select(n_open=k, limit=cfg.pairs_per_n)
        clean, corrupted = sub.tokens(model)
        c_ids, w_ids = sub.answer_ids()
        metric = _logit_diff_metric(c_ids, w_ids)
        entry: dict[str, list[float]] = {"corrupted_count": [float(sub.pairs[0].corrupted_n_open)]}
        for site in ("attn_out", "mlp_out"):
            res = patching.sweep(model, clean, corrupted, metric, site=site, by=("layer",), progress=False)
            entry[site] = res.recovery.reshape(-1).tolist()
            entry["clean_logit_diff"] = [float(res.source.mean())]
            entry["corrupted_logit_diff"] = [float(res.base.mean())]
        patch[k] = entry
    timings["patching"] = time.perf_counter() - t0

    # 6: ablate candidate heads one at a time; amplify the top promoters of the hardest count
    t0 = time.perf_counter()
    iv = ds.select(limit=cfg.intervention_prompts_per_n)
    iv_groups = {k: toks for k, (_, toks) in iv.groups(model).items()}
    base = _acc_and_ld(model, iv_groups, paren_ids, wrong_of, cfg.batch_size)
    cand: list[tuple[int, int]] = []
    per = max(1, cfg.n_candidates // (len(counts) + 1))
    for k in counts:
        cand += [h for h in promoters.heads(k, per) if h not in cand]
    cand += [h for h in counting.heads(per) if h not in cand]
    cand = cand[: cfg.n_candidates]
    abl_rows = []
    for layer, h in tqdm(cand, disable=not progress, desc="parens: head ablation"):
        with ablation.ablate(model, heads=[(layer, h)], kind="zero"):
            r = _acc_and_ld(model, iv_groups, paren_ids, wrong_of, cfg.batch_size)
        row = {"head": head_label(layer, h), "layer": layer, "head_index": h}
        for k in counts:
            row[f"accuracy_{k}"] = r[k][0]
            row[f"d_accuracy_{k}"] = r[k][0] - base[k][0]
            row[f"d_logit_diff_{k}"] = r[k][1] - base[k][1]
        abl_rows.append(row)
    ablation_out = {
        "candidates": [head_label(layer, h) for layer, h in cand],
        "baseline": {k: {"accuracy": base[k][0], "logit_diff": base[k][1]} for k in counts},
        "rows": abl_rows,
    }
    timings["ablation"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    hardest = min(counts, key=lambda k: (base[k][0], base[k][1]))
    scale_rows = []
    for ranking in cfg.scale_rankings:
        for top_k in cfg.scale_top_k:
            top = promoters.heads(hardest, top_k, min_logit=0.0, by=ranking)
            if not top:
                continue
            for c in cfg.scale_factors:
                with ablation.scale_heads(model, {hd: c for hd in top}):
                    r = _acc_and_ld(model, iv_groups, paren_ids, wrong_of, cfg.batch_size)
                row = {"ranking": ranking, "top_k": len(top), "factor": c, "heads": [head_label(a, b) for a, b in top]}
                row.update({f"accuracy_{k}": r[k][0] for k in counts})
                row.update({f"logit_diff_{k}": r[k][1] for k in counts})
                row["accuracy"] = r[hardest][0]
                scale_rows.append(row)
    best = max(scale_rows, key=lambda r: (r["accuracy"], r[f"logit_diff_{hardest}"]), default=None)
    scaling_out = {
        "hardest": hardest,
        "baseline": base[hardest][0],
        "baseline_logit_diff": base[hardest][1],
        "rows": scale_rows,
        "best": best,
    }
    timings["scaling"] = time.perf_counter() - t0

    # 7: real code
    t0 = time.perf_counter()
    mined_out: dict = {"available": False}
    if cfg.mined:
        try:
            mp = task.mined(
                model,
                corpus,
                counts=counts,
                window=cfg.mined_window,
                max_per_count=cfg.mined_per_count,
                max_chars=cfg.mined_max_chars,
            )
        except InputError as e:
            mined_out = {"available": False, "reason": str(e)}
        else:
            mined_out = _mined_readouts(model, mp, counts, paren_ids, wrong_of, token_ids, promoters, cfg)
    timings["mined"] = time.perf_counter() - t0

    return ParensStudy(
        model_name=model_name(model),
        config=cfg,
        counts=counts,
        paren_ids=paren_ids,
        wrong_of=wrong_of,
        accuracy=accuracy,
        predictions=preds,
        lens=lenses,
        contributions=contribs,
        head_logits=hls,
        promoters=promoters,
        counting=counting,
        patching=patch,
        ablation=ablation_out,
        scaling=scaling_out,
        mined=mined_out,
        examples=examples,
        post_attention_norm=lens.has_post_attention_norm(model),
        timings=timings,
    )


@torch.no_grad()
def _mined_readouts(model, mp, counts, paren_ids, wrong_of, token_ids, promoters, cfg) -> dict:
    """Accuracy, emergence and the template's top promoters on windows of real code, per count and depth."""
    out = {"available": True, "corpus": mp.corpus, "window": mp.window, "candidates": mp.candidates, "by_count": {}}
    col = {k: i for i, k in enumerate(counts)}
    for k in counts:
        if not (mp.n_close == k).any():
            out["by_count"][k] = {"n": 0}
            continue
        sub = mp.select(k)
        logits, cache = lens.run_cache(model, sub.tokens)
        pred = logits[:, -1].argmax(-1).cpu()
        correct = pred == sub.label_ids
        among = logits[:, -1][:, token_ids].argmax(-1).cpu() == col[k]  # right count among the paren tokens
        ll = lens.logit_diff_lens(model, sub.tokens, paren_ids[k], paren_ids[wrong_of[k]], cache=cache, logits=logits)
        hl = lens.head_logits(model, sub.tokens, token_ids, cache=cache)
        tops = promoters.heads(k, 5)
        rel = []
        for layer, h in tops:
            v = hl.values[:, layer, h]
            others = [j for j in range(v.shape[-1]) if j != col[k]]
            rel.append(float((v[:, col[k]] - v[:, others].mean(-1)).mean()))
        by_depth = {}
        for d in sorted(set(sub.depth.tolist())):
            sel = sub.depth == d
            by_depth[int(d)] = {
                "n": int(sel.sum()),
                "accuracy": float(correct[sel].float().mean()),
                "paren_accuracy": float(among[sel].float().mean()),
            }
        out["by_count"][k] = {
            "n": len(sub),
            "accuracy": float(correct.float().mean()),
            "paren_accuracy": float(among.float().mean()),
            "emergence_layer": ll.emergence_layer(cfg.emergence_fraction),
            "lens_post_mean": ll.post().mean(-1).tolist(),
            "final_logit_diff": float(ll.final.mean()),
            "template_promoters": [head_label(a, b) for a, b in tops],
            "template_promoters_mean_logit": rel,
            "by_depth": by_depth,
        }
    return out


# ----------------------------------------------------------------------------------------------------------------
# the HTML report


def _fmt_layer(x) -> str:
    return "never" if x is None else f"layer {x}"


def build_report(study: ParensStudy):
    """The study's self-contained HTML report (see :class:`codecircuits.report.Report`)."""
    from ..report import Report

    s = study
    counts = s.counts
    n_layers = s.lens[counts[0]].post().shape[0]
    r = Report(
        title=f"Closing parentheses on {s.model_name}",
        subtitle="Miller, Rai and Yao (2025), 'Mechanistic Understanding of Language Models in Syntactic Code "
        "Completion', reproduced with every number measured",
        meta={"prompts per count": s.config.prompts_per_n, "split": s.config.split, "seed": s.config.seed},
    )
    r.section(
        "Task and accuracy",
        text="Prompts '#print the string {num}\\nprint(' + 'str(' * n + '{num}'; the answer is one token that "
        "closes all n + 1 parens. Accuracy is top-1 on the evaluated prompts of the test split.",
    )
    for caveat in s.caveats:
        r.text("Caveat: " + caveat + ".")
    r.metrics(s.key_metrics(), labels={f"accuracy_{k}": f"accuracy, {k} paren{'s' * (k > 1)}" for k in counts})
    r.code(task.prompt_text(max(counts) - 1, 123) + task.label_text(max(counts)), title="the hardest prompt and label")
    r.table(
        [
            {
                "parens": k,
                "label": task.label_text(k),
                "wrong (logit diff against)": task.label_text(s.wrong_of[k]),
                "accuracy": s.accuracy[k],
                "most common prediction": max(set(s.predictions[k]), key=s.predictions[k].count),
            }
            for k in counts
        ],
        caption="accuracy per number of closing parens",
    )

    r.section(
        "Where the answer emerges",
        text="Logit lens of logit(correct) - logit(wrong) at every resid_pre and resid_post, the final norm's scale "
        f"frozen from the clean run. Emergence = first layer from which the mean stays at >= "
        f"{s.config.emergence_fraction:g} of its final value: "
        + "; ".join(f"{k} parens: {_fmt_layer(s.emergence[k])}" for k in counts)
        + ".",
    )
    r.line_chart(
        list(range(n_layers)),
        {f"{k} parens": s.lens[k].post().mean(-1).tolist() for k in counts},
        title="logit difference read from resid_post",
        x_title="layer",
        y_title="logit diff (correct - wrong)",
    )
    r.heatmap(
        torch.stack([s.lens[k].mean() for k in counts]).tolist(),
        x_labels=s.lens[counts[0]].labels,
        y_labels=[f"{k} parens" for k in counts],
        title="logit lens at every resid_pre / resid_post",
        x_title="site",
        y_title="parens",
        center=0.0,
        value_label="logit diff",
    )

    r.section(
        "Attention versus MLP",
        text="Direct contribution of each sublayer's output to the logit difference (frozen final scale), and "
        "activation patching of attn_out / mlp_out from the clean into the counterfactual run (recovery: 0 = "
        "counterfactual, 1 = clean). Attention's share of the absolute direct effect: "
        + "; ".join(f"{k} parens {s.attn_share[k]:.2f}" for k in counts)
        + ". Net direct effect of all attention / all MLP sublayers: "
        + "; ".join(
            f"{k} parens {float(s.contributions[k].attn.sum(0).mean()):.2f} / "
            f"{float(s.contributions[k].mlp.sum(0).mean()):.2f}"
            for k in counts
        )
        + ".",
    )
    r.line_chart(
        list(range(n_layers)),
        {
            **{f"attn {k}": s.contributions[k].attn.mean(-1).tolist() for k in counts},
            **{f"mlp {k}": s.contributions[k].mlp.mean(-1).tolist() for k in counts},
        },
        title="direct contribution per sublayer",
        x_title="layer",
        y_title="logit diff",
    )
    if "unavailable" in s.patching:
        r.text(f"Sublayer patching was not run: {s.patching['unavailable']}.")
    for site in ("attn_out", "mlp_out"):
        rows = [k for k in counts if k in s.patching]
        if rows:
            r.heatmap(
                [s.patching[k][site] for k in rows],
                x_labels=list(range(n_layers)),
                y_labels=[f"{k}->{int(s.patching[k]['corrupted_count'][0])} parens" for k in rows],
                title=f"patching {site}: recovery of the clean logit difference",
                x_title="layer",
                y_title="pair (clean -> counterfactual count)",
                center=0.0,
                value_label="recovery",
            )

    r.section(
        "Paren-promoting heads",
        text=f"Per-head direct logits on the paren tokens at the answer position. A head promotes a token when its "
        f"logit is >= {s.promoters.ratio:g} x its largest paren logit; precision, recall and F1 are against the "
        "labels over all counts.",
    )
    for k in counts:
        r.table(s.promoters.top(5, k), caption=f"top promoters of {task.label_text(k)}")
    ci = {k: i for i, k in enumerate(counts)}
    for k in counts:
        r.heatmap(
            s.promoters.mean_logit[ci[k]].tolist(),
            x_labels=list(range(s.promoters.f1.shape[-1])),
            y_labels=list(range(n_layers)),
            title=f"{k} parens: each head's direct logit on the correct token minus the other paren tokens",
            x_title="head",
            y_title="layer",
            center=0.0,
            value_label="relative logit",
        )

    r.section(
        "Counting heads",
        text="Heads whose attention from the answer position to the '(' tokens tracks how many parens are open "
        "(Pearson correlation over prompts), whether their output promotes a count that follows it (output_corr), "
        "and how often their top paren token is the right one (promotes_k).",
    )
    r.table(s.counting.top(10), caption="heads ranked by |attention-count correlation| x sqrt(paren attention)")
    for k in counts:
        ex = s.examples[k]
        r.attention(
            ex["tokens"],
            ex["patterns"],
            head_labels=ex["heads"],
            title=f"{k} parens: top promoters and counting heads",
        )

    r.section(
        "Head ablation and amplification",
        text="Each candidate head zero-ablated alone (accuracy and logit-difference change per count), then the top "
        f"promoters of the hardest count ({s.scaling['hardest']} parens, baseline accuracy "
        f"{s.scaling['baseline']:.2f}) multiplied by c.",
    )
    if s.ablation["rows"]:
        r.table(s.ablation["rows"], caption="single-head zero ablation")
    if s.scaling["rows"]:
        r.table(
            [
                {k: v for k, v in row.items() if k != "heads"} | {"heads": " ".join(row["heads"])}
                for row in s.scaling["rows"]
            ],
            caption="amplifying the top promoters of the hardest count (ranked by F1 as in the paper's code, or by "
            "mean direct logit)",
        )

    r.section(
        "Real code", text="The same readouts on windows of held-out code that end just before a closing-paren token."
    )
    if s.mined.get("available"):
        r.table(
            [
                {
                    "parens": k,
                    "prompts": v.get("n", 0),
                    "accuracy": v.get("accuracy"),
                    "right count among paren tokens": v.get("paren_accuracy"),
                    "emergence layer": v.get("emergence_layer"),
                    "candidates in corpus": s.mined["candidates"].get(k),
                }
                for k, v in s.mined["by_count"].items()
            ],
            caption=f"corpus {s.mined['corpus']}, window {s.mined['window']} tokens",
        )
    else:
        r.text(f"Not run: {s.mined.get('reason', 'disabled in the config')}.")
    r.data(s.to_json(), "results")
    return r
