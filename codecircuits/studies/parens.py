"""The closing-parenthesis study (Miller, Rai and Yao 2025, METHODS §2) end to end on one model.

Composes the task (:mod:`codecircuits.tasks.parens`), the lens (:mod:`codecircuits.lens`), the heads
(:mod:`codecircuits.heads`) and the patching/ablation engine (:mod:`codecircuits.patching`,
:mod:`codecircuits.ablation`):

1. accuracy per number of closing parens;
2. logit lens of the correct-minus-wrong logit difference at every ``resid_pre`` / ``resid_post``;
3. attention versus MLP: direct contributions of each sublayer, and patching ``attn_out`` / ``mlp_out``
   from clean into counterfactual runs at the answer position and at the open-paren positions;
4. paren-promoting heads with precision, recall and F1;
5. counting heads: attention to the ``(`` tokens that tracks the number of open parens once the prompt's length
   and its ``(`` tokens are regressed out, on prompts that close some calls first;
6. zero-ablation of candidate heads and of each count's promoters (against random heads), and amplification of
   the failing count's promoters and of the authors' general heads (against random heads);
7. the same readouts on prompts mined from real held-out code.

Heads, the reported layers and the failing count are chosen on the ``selection_split`` (train) prompts and every
number is measured on the ``split`` (test) prompts, with a 95% bootstrap interval over prompts; ``claims`` are the
paper's claims with their verdicts (:class:`codecircuits.intervals.Claim`).

The "wrong" token of a prompt with ``k`` open parens is the neighbouring count: ``k + 1`` parens when the
dataset has that token, else ``k - 1`` (the counterfactual's answer, as in the paper's patching).

    >>> study = run(model, ParensConfig(prompts_per_n=24))
    >>> study.accuracy, study.emergence, study.intervals["accuracy"], study.claims
    >>> study.save("reports/parens")     # report.html + results.json
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .. import ablation as ablation_mod
from .. import heads as heads_mod
from .. import intervals, lens
from ..core.metrics import logit_diff
from ..core.runner import Receiver
from ..core.sites import head_label, hook_name
from ..errors import InputError
from ..patching import patch_layers
from ..tasks import parens as task
from .common import Study, check_config, claim_specs, configure, model_name, result, setting, timed

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
    """Sizes and settings of a study run (defaults keep smollm2-135m under 100 s on this project's 2-core CPU).

    Heads (promoters, counting heads), the layers whose patching is reported and the hardest count are chosen on
    the ``selection_split`` prompts; every number reported for them is measured on the ``split`` prompts."""

    n_values: tuple[int, ...] = setting((0, 1, 2, 3), "numbers of closing parens in the prompts")
    n_numbers: int = setting(500, "numbers drawn for the prompts")
    seed: int = setting(20, "seed of the dataset")
    split: str = setting("test", "split the reported numbers are measured on: train or test")
    selection_split: str = setting("train", "split the heads, layers and the hardest count are chosen on")
    selection_prompts_per_n: int = setting(12, "prompts per paren count for choosing heads (one forward)")
    prompts_per_n: int = setting(20, "evaluation prompts per paren count: accuracy, lens, heads' F1, interventions")
    pairs_per_n: int = setting(20, "counterfactual pairs per count for sublayer patching (<= prompts_per_n)")
    patch_stride: int = setting(3, "patch at the answer position every this many layers (and the selected layers)")
    paren_patch_stride: int = setting(15, "patch at the open-paren positions every this many layers")
    patch_chunk: int = setting(5, "layers whose patching cells share one batched run")
    counting_closed: tuple[int, ...] = setting(
        (0, 1, 2, 3), "str( calls closed before the open ones in the counting heads' prompts"
    )
    counting_prompts_per_cell: int = setting(2, "counting prompts per (open, closed) cell, evaluation split")
    counting_selection_per_cell: int = setting(2, "counting prompts per (open, closed) cell, selection split")
    n_candidates: int = setting(8, "heads ablated one at a time")
    ablate_top_k: int = setting(3, "promoters of a count ablated together (against as many random heads)")
    n_random: int = setting(4, "random head sets drawn for each control")
    promoter_ratio: float = setting(
        0.8, "a head promotes a prompt's answer when its direct logit for it is >= ratio x its largest paren logit"
    )
    scale_top_k: tuple[int, ...] = setting((5,), "numbers of top promoters of the failing count amplified")
    scale_factors: tuple[float, ...] = setting((1.5, 2.0), "amplification factors c for the failing count's promoters")
    scale_rankings: tuple[str, ...] = setting(
        ("f1", "logit"), "promoter rankings of the failing count: f1 and/or logit (direct logit)"
    )
    general_shares: tuple[float, ...] = setting(
        (0.8, 1.0), "shares of the heads that promote several counts amplified (the authors' follow-up code)"
    )
    general_factors: tuple[float, ...] = setting(
        (1.1, 1.2, 1.3, 1.4, 1.5, 1.6), "amplification factors c of the general heads (the authors' 1.1-1.6)"
    )
    general_min_f1: float = setting(0.5, "a head promotes a count when its train F1 for it is >= this")
    general_min_counts: int = setting(2, "a general head promotes at least this many counts")
    intervene_at: str = setting(
        "answer", "positions where heads are ablated or scaled: answer (the last position) or all"
    )
    n_resamples: int = setting(1000, "bootstrap resamples of every interval")
    mined: bool = setting(True, "readouts on prompts mined from real held-out code")
    mined_per_count: int = setting(8, "mined prompts per paren count")
    mined_window: int = setting(24, "tokens of context of a mined prompt")
    mined_max_chars: int | None = setting(
        200_000, "read at most this many characters of the corpus (none: all)", convert=int
    )
    emergence_fraction: float = setting(
        0.5, "the answer emerges at the first layer from which the logit difference stays >= this share of its final"
    )
    batch_size: int = setting(32, "prompts per forward")

    def __post_init__(self):
        check_config(self, at_least={
            1: "prompts_per_n selection_prompts_per_n pairs_per_n batch_size paren_patch_stride patch_stride patch_chunk "
               "counting_selection_per_cell counting_prompts_per_cell n_random n_resamples mined_per_count ablate_top_k",
            0: "n_candidates",
        }, choices={"split": task.SPLITS, "selection_split": task.SPLITS, "scale_rankings": ("f1", "logit"),
                    "intervene_at": ("answer", "all")})
        if self.pairs_per_n > self.prompts_per_n:
            raise InputError(
                f"pairs_per_n ({self.pairs_per_n}) must not exceed prompts_per_n ({self.prompts_per_n}): the pairs' "
                "clean prompts are the evaluation prompts."
            )
        if any(c <= 0 for c in (*self.scale_factors, *self.general_factors)):
            raise InputError(f"amplification factors must be positive, got {self.scale_factors + self.general_factors}.")
        if any(not 0 < x <= 1 for x in self.general_shares):
            raise InputError(f"general_shares must lie in (0, 1], got {self.general_shares}.")

    @classmethod
    def tiny(cls, **kw) -> ParensConfig:
        """Small sizes for tests and smoke runs on tiny models (the registry's smoke settings)."""
        from .registry import get

        return cls(**{**get("parens").smoke, **kw})


@dataclass(frozen=True)
class ParensStudy(Study):
    """Every result of a study run; :meth:`to_json` has every number, :meth:`report` the HTML."""

    model_name: str = result(key="model")
    config: ParensConfig = result()
    counts: tuple[int, ...] = result()  # numbers of closing parens studied (n + 1)
    paren_ids: dict[int, int] = result(key="paren_token_ids")
    wrong_of: dict[int, int] = result(key="wrong_count")  # count -> the neighbouring count used as the wrong answer
    accuracy: dict[int, float] = result()
    predictions: dict[int, list[str]] = result()  # count -> predicted tokens of the eval prompts
    lens: dict[int, lens.LogitDiffLens] = result(key="logit_lens", json=lambda d: {
        k: {"sites": v.labels, "mean": v.mean(), "std": v.values.std(-1), "final": v.final.mean()}
        for k, v in d.items()})
    contributions: dict[int, lens.SublayerContributions] = result(json=lambda d: {
        k: {"attn": v.attn.mean(-1), "mlp": v.mlp.mean(-1), "attn_sum": v.attn.sum(0).mean(),
            "mlp_sum": v.mlp.sum(0).mean(), "embed": v.embed.mean(), "bias": v.bias.mean(), "total": v.total.mean()}
        for k, v in d.items()})
    head_logits: dict[int, lens.HeadLogits] = result(key="head_logits_mean", json=lambda d: {
        k: {"tokens": list(v.token_labels), "values": v.values.mean(0)} for k, v in d.items()})
    promoters: heads_mod.PromoterHeads = result(json=lambda pr: {
        "classes": list(pr.classes), "ratio": pr.ratio, "support": list(pr.support), "precision": pr.precision,
        "recall": pr.recall, "f1": pr.f1, "mean_logit": pr.mean_logit,
        "top": {c: pr.top(5, c).to_dict("records") for c in pr.classes}})
    counting: heads_mod.CountingHeads = result(json=lambda c: {
        "counts": list(c.counts), "attn_mass": c.attn_mass, "per_paren": c.per_paren, "attn_corr": c.attn_corr,
        "output_corr": c.output_corr, "promotes_correct": c.promotes_correct, "top": c.top(8).to_dict("records")})
    patching: dict[int, dict[str, list[float]]] = result()  # count -> {"attn_out": [layer], "mlp_out": [layer], ...}
    ablation: dict = result()  # candidate heads, baseline and per-head accuracy / logit diff per count
    scaling: dict = result()  # hardest count, configs and their accuracies
    mined: dict = result()  # accuracy and emergence on real code
    examples: dict = result(json=None)  # count -> (tokens, patterns of top heads) for attention views
    post_attention_norm: bool = result(False, json=None)
    timings: dict[str, float] = result(default_factory=dict, key="timings_s")
    promoters_eval: heads_mod.PromoterHeads | None = result(  # the same measure on the evaluation prompts
        None, key="promoters_eval_f1", json=lambda p: None if p is None else p.f1)
    tracking: dict = result(default_factory=dict, key="count_tracking")  # counting heads, token count regressed out
    intervals: dict = result(default_factory=dict)  # bootstrap intervals of the headline numbers
    claims: list = result(default_factory=list)  # intervals.Claim rows
    JSON_DIGITS = None

    # ------------------------------------------------------------------------------------------ summaries
    @property
    def emergence(self) -> dict[int, int | None]:
        """count -> first layer from which the mean logit difference stays >= fraction × final."""
        return {k: v.emergence_layer(self.config.emergence_fraction) for k, v in self.lens.items()}

    @property
    def caveats(self) -> list[str]:
        """Limits of this run's numbers that a reader must know."""
        out = []
        if self.config.selection_split == self.config.split:
            out.append(
                f"heads were chosen and measured on the same split ({self.config.split}): the numbers of the chosen "
                "heads are optimistic"
            )
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

    def json_extra(self) -> dict:
        return {"paper_claims": PAPER_CLAIMS, "caveats": self.caveats, "emergence_layer": self.emergence,
                "attn_share": self.attn_share}

    def summary_text(self) -> str:
        """What ``codecircuits parens`` prints: accuracy and emergence per count, then each claim's verdict."""
        acc = ", ".join(f"{k}: {v:.2f}" for k, v in self.accuracy.items())
        emerge = ", ".join(f"{k}: {v}" for k, v in self.emergence.items())
        lines = [f"accuracy per number of parens  {acc}", f"answer emerges at layer        {emerge}"]
        for c in self.claims:
            lines.append(f"{c.verdict:>15}  {c.claim}" + (f"  {c.evidence.format()}" if c.evidence else ""))
        return "\n".join(lines)

    def metrics(self) -> dict[str, float | None]:
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
        pooled = self.ablation.get("pooled")
        if pooled:
            m["promoter_ablation_drop"] = round(float(pooled["drop"]["estimate"]), 4)
            m["random_ablation_drop"] = round(float(pooled["random_drop"]["estimate"]), 4)
        if self.tracking.get("available"):
            m["counting_partial_corr"] = round(float(self.tracking["top_partial_corr"]["estimate"]), 4)
        return m

    key_metrics = metrics

    def report(self, model=None):
        """The study as a :class:`codecircuits.report.Report`."""
        return build_report(self)


# ----------------------------------------------------------------------------------------------------------------
# the run: data, selection split, evaluation split, counting prompts, patching, ablation, amplification, claims


def _neighbour(counts: tuple[int, ...], k: int) -> int:
    if k + 1 in counts:
        return k + 1
    if k - 1 in counts:
        return k - 1
    raise InputError(f"The study needs at least two adjacent paren counts; got {counts}.")


def _iv(x: intervals.Interval | None):
    return None if x is None else x.to_json()


def _readout(logits: torch.Tensor, correct_id: int, wrong_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(correct [n], logit diff [n])`` at the last position."""
    last = logits[:, -1].float().cpu()
    return last.argmax(-1) == correct_id, last[:, correct_id] - last[:, wrong_id]


@dataclass(frozen=True)
class _Setup:
    """The prompts of a run: heads are chosen on ``sel_ds`` and measured on ``ev_ds``."""

    sel_ds: task.ParensDataset
    ev_ds: task.ParensDataset
    counts: tuple[int, ...]
    paren_ids: dict[int, int]
    wrong_of: dict[int, int]

    @property
    def token_ids(self) -> list[int]:
        return [self.paren_ids[k] for k in self.counts]

    @property
    def col(self) -> dict[int, int]:
        return {k: i for i, k in enumerate(self.counts)}

    def ids(self, k: int) -> tuple[int, int]:
        """The correct and the wrong (neighbouring count's) token of ``k`` parens."""
        return self.paren_ids[k], self.paren_ids[self.wrong_of[k]]


def _prepare(model, cfg: ParensConfig) -> _Setup:
    ds = task.dataset(model, n_values=cfg.n_values, n_numbers=cfg.n_numbers, seed=cfg.seed, split=None)
    sel_ds = ds.select(split=cfg.selection_split, limit=cfg.selection_prompts_per_n)
    ev_ds = ds.select(split=cfg.split, limit=cfg.prompts_per_n)
    counts = ev_ds.n_opens
    return _Setup(sel_ds, ev_ds, counts, dict(ds.label_ids), {k: _neighbour(counts, k) for k in counts})


@dataclass(frozen=True)
class _Selection:
    """What the selection split chooses: heads, the layers whose patching is reported, the hardest count."""

    promoters: heads_mod.PromoterHeads
    counting: heads_mod.CountingHeads
    accuracy: dict[int, float]
    hardest: int
    best_layer: dict[int, dict[str, int]]  # count -> sublayer -> the layer of largest mean direct effect


def _select(model, cfg: ParensConfig, su: _Setup) -> _Selection:
    """Promoters, the older measure's counting heads, the reported layers and the hardest count, on the selection
    split (one cached forward per count)."""
    groups = {k: toks for k, (_, toks) in su.sel_ds.groups(model).items()}
    found = heads_mod.find_paren_heads(
        model, [(groups[k], k) for k in su.counts], su.token_ids, ratio=cfg.promoter_ratio
    )
    accuracy, ld_mean, best_layer = {}, {}, {}
    for i, k in enumerate(su.counts):
        correct, ld = _readout(found.logits[i], *su.ids(k))
        accuracy[k], ld_mean[k] = float(correct.float().mean()), float(ld.mean())
        c = lens.sublayer_contributions(model, groups[k], *su.ids(k), cache=found.caches[i])
        best_layer[k] = {"attn_out": int(c.attn.mean(-1).argmax()), "mlp_out": int(c.mlp.mean(-1).argmax())}
    hardest = min(su.counts, key=lambda k: (accuracy[k], ld_mean[k]))
    return _Selection(found.promoters, found.counting, accuracy, hardest, best_layer)


@dataclass
class _Evaluated:
    """The evaluation prompts of one count, cached once (a :class:`Receiver`) for the lens and every intervention."""

    k: int
    prompts: list
    tokens: torch.Tensor
    receiver: Receiver
    correct_id: int
    wrong_id: int

    @property
    def n(self) -> int:
        return int(self.tokens.shape[0])

    def base(self):
        return _readout(self.receiver.logits, self.correct_id, self.wrong_id)

    def run(self, hooks, layer: int, at: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(correct [n], logit diff [n])`` with ``hooks`` (changing layers >= ``layer``) in effect at the answer
        position only (``at="answer"``) or at every position (``"all"``)."""
        start = self.tokens.shape[1] - 1 if at == "answer" else 0
        rows = torch.arange(self.n, device=self.tokens.device)
        return _readout(self.receiver.run(layer, start, rows, hooks), self.correct_id, self.wrong_id)


@dataclass
class _Evaluation:
    """The evaluation split's readouts per count, and its cached runs for the interventions."""

    runs: dict[int, _Evaluated] = field(default_factory=dict)
    lenses: dict = field(default_factory=dict)
    contributions: dict = field(default_factory=dict)
    head_logits: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)
    predictions: dict = field(default_factory=dict)
    correct: dict = field(default_factory=dict)
    logit_diff: dict = field(default_factory=dict)
    promoters: heads_mod.PromoterHeads | None = None
    merged: lens.HeadLogits | None = None
    labels: torch.Tensor | None = None

    def intervene(self, hooks, heads, at: str, counts) -> dict:
        """``{count: (correct, logit diff)}`` with ``hooks`` on ``heads`` (from their first layer) in effect."""
        lo = min(a for a, _ in heads)
        return {k: self.runs[k].run(hooks, lo, at) for k in counts}


def _evaluate(model, cfg: ParensConfig, su: _Setup, progress: bool) -> _Evaluation:
    """One cached forward per count of the evaluation split: the lens, contributions, head logits, accuracy."""
    names = lens.cache_names(model, extra=("attn.hook_pattern",))  # the lens hooks and the attention patterns
    e = _Evaluation()
    for k, (ps, toks) in tqdm(su.ev_ds.groups(model).items(), disable=not progress, desc="parens: evaluation"):
        c, w = su.ids(k)
        n = toks.shape[0]
        rec = Receiver(model, toks, extra_names=names, metric=logit_diff(torch.full((n,), c), torch.full((n,), w)))
        e.runs[k] = _Evaluated(k, ps, toks, rec, c, w)
        e.correct[k], e.logit_diff[k] = e.runs[k].base()
        e.accuracy[k] = float(e.correct[k].float().mean())
        e.predictions[k] = [model.tokenizer.decode([i]) for i in rec.logits[:, -1].argmax(-1).tolist()]
        e.lenses[k] = lens.logit_diff_lens(model, toks, c, w, cache=rec.cache, logits=rec.logits)
        e.contributions[k] = lens.sublayer_contributions(model, toks, c, w, cache=rec.cache)
        e.head_logits[k] = lens.head_logits(model, toks, su.token_ids, cache=rec.cache)
    e.promoters, e.merged, e.labels = heads_mod.promoters_of(
        [e.head_logits[k] for k in su.counts], su.counts, ratio=cfg.promoter_ratio
    )
    return e


def _attention_examples(model, su: _Setup, sel: _Selection, ev: _Evaluation) -> dict:
    """The attention of the top promoters and counting heads on one evaluation prompt per count."""
    show = []
    for k in su.counts:
        show += [h for h in sel.promoters.heads(k, 2) if h not in show]
    show += [h for h in sel.counting.heads(2) if h not in show]
    out = {}
    for k in su.counts:
        run = ev.runs[k]
        pats = torch.stack([run.receiver.cache[hook_name("pattern", layer)][0, h] for layer, h in show])
        out[k] = {
            "tokens": [model.tokenizer.decode([t]) for t in run.tokens[0].tolist()],
            "heads": [head_label(layer, h) for layer, h in show],
            "patterns": pats.float().cpu(),
        }
    return out


def _promoter_f1(cfg: ParensConfig, su: _Setup, sel: _Selection, ev: _Evaluation) -> dict:
    """F1 on the evaluation prompts of each count's top promoter chosen on the selection split, with intervals."""
    promotes = heads_mod.promoted(ev.merged.values, cfg.promoter_ratio).double()  # [b, l, h, t]
    out = {}
    for k in su.counts:
        top = sel.promoters.heads(k, 1)
        if not top:
            continue
        (layer, h), i = top[0], su.col[k]
        out[k] = {
            "head": head_label(layer, h),
            "f1_selection": float(sel.promoters.f1[i, layer, h]),
            "f1": intervals.statistic(
                intervals.f1, promotes[:, layer, h, i], (ev.labels == i).double(), n_resamples=cfg.n_resamples
            ),
        }
    return out


def _closed_prompts_forward(model, cfg: ParensConfig, cds) -> dict:
    """The counting prompts (``str(`` calls closed first) of both splits, one forward per token length: per split
    the ``(tokens, n_open)`` groups, their attention patterns and ``(n_open, n_closed, correct)`` per prompt."""
    both = task.ParensDataset(
        cds.select(split=cfg.selection_split, limit=cfg.counting_selection_per_cell).prompts
        + cds.select(split=cfg.split, limit=cfg.counting_prompts_per_cell).prompts,
        cds.n_values, cds.seed, cds.n_numbers, dict(cds.label_ids),
    )
    parts: dict = {"selection": ([], [], []), "evaluation": ([], [], [])}
    for ps, toks in both.by_length(model):
        logits, cache = lens.run_cache(model, toks, names=(), extra=("attn.hook_pattern",))
        pred = logits[:, -1].argmax(-1).cpu()
        for part, split in (("selection", cfg.selection_split), ("evaluation", cfg.split)):
            idx = [i for i, p in enumerate(ps) if p.split == split]
            if not idx:
                continue
            it = torch.tensor(idx)
            patterns = {n: cache[n][it] for n in (hook_name("pattern", la) for la in range(model.cfg.n_layers))}
            parts[part][0].append((toks[it], torch.tensor([float(ps[i].n_open) for i in idx])))
            parts[part][1].append(patterns)
            parts[part][2].extend((ps[i].n_open, ps[i].n_closed, bool(pred[i] == ps[i].label_id)) for i in idx)
        del cache
    return parts


def _count_tracking(model, cfg: ParensConfig, su: _Setup, counting: heads_mod.CountingHeads):
    """Counting heads with token count regressed out, on prompts that close some parens first: ``(json, the
    intervals of the top head, the older measure's head and random heads, the heads chosen)``; ``(json, None,
    None)`` when the tokenizer cannot make those prompts."""
    try:
        cds = task.closed_dataset(
            model, n_values=cfg.n_values, closed_values=cfg.counting_closed, n_numbers=cfg.n_numbers, seed=cfg.seed
        )
    except InputError as err:
        return {"available": False, "reason": str(err)}, None, None
    parts = _closed_prompts_forward(model, cfg, cds)
    tracks = {n: heads_mod.count_tracking(model, g, caches=c) for n, (g, c, _) in parts.items()}
    sel, tracking = tracks["selection"], tracks["evaluation"]
    chosen = sel.heads(3)
    R = cfg.n_resamples

    def signed_partial(head, sign_from) -> intervals.Interval:  # signed so that the head's own direction is up
        sign = float(torch.sign(sign_from.partial_corr[head].nan_to_num(0)) or 1.0)
        return tracking.partial_interval(head, sign=sign, n_resamples=R)

    raw_top = counting.heads(1)[0]  # the older measure's head (plain correlation on the paper's prompts)
    pc_top, pc_raw = signed_partial(chosen[0], sel), signed_partial(raw_top, tracking)
    rand = heads_mod.random_heads(model, 1, exclude=chosen, n_draws=max(cfg.n_random, 8), seed=cfg.seed)
    pc_rand = tracking.mean_abs_partial_interval([h for (h,) in rand], n_resamples=R)
    acc_closed = {}
    for k in su.counts:
        rows = [c for (o, _, c) in parts["evaluation"][2] if o == k]
        if rows:
            acc_closed[k] = intervals.mean(torch.tensor(rows, dtype=torch.float64), n_resamples=R)
    out = {
        "available": True,
        "closed_values": list(cfg.counting_closed),
        "n_selection": int(sel.n_open.numel()),
        "n_evaluation": int(tracking.n_open.numel()),
        "chosen": [head_label(a, b) for a, b in chosen],
        "partial_corr_selection": sel.partial_corr,
        "partial_corr": tracking.partial_corr,
        "raw_corr": tracking.raw_corr,
        "top": head_label(*chosen[0]),
        "top_partial_corr": _iv(pc_top),
        "raw_measure_head": head_label(*raw_top),
        "raw_measure_head_partial_corr": _iv(pc_raw),
        "random_abs_partial_corr": _iv(pc_rand),
        "table": tracking.top(8).to_dict("records"),
        "accuracy_with_closed_calls": {k: _iv(v) for k, v in acc_closed.items()},
    }
    return out, (pc_top, pc_raw, pc_rand), chosen


def _patch_sublayers(model, cfg: ParensConfig, su: _Setup, ev: _Evaluation, sel: _Selection, progress: bool):
    """``attn_out`` / ``mlp_out`` of one layer patched from the clean into the counterfactual run, at the answer
    position and at the open-paren positions (:func:`codecircuits.patching.patch_layers`): recovery per layer,
    and with an interval at the layer chosen on the selection split."""
    n_layers = int(model.cfg.n_layers)
    chosen_layers = {v for b in sel.best_layer.values() for v in b.values()}
    answer_layers = sorted(set(range(0, n_layers, cfg.patch_stride)) | chosen_layers)
    paren_layers = list(range(0, n_layers, cfg.paren_patch_stride))
    pairs = task.pairs(model, su.ev_ds, on_missing="skip")
    out: dict = {}
    for k in tqdm(pairs.n_opens, disable=not progress, desc="parens: patching"):
        sub = pairs.select(n_open=k, limit=cfg.pairs_per_n)
        donor = ev.runs[k]
        row_of = {p.text: i for i, p in enumerate(donor.prompts)}
        rows = torch.tensor([row_of[p.clean] for p in sub.pairs])
        clean, corrupted = sub.tokens(model)
        metric = logit_diff(*sub.answer_ids())
        rec = Receiver(model, corrupted, metric=metric)
        n_pos = int(clean.shape[1])
        all_c, _ = heads_mod.open_paren_counts(model, clean[:1])
        paren_pos = [i for i in range(n_pos) if all_c[0, i] > 0]
        kw = dict(donor_rows=rows, chunk=cfg.patch_chunk)
        answer = patch_layers(rec, donor.receiver, metric, answer_layers, [n_pos - 1], **kw)
        at_parens = patch_layers(rec, donor.receiver, metric, paren_layers, paren_pos, **kw)
        base, source = answer["attn_out"].base, answer["attn_out"].source
        entry: dict = {
            "corrupted_count": [float(sub.pairs[0].corrupted_n_open)],
            "n_pairs": len(sub),
            "clean_logit_diff": [float(source.mean())],
            "corrupted_logit_diff": [float(base.mean())],
            "paren_positions": paren_pos,
            "answer_layers": answer_layers,
            "paren_layers": paren_layers,
        }
        for key, res in [(s, answer[s]) for s in answer] + [(f"{s}_parens", at_parens[s]) for s in at_parens]:
            entry[key] = [float((v - base).mean() / (source - base).mean()) for v in res.per_example]
        for site in ("attn_out", "mlp_out"):
            layer = sel.best_layer[k][site]
            per_pair = answer[site].per_example[answer_layers.index(layer)]
            entry[f"{site}_selected_layer"] = layer
            entry[f"{site}_selected_recovery"] = _iv(
                intervals.statistic(intervals.recovery, per_pair, base, source, n_resamples=cfg.n_resamples)
            )
        out[k] = entry
    return out


def _ablation_candidates(cfg: ParensConfig, su: _Setup, sel: _Selection, chosen) -> list[tuple[int, int]]:
    """Each count's top promoter, the top counting heads (partial correlation, then the older measure)."""
    cand: list[tuple[int, int]] = []
    for k in su.counts:
        cand += [h for h in sel.promoters.heads(k, 1) if h not in cand]
    if chosen is not None:
        cand += [h for h in chosen[:2] if h not in cand]
    cand += [h for h in sel.counting.heads(2) if h not in cand]
    return cand[: cfg.n_candidates]


def _ablate(model, cfg: ParensConfig, su: _Setup, sel: _Selection, ev: _Evaluation, chosen, progress: bool):
    """Zero-ablation of single candidate heads, and of each count's promoters against random heads of the same
    number: ``(json, pooled intervals (drop, random drop, difference) or None)``."""
    at, R = cfg.intervene_at, cfg.n_resamples

    def ablated(hs, counts):
        return ev.intervene(ablation_mod.ablation_hooks(model, heads=hs, kind="zero"), hs, at, counts)

    cand = _ablation_candidates(cfg, su, sel, chosen)
    rows = []
    for layer, h in tqdm(cand, disable=not progress, desc="parens: head ablation"):
        r = ablated([(layer, h)], su.counts)
        row = {"head": head_label(layer, h), "layer": layer, "head_index": h}
        for k in su.counts:
            row[f"accuracy_{k}"] = float(r[k][0].float().mean())
            row[f"d_accuracy_{k}"] = row[f"accuracy_{k}"] - ev.accuracy[k]
            iv = intervals.mean(r[k][1] - ev.logit_diff[k], n_resamples=R)
            row[f"d_logit_diff_{k}"] = iv.estimate
            row[f"d_logit_diff_{k}_ci"] = [iv.low, iv.high]
        rows.append(row)
    drops, drops_rand, set_rows = [], [], []
    for k in su.counts:
        top = sel.promoters.heads(k, cfg.ablate_top_k)
        if not top:
            continue
        drop = ev.logit_diff[k] - ablated(top, (k,))[k][1]
        rand_sets = heads_mod.random_heads(model, len(top), exclude=top, n_draws=cfg.n_random, seed=cfg.seed + k)
        drop_r = torch.stack([ev.logit_diff[k] - ablated(rs, (k,))[k][1] for rs in rand_sets]).mean(0)
        drops.append(drop)
        drops_rand.append(drop_r)
        set_rows.append(
            {
                "count": k,
                "heads": [head_label(a, b) for a, b in top],
                "drop": _iv(intervals.mean(drop, n_resamples=R)),
                "random_drop": _iv(intervals.mean(drop_r, n_resamples=R)),
                "difference": _iv(intervals.statistic(intervals.mean_difference, drop, drop_r, n_resamples=R)),
            }
        )
    pooled = None
    if drops:
        d_all, r_all = torch.cat(drops), torch.cat(drops_rand)
        pooled = (
            intervals.mean(d_all, n_resamples=R),
            intervals.mean(r_all, n_resamples=R),
            intervals.statistic(intervals.mean_difference, d_all, r_all, n_resamples=R),
        )
    out = {
        "intervene_at": at,
        "candidates": [head_label(layer, h) for layer, h in cand],
        "baseline": {k: {"accuracy": ev.accuracy[k], "logit_diff": float(ev.logit_diff[k].mean())} for k in su.counts},
        "rows": rows,
        "promoter_sets": set_rows,
        "pooled": None if pooled is None else dict(zip(("drop", "random_drop", "difference"), map(_iv, pooled))),
    }
    return out, pooled


def _amplify(model, cfg: ParensConfig, su: _Setup, sel: _Selection, ev: _Evaluation) -> dict:
    """Amplification (``hook_z`` x c) of the failing count's promoters and of the authors' general heads, every
    configuration on every count; the best of each variant against random heads of the same number and c."""
    hardest, at, counts = sel.hardest, cfg.intervene_at, su.counts

    def scaled(hs, c, only):
        return ev.intervene(ablation_mod.scale_hooks(model, {hd: c for hd in hs}), hs, at, only)

    rows, per_prompt = [], []

    def add(variant, hs, c, extra):
        r = scaled(hs, c, counts)
        row = {"variant": variant, **extra, "n_heads": len(hs), "factor": c, "heads": [head_label(a, b) for a, b in hs]}
        row.update({f"accuracy_{k}": float(r[k][0].float().mean()) for k in counts})
        row.update({f"logit_diff_{k}": float(r[k][1].mean()) for k in counts})
        row["accuracy"] = row[f"accuracy_{hardest}"]
        rows.append(row)
        per_prompt.append((row, hs, r[hardest]))

    for ranking in cfg.scale_rankings:
        for top_k in cfg.scale_top_k:
            top = sel.promoters.heads(hardest, top_k, min_logit=0.0, by=ranking)
            if not top:
                continue
            for c in cfg.scale_factors:
                add("failing count", top, c, {"ranking": ranking, "share": None})
    general = sel.promoters.general(min_f1=cfg.general_min_f1, min_counts=cfg.general_min_counts)
    for share in cfg.general_shares:
        top = general[: max(1, int(round(share * len(general))))] if general else []
        if not top:
            continue
        for c in cfg.general_factors:
            add("general heads (authors)", top, c, {"ranking": "macro-f1", "share": share})

    def rank(row):
        return row["accuracy"], row[f"logit_diff_{hardest}"]

    best_by_variant = {}
    for variant in ("failing count", "general heads (authors)"):
        found = [x for x in per_prompt if x[0]["variant"] == variant]
        if found:
            row, hs, amplified = max(found, key=lambda x: rank(x[0]))
            rand_sets = heads_mod.random_heads(model, len(hs), exclude=hs, n_draws=cfg.n_random, seed=cfg.seed + 100)
            rand = [scaled(rs, row["factor"], (hardest,))[hardest] for rs in rand_sets]
            best_by_variant[variant] = _against_random(cfg, ev, hardest, row, amplified, rand)
    return {
        "hardest": hardest,
        "hardest_chosen_on": cfg.selection_split,
        "selection_accuracy": sel.accuracy,
        "baseline": ev.accuracy[hardest],
        "baseline_logit_diff": float(ev.logit_diff[hardest].mean()),
        "general_heads": [head_label(a, b) for a, b in general],
        "rows": rows,
        "best": max(rows, key=rank, default=None),
        "best_by_variant": best_by_variant,
        "intervene_at": at,
        "note": "the best configuration is picked on the evaluation prompts, so its accuracy is an optimistic "
        "estimate; the random control uses the same number of heads and the same factor",
    }


def _against_random(cfg: ParensConfig, ev: _Evaluation, k: int, row: dict, amplified, rand) -> dict:
    """An amplification's accuracy and gains on count ``k`` beside the mean of random heads', with intervals."""
    R = cfg.n_resamples
    corr_amp, ld_amp = amplified
    corr_r = torch.stack([x[0].double() for x in rand]).mean(0)
    ld_r = torch.stack([x[1] for x in rand]).mean(0)
    base_c, base_ld = ev.correct[k].double(), ev.logit_diff[k]
    return {
        "row": dict(row),
        "accuracy": _iv(intervals.mean(corr_amp.double(), n_resamples=R)),
        "accuracy_gain": _iv(intervals.mean(corr_amp.double() - base_c, n_resamples=R)),
        "logit_diff_gain": _iv(intervals.mean(ld_amp - base_ld, n_resamples=R)),
        "random_accuracy": _iv(intervals.mean(corr_r, n_resamples=R)),
        "random_accuracy_gain": _iv(intervals.mean(corr_r - base_c, n_resamples=R)),
        "random_logit_diff_gain": _iv(intervals.mean(ld_r - base_ld, n_resamples=R)),
        "gain_over_random": _iv(intervals.statistic(intervals.mean_difference, ld_amp, ld_r, n_resamples=R)),
    }


@dataclass(frozen=True)
class _Headlines:
    """The intervals of the headline numbers per count."""

    accuracy: dict
    logit_diff: dict
    emergence: dict
    net: dict  # count -> (attention's, MLP's net direct effect per prompt)

    def to_json(self, f1_eval: dict, R: int) -> dict:
        return {
            "accuracy": {k: _iv(x) for k, x in self.accuracy.items()},
            "logit_diff": {k: _iv(x) for k, x in self.logit_diff.items()},
            "emergence_layer": {k: _iv(x) for k, x in self.emergence.items()},
            "attn_net": {k: _iv(intervals.mean(a, n_resamples=R)) for k, (a, _) in self.net.items()},
            "mlp_net": {k: _iv(intervals.mean(m, n_resamples=R)) for k, (_, m) in self.net.items()},
            "promoter_f1": {k: {**v, "f1": _iv(v["f1"])} for k, v in f1_eval.items()},
        }


def _headlines(cfg: ParensConfig, su: _Setup, ev: _Evaluation) -> _Headlines:
    R, frac = cfg.n_resamples, cfg.emergence_fraction
    return _Headlines(
        {k: intervals.mean(ev.correct[k].double(), n_resamples=R) for k in su.counts},
        {k: intervals.mean(ev.logit_diff[k], n_resamples=R) for k in su.counts},
        {
            k: intervals.statistic(lambda p: intervals.emergence_layer(p, frac), ev.lenses[k].post().T.double(),
                                   n_resamples=R)
            for k in su.counts
        },
        {k: (ev.contributions[k].attn.sum(0).double(), ev.contributions[k].mlp.sum(0).double()) for k in su.counts},
    )


def _mined(model, cfg: ParensConfig, su: _Setup, promoters, corpus) -> dict:
    """The readouts on prompts mined from real code (``{"available": False, ...}`` when off or none found)."""
    if not cfg.mined:
        return {"available": False}
    try:
        mp = task.mined(
            model, corpus, counts=su.counts, window=cfg.mined_window, max_per_count=cfg.mined_per_count,
            max_chars=cfg.mined_max_chars,
        )
    except InputError as err:
        return {"available": False, "reason": str(err)}
    return _mined_readouts(model, mp, su, promoters, cfg)


def run(model, config: ParensConfig | None = None, *, corpus=None, progress: bool = True, **overrides) -> ParensStudy:
    """Run the whole study on ``model`` (see the module docstring); returns a :class:`ParensStudy`.

    ``config`` defaults to :class:`ParensConfig`; keyword ``overrides`` change single settings. ``corpus``: the code
    to mine real closing-paren positions from (a :class:`codecircuits.corpus.Corpus`; default the standard
    library's held-out ``"test"`` split).
    """
    cfg = configure(ParensConfig, config, overrides)
    timings: dict[str, float] = {}
    with timed(timings, "data"):
        su = _prepare(model, cfg)
    with timed(timings, "selection"):
        sel = _select(model, cfg, su)
    with timed(timings, "evaluation"):
        ev = _evaluate(model, cfg, su, progress)
        examples = _attention_examples(model, su, sel, ev)
        f1_eval = _promoter_f1(cfg, su, sel, ev)
    with timed(timings, "counting"):
        tracking, tracking_ivs, chosen = _count_tracking(model, cfg, su, sel.counting)
    with timed(timings, "patching"):
        patch = _patch_sublayers(model, cfg, su, ev, sel, progress)
    with timed(timings, "ablation"):
        ablation, pooled = _ablate(model, cfg, su, sel, ev, chosen, progress)
    with timed(timings, "scaling"):
        scaling = _amplify(model, cfg, su, sel, ev)
    head = _headlines(cfg, su, ev)
    claims = _claims(cfg, su, int(model.cfg.n_layers), head, patch, pooled, scaling, ev, tracking, tracking_ivs, f1_eval)
    for e in ev.runs.values():
        e.receiver = None  # free the caches
    with timed(timings, "mined"):
        mined = _mined(model, cfg, su, sel.promoters, corpus)
    return ParensStudy(
        model_name=model_name(model), config=cfg, counts=su.counts, paren_ids=su.paren_ids, wrong_of=su.wrong_of,
        accuracy=ev.accuracy, predictions=ev.predictions, lens=ev.lenses, contributions=ev.contributions,
        head_logits=ev.head_logits, promoters=sel.promoters, counting=sel.counting, patching=patch, ablation=ablation,
        scaling=scaling, mined=mined, examples=examples, post_attention_norm=lens.has_post_attention_norm(model),
        timings=timings, promoters_eval=ev.promoters, tracking=tracking,
        intervals=head.to_json(f1_eval, cfg.n_resamples), claims=claims,
    )


# ----------------------------------------------------------------------------------------------------------------
# the claims: each with its evidence, control, verdict rule and the paper's value


ABSTRACT = "arXiv 2502.18499, abstract"
AUTHORS_CODE = "the authors' follow-up code (Dakingrai/parentheses)"
CLAIMS = claim_specs(
    source=ABSTRACT,
    accuracy=("closes 1-{easy} parens, fails at {last} (the authors' code: gpt2 models fail at 4)",
              "reproduced: every easier count's accuracy interval lies at or above 0.9 and the hardest count's at or "
              "below 0.2; partly: one of the two", "1.00 at 1 and 2 parens, 0.00 at 4 (gpt2-small to gpt2-xl)",
              AUTHORS_CODE + ", temp_results"),
    emergence=("the answer emerges in middle-to-late layers",
               "reproduced: the interval of the earliest emergence layer lies in the second half of the layers; "
               "partly: its estimate does", "middle-to-late layers (CodeLlama-7b)"),
    attention=("attention carries the answer (MHA more than FF)",
               "reproduced: attention's minus the MLPs' net direct effect lies above 0 (its interval), pooled and for "
               "every count; partly: pooled or for some count", "both MHA and FF sublayers matter, MHA more"),
    ablation=("promoter heads' ablation hurts more than random heads'",
              "reproduced: the interval of the difference (promoters' drop minus random heads') lies above 0; partly: "
              "its estimate does"),
    f1=("paren-promoting heads promote their count on held-out prompts",
        "reproduced: every count's F1 interval lies at or above 0.5; partly: at least one count's does"),
    amplification=("amplification fixes the failing count ({hardest} parens)",
                   "reproduced: the best configuration's accuracy interval lies at or above 0.8 where the baseline is "
                   "below 0.8; partly: its accuracy gain and its logit-difference gain over random heads both lie "
                   "above 0", "gpt2-small 3 parens 0.48 -> 1.0; gpt2-xl 4 parens 0 -> 1.0 (top 5-10 heads, c in "
                   "1.1-1.6)", AUTHORS_CODE + ", improve_performance*.py"),
    counting=("counting heads track the count beyond token count",
              "reproduced: the top head's interval lies above 0.5 and above the random heads'; partly: above 0",
              "some heads track the number of parens precisely"),
)


def _claims(cfg, su, n_layers, head, patch, pooled, scaling, ev, tracking, tracking_ivs, f1_eval) -> list:
    """The paper's claims with the verdicts this run's intervals give."""
    acc, emerge, R = head.accuracy, head.emergence, cfg.n_resamples
    ok = [k for k in su.counts if acc[k].estimate > 0.5 and not torch.isnan(torch.tensor(emerge[k].estimate))]
    out = []
    last = max(su.counts)
    easy = [k for k in su.counts if k != last]
    if easy:
        worst = min(easy, key=lambda k: acc[k].estimate)
        ok_easy, fails = all(acc[k].low >= 0.9 for k in easy), acc[last].high <= 0.2
        out.append(CLAIMS["accuracy"](
            ok_easy and fails, ok_easy or fails, acc[last], acc[worst],
            f"accuracy at {last} parens; control: the lowest of 1-{max(easy)} ({worst} parens); "
            + ", ".join(f"{k}: {acc[k].format()}" for k in su.counts), easy=max(easy), last=last))
    if ok:
        iv = emerge[earliest := min(ok, key=lambda k: emerge[k].estimate)]
        out.append(CLAIMS["emergence"](
            iv.low >= n_layers / 2, iv.estimate >= n_layers / 2, iv, None,
            f"earliest emergence layer (of {n_layers}) over the counts the model gets right ({earliest} parens); "
            + ", ".join(f"{k}: {emerge[k].format(1)}" for k in ok)))
        a_all, m_all = torch.cat([head.net[k][0] for k in ok]), torch.cat([head.net[k][1] for k in ok])
        diff = intervals.statistic(intervals.mean_difference, a_all, m_all, n_resamples=R)
        per_count = [intervals.statistic(intervals.mean_difference, *head.net[k], n_resamples=R).above(0) for k in ok]

        def recovery(k, site):
            iv = intervals.Interval.from_json(patch[k][f"{site}_selected_recovery"])
            return f"L{patch[k][f'{site}_selected_layer']} {iv.format()}"

        rec = "; ".join(f"{k}: attn {recovery(k, 'attn_out')}, mlp {recovery(k, 'mlp_out')}" for k in ok if k in patch)
        out.append(CLAIMS["attention"](
            diff.above(0) and all(per_count), diff.above(0) or any(per_count), intervals.mean(a_all, n_resamples=R),
            intervals.mean(m_all, n_resamples=R),
            f"net direct effect of all attention vs all MLP sublayers on the logit difference, counts {ok} pooled; "
            f"difference {diff.format()}; patching recovery at the answer position of the layer chosen on the "
            f"selection split: {rec}"))
    if pooled is not None:
        drop, rdrop, diff = pooled
        out.append(CLAIMS["ablation"](
            diff.above(0), diff.estimate > 0, drop, rdrop,
            f"drop of the logit difference when each count's top {cfg.ablate_top_k} promoters (chosen on "
            f"{cfg.selection_split}) are zero-ablated at the {cfg.intervene_at} position(s), all counts pooled; "
            f"control: {cfg.n_random} random sets of as many heads; difference {diff.format()}"))
    if f1_eval:
        worst = min(f1_eval, key=lambda k: f1_eval[k]["f1"].estimate)
        n_ok = sum(v["f1"].low >= 0.5 for v in f1_eval.values())
        out.append(CLAIMS["f1"](
            n_ok == len(f1_eval), n_ok >= 1, f1_eval[worst]["f1"], None,
            "F1 on the evaluation prompts of each count's top promoter chosen on the selection split (the lowest "
            "shown): " + ", ".join(f"{k}: {v['head']} {v['f1'].format()}" for k, v in f1_eval.items())))
    out.append(_claim_amplification(scaling, ev.accuracy))
    if tracking.get("available"):
        pc_top, pc_raw, pc_rand = tracking_ivs
        out.append(CLAIMS["counting"](
            pc_top.low > 0.5 and pc_top.low > pc_rand.high, pc_top.low > 0, pc_top, pc_rand,
            f"partial correlation (prompt length and '(' tokens regressed out) of {tracking['top']}'s attention to "
            f"'(' with the open-paren count, on evaluation prompts that close 0-{max(cfg.counting_closed)} calls "
            f"first (head chosen on the selection split); control: random heads' |partial correlation|; the older "
            f"measure's head {tracking['raw_measure_head']}: {pc_raw.format()}"))
    return [c for c in out if c is not None]


def _claim_amplification(scaling: dict, accuracy: dict) -> intervals.Claim | None:
    by_variant, hardest = scaling["best_by_variant"], scaling["hardest"]
    gen = by_variant.get("general heads (authors)") or by_variant.get("failing count")
    if gen is None:
        return None
    iv = {k: intervals.Interval.from_json(v) for k, v in gen.items() if k != "row"}
    fixed = iv["accuracy"].low >= 0.8 and accuracy[hardest] < 0.8
    helped = iv["accuracy_gain"].above(0) and iv["gain_over_random"].above(0)
    others = "; ".join(
        f"{v}: {intervals.Interval.from_json(b['accuracy']).format()} (random heads "
        f"{intervals.Interval.from_json(b['random_accuracy']).format()})"
        for v, b in by_variant.items()
    )
    row = gen["row"]
    return CLAIMS["amplification"](
        fixed, helped, iv["accuracy"], iv["random_accuracy"],
        f"accuracy on {hardest} parens (baseline {accuracy[hardest]:.2f}) of the best configuration "
        f"({row['variant']}, {row['n_heads']} heads x {row['factor']}); control: random heads, same number and "
        f"factor; logit-difference gain over random {iv['gain_over_random'].format()}; best per variant: {others}",
        hardest=hardest)


@torch.no_grad()
def _mined_readouts(model, mp, su: _Setup, promoters, cfg: ParensConfig) -> dict:
    """Accuracy, emergence and the template's top promoters on windows of real code, per count and depth."""
    out = {"available": True, "corpus": mp.corpus, "window": mp.window, "candidates": mp.candidates, "by_count": {}}
    col = su.col
    for k in su.counts:
        if not (mp.n_close == k).any():
            out["by_count"][k] = {"n": 0}
            continue
        sub = mp.select(k)
        logits, cache = lens.run_cache(model, sub.tokens)
        pred = logits[:, -1].argmax(-1).cpu()
        correct = pred == sub.label_ids
        among = logits[:, -1][:, su.token_ids].argmax(-1).cpu() == col[k]  # right count among the paren tokens
        ll = lens.logit_diff_lens(model, sub.tokens, *su.ids(k), cache=cache, logits=logits)
        hl = lens.head_logits(model, sub.tokens, su.token_ids, cache=cache)
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


#: the labels of the key numbers a run has beyond those of each count
KEY_NUMBERS = {
    "scaled_accuracy_hardest": "failing count's accuracy, best amplification",
    "promoter_ablation_drop": "logit-diff drop, promoters ablated",
    "random_ablation_drop": "logit-diff drop, random heads ablated",
    "counting_partial_corr": "counting head: partial correlation with the open count",
}


def _metric_labels(counts) -> dict[str, str]:
    """Every key number's label: per count (accuracy, emergence, attention's share), then :data:`KEY_NUMBERS`."""
    out = {}
    for what, label in (("accuracy", "accuracy"), ("emergence_layer", "answer emerges at layer"),
                        ("attn_share", "attention's share of the direct effect")):
        out |= {f"{what}_{k}": f"{label}, {k} paren{'s' * (k > 1)}" for k in counts}
    return out | KEY_NUMBERS


def build_report(study: ParensStudy):
    """The study's self-contained HTML report (see :class:`codecircuits.report.Report`): the claims, the key
    numbers, then a section per step."""
    s, cfg = study, study.config
    r = s.open_report(
        f"Closing parentheses on {s.model_name}",
        "Miller, Rai and Yao (2025), 'Mechanistic Understanding of Language Models in Syntactic Code Completion', "
        "reproduced with every number measured",
        meta={"prompts per count": cfg.prompts_per_n, "measured on": cfg.split, "seed": cfg.seed,
              "heads chosen on": f"{cfg.selection_split} ({cfg.selection_prompts_per_n} per count)"},
        labels={k: v for k, v in _metric_labels(s.counts).items() if k.startswith("accuracy") or k in KEY_NUMBERS},
        claims_text="Each claim of the paper (or of the authors' follow-up code) with the number it rests on, its 95% "
        f"bootstrap interval over prompts ({cfg.n_resamples} resamples) and its control. Heads, layers and the failing "
        f"count are chosen on the {cfg.selection_split} split and measured on the {cfg.split} split.",
    )
    metrics, labels = s.metrics(), _metric_labels(s.counts)

    def cards(keys):
        shown = {k: metrics[k] for k in keys if k in metrics}
        if shown:
            r.metrics(shown, labels={k: labels[k] for k in shown})

    for caveat in s.caveats:
        r.text("Caveat: " + caveat + ".")
    _report_task(r, s)
    _report_lens(r, s, cards)
    _report_sublayers(r, s, cards)
    _report_heads(r, s)
    _report_interventions(r, s)
    _report_mined(r, s)
    r.data(s.to_json(), "results")
    return r


def _report_task(r, s: ParensStudy) -> None:
    r.section(
        "Task and accuracy",
        text="Prompts '#print the string {num}\\nprint(' + 'str(' * n + '{num}'; the answer is one token that "
        "closes all n + 1 parens. Accuracy is top-1 on the evaluated prompts of the test split.",
    )
    r.code(task.prompt_text(max(s.counts) - 1, 123) + task.label_text(max(s.counts)), title="the hardest prompt and label")
    r.table(
        [
            {
                "parens": k,
                "label": task.label_text(k),
                "wrong (logit diff against)": task.label_text(s.wrong_of[k]),
                "accuracy": s.accuracy[k],
                "most common prediction": max(set(s.predictions[k]), key=s.predictions[k].count),
            }
            for k in s.counts
        ],
        caption="accuracy per number of closing parens",
    )


def _report_lens(r, s: ParensStudy, cards) -> None:
    counts = s.counts
    r.section(
        "Where the answer emerges",
        text="Logit lens of logit(correct) - logit(wrong) at every resid_pre and resid_post, the final norm's scale "
        f"frozen from the clean run. Emergence = first layer from which the mean stays at >= "
        f"{s.config.emergence_fraction:g} of its final value: "
        + "; ".join(f"{k} parens: {_fmt_layer(s.emergence[k])}" for k in counts)
        + ".",
    )
    cards([f"emergence_layer_{k}" for k in counts])
    r.line_chart(
        list(range(s.lens[counts[0]].post().shape[0])),
        {f"{k} parens": s.lens[k].post().mean(-1).tolist() for k in counts},
        title="logit difference read from resid_post", x_title="layer", y_title="logit diff (correct - wrong)",
    )
    r.heatmap(
        torch.stack([s.lens[k].mean() for k in counts]).tolist(), x_labels=s.lens[counts[0]].labels,
        y_labels=[f"{k} parens" for k in counts], title="logit lens at every resid_pre / resid_post", x_title="site",
        y_title="parens", center=0.0, value_label="logit diff",
    )


def _report_sublayers(r, s: ParensStudy, cards) -> None:
    counts = s.counts
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
    cards([f"attn_share_{k}" for k in counts])
    r.line_chart(
        list(range(s.lens[counts[0]].post().shape[0])),
        {
            **{f"attn {k}": s.contributions[k].attn.mean(-1).tolist() for k in counts},
            **{f"mlp {k}": s.contributions[k].mlp.mean(-1).tolist() for k in counts},
        },
        title="direct contribution per sublayer",
        x_title="layer",
        y_title="logit diff",
    )
    rows = [k for k in counts if k in s.patching and "answer_layers" in s.patching[k]]
    if not rows:
        return
    for site in ("attn_out", "mlp_out"):
        for key, layers_key, where in (
            (site, "answer_layers", "the answer position"),
            (f"{site}_parens", "paren_layers", "the open-paren positions"),
        ):
            r.heatmap(
                [s.patching[k][key] for k in rows],
                x_labels=s.patching[rows[0]][layers_key],
                y_labels=[f"{k}->{int(s.patching[k]['corrupted_count'][0])} parens" for k in rows],
                title=f"patching {site} at {where}: recovery of the clean logit difference "
                f"({s.patching[rows[0]]['n_pairs']} pairs per count)",
                x_title="layer",
                y_title="pair (clean -> counterfactual count)",
                center=0.0,
                value_label="recovery",
            )


def _report_heads(r, s: ParensStudy) -> None:
    r.section(
        "Paren-promoting heads",
        text=f"Per-head direct logits on the paren tokens at the answer position. A head promotes a token when its "
        f"logit is >= {s.promoters.ratio:g} x its largest paren logit; precision, recall and F1 are against the "
        "labels over all counts.",
    )
    for k in s.counts:
        r.table(s.promoters.top(5, k), caption=f"top promoters of {task.label_text(k)}")
    for i, k in enumerate(s.counts):
        r.heatmap(
            s.promoters.mean_logit[i].tolist(), x_labels=list(range(s.promoters.f1.shape[-1])),
            y_labels=list(range(s.promoters.f1.shape[1])),
            title=f"{k} parens: each head's direct logit on the correct token minus the other paren tokens",
            x_title="head", y_title="layer", center=0.0, value_label="relative logit",
        )
    r.section(
        "Counting heads",
        text="Heads whose attention from the answer position to the '(' tokens tracks how many parens are open "
        "(Pearson correlation over prompts), whether their output promotes a count that follows it (output_corr), "
        "and how often their top paren token is the right one (promotes_k).",
    )
    r.table(s.counting.top(10), caption="heads ranked by |attention-count correlation| x sqrt(paren attention)")
    for k in s.counts:
        ex = s.examples[k]
        r.attention(
            ex["tokens"], ex["patterns"], head_labels=ex["heads"], title=f"{k} parens: top promoters and counting heads"
        )
    if s.tracking.get("available"):
        t = s.tracking
        r.text(
            "Counting heads measured so that token count cannot explain them: on prompts that close 0-"
            f"{max(t['closed_values'])} str( calls before the open ones, the partial correlation of a "
            "head's attention to the '(' tokens with the number of open parens, with the prompt's length and its "
            f"number of '(' tokens regressed out. Heads chosen on {t['n_selection']} selection prompts "
            f"({', '.join(t['chosen'])}), measured on {t['n_evaluation']} evaluation prompts."
        )
        r.table(t["table"], caption="heads ranked by |partial correlation| (evaluation prompts)")


def _fmt_iv(d: dict) -> str:
    return intervals.Interval.from_json(d).format()


def _report_interventions(r, s: ParensStudy) -> None:
    r.section(
        "Head ablation and amplification",
        text="Each candidate head zero-ablated alone (accuracy and logit-difference change per count), then the top "
        f"promoters of the hardest count ({s.scaling['hardest']} parens, baseline accuracy "
        f"{s.scaling['baseline']:.2f}) multiplied by c.",
    )
    if s.ablation["rows"]:
        r.table(
            [{k: v for k, v in row.items() if not k.endswith("_ci")} for row in s.ablation["rows"]],
            caption="single-head zero ablation",
        )
    if s.ablation.get("promoter_sets"):
        r.table(
            [
                {
                    "count": row["count"],
                    "heads": " ".join(row["heads"]),
                    "drop (95% CI)": _fmt_iv(row["drop"]),
                    "random heads' drop": _fmt_iv(row["random_drop"]),
                    "difference": _fmt_iv(row["difference"]),
                }
                for row in s.ablation["promoter_sets"]
            ],
            caption="each count's promoters ablated together, against random heads of the same number",
        )
    if s.scaling.get("best_by_variant"):
        r.table(
            [
                {
                    "variant": v,
                    "heads": b["row"]["n_heads"],
                    "factor": b["row"]["factor"],
                    "accuracy (95% CI)": _fmt_iv(b["accuracy"]),
                    "random heads": _fmt_iv(b["random_accuracy"]),
                    "logit-diff gain": _fmt_iv(b["logit_diff_gain"]),
                    "random gain": _fmt_iv(b["random_logit_diff_gain"]),
                }
                for v, b in s.scaling["best_by_variant"].items()
            ],
            caption="best amplification of each variant on the failing count, against random heads",
        )
    if s.scaling["rows"]:
        r.table(
            [{k: v for k, v in row.items() if k != "heads"} | {"heads": " ".join(row["heads"])} for row in s.scaling["rows"]],
            caption="amplifying the top promoters of the hardest count (ranked by F1 as in the paper's code, or by "
            "mean direct logit)",
        )


def _report_mined(r, s: ParensStudy) -> None:
    r.section(
        "Real code", text="The same readouts on windows of held-out code that end just before a closing-paren token."
    )
    if not s.mined.get("available"):
        r.text(f"Not run: {s.mined.get('reason', 'disabled in the config')}.")
        return
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
