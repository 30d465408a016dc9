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

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import heads as heads_mod
from .. import intervals, lens
from ..core.interventions import Replace, position_mask
from ..core.interventions import hook as core_hook
from ..core.runner import Receiver, run_cells
from ..core.sites import LN_FINAL_SCALE, head_label, hook_name
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
        for name in (
            "prompts_per_n", "selection_prompts_per_n", "pairs_per_n", "batch_size", "paren_patch_stride",
            "patch_stride", "patch_chunk", "counting_selection_per_cell",
            "counting_prompts_per_cell", "n_random", "n_resamples",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"ParensConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.n_candidates < 0 or self.mined_per_count < 1 or self.ablate_top_k < 1:
            raise InputError("ParensConfig.n_candidates must be >= 0, mined_per_count and ablate_top_k >= 1.")
        if self.pairs_per_n > self.prompts_per_n:
            raise InputError(
                f"pairs_per_n ({self.pairs_per_n}) must not exceed prompts_per_n ({self.prompts_per_n}): the pairs' "
                "clean prompts are the evaluation prompts."
            )
        for name in ("split", "selection_split"):
            if getattr(self, name) not in task.SPLITS:
                raise InputError(f"ParensConfig.{name} must be one of {task.SPLITS}, got {getattr(self, name)!r}.")
        if any(r not in ("f1", "logit") for r in self.scale_rankings):
            raise InputError(f"scale_rankings must be 'f1' and/or 'logit', got {self.scale_rankings}.")
        if any(c <= 0 for c in (*self.scale_factors, *self.general_factors)):
            raise InputError(f"amplification factors must be positive, got {self.scale_factors + self.general_factors}.")
        if any(not 0 < x <= 1 for x in self.general_shares):
            raise InputError(f"general_shares must lie in (0, 1], got {self.general_shares}.")
        if self.intervene_at not in ("answer", "all"):
            raise InputError(f"intervene_at must be 'answer' or 'all', got {self.intervene_at!r}.")

    @classmethod
    def tiny(cls, **kw) -> ParensConfig:
        """Small sizes for tests and smoke runs on tiny models."""
        base = dict(
            n_numbers=20,
            selection_prompts_per_n=4,
            prompts_per_n=4,
            pairs_per_n=2,
            paren_patch_stride=1,
            patch_stride=1,
            counting_prompts_per_cell=1,
            counting_selection_per_cell=1,
            counting_closed=(0, 2),
            n_candidates=3,
            ablate_top_k=1,
            n_random=2,
            scale_top_k=(2,),
            scale_factors=(1.5,),
            general_factors=(1.5,),
            general_shares=(1.0,),
            general_min_f1=0.3,
            n_resamples=100,
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
    promoters_eval: heads_mod.PromoterHeads | None = None  # the same measure on the evaluation prompts
    tracking: dict = field(default_factory=dict)  # counting heads with token count regressed out
    intervals: dict = field(default_factory=dict)  # bootstrap intervals of the headline numbers
    claims: list = field(default_factory=list)  # intervals.Claim rows

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
            "promoters_eval_f1": None if self.promoters_eval is None else self.promoters_eval.f1,
            "count_tracking": self.tracking,
            "intervals": self.intervals,
            "claims": [c.to_json() for c in self.claims],
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
        pooled = self.ablation.get("pooled")
        if pooled:
            m["promoter_ablation_drop"] = round(float(pooled["drop"]["estimate"]), 4)
            m["random_ablation_drop"] = round(float(pooled["random_drop"]["estimate"]), 4)
        if self.tracking.get("available"):
            m["counting_partial_corr"] = round(float(self.tracking["top_partial_corr"]["estimate"]), 4)
        return m

    def report(self, model=None):
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


def vboot(stat, *values, n_resamples: int = 1000, seed: int = 0) -> intervals.Interval:
    """A percentile-bootstrap interval like :func:`codecircuits.intervals.bootstrap`, vectorised: ``stat`` takes
    the values with a leading resample axis (``[resamples, n, ...]``) and returns ``[resamples]``."""
    vals = [torch.as_tensor(v).detach().cpu().double() for v in values]
    n = vals[0].shape[0]
    est = float(stat(*[v[None] for v in vals])[0])
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, n, (int(n_resamples), n), generator=gen)
    stats = stat(*[v[idx] for v in vals]).double()
    stats = stats[torch.isfinite(stats)]
    if stats.numel() == 0:
        return intervals.Interval(est, float("nan"), float("nan"), n)
    lo, hi = torch.quantile(stats, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return intervals.Interval(est, lo, hi, n)


def _ratio(p, b, s):
    """Recovery ``(patched - base) / (source - base)`` on means over the examples (last axis)."""
    return (p - b).mean(-1) / (s - b).mean(-1)


def _f1_stat(promotes, is_class):
    """F1 over the examples (last axis) of 0/1 ``promotes`` against 0/1 ``is_class``."""
    tp = (promotes * is_class).sum(-1)
    prec = tp / promotes.sum(-1)
    rec = tp / is_class.sum(-1)
    return torch.where(tp > 0, 2 * prec * rec / (prec + rec), torch.zeros_like(tp))


def _partial_stat(x, y, z):
    """Partial correlation of ``x`` and ``y`` given ``z`` (intercept added), batched over a leading axis."""
    ones = torch.ones(*z.shape[:-1], 1, dtype=z.dtype)
    zz = torch.cat([ones, z - z.mean(-2, keepdim=True)], -1)
    proj = zz @ torch.linalg.pinv(zz)
    rx = x - (proj @ x[..., None])[..., 0]
    ry = y - (proj @ y[..., None])[..., 0]
    return (rx * ry).sum(-1) / (rx.norm(dim=-1) * ry.norm(dim=-1)).clamp_min(1e-12)


def _iv(x: intervals.Interval | None):
    return None if x is None else x.to_json()


def _lens_names(model) -> list[str]:
    """The hook names :func:`codecircuits.lens.run_cache` keeps, plus the attention patterns."""
    want = (*lens.LENS_HOOKS, "attn.hook_pattern")
    return [
        n
        for n in model.hook_dict
        if n == LN_FINAL_SCALE or n in ("hook_embed", "hook_pos_embed") or n.endswith(want)
    ]


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

    def readout(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        last = logits[:, -1].float().cpu()
        return last.argmax(-1) == self.correct_id, last[:, self.correct_id] - last[:, self.wrong_id]

    def base(self):
        return self.readout(self.receiver.logits)

    def run(self, hooks, layer: int, at: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(correct [n], logit diff [n])`` with ``hooks`` (changing layers >= ``layer``) in effect at the answer
        position only (``at="answer"``) or at every position (``"all"``)."""
        start = self.tokens.shape[1] - 1 if at == "answer" else 0
        rows = torch.arange(self.n, device=self.tokens.device)
        return self.readout(self.receiver.run(layer, start, rows, hooks))


def _patch_cells(rec: Receiver, donor: Receiver, metric, layers, positions, donor_rows, *, chunk: int = 5) -> dict:
    """``{site: [len(layers)] tensors [pairs]}``: the metric with ``attn_out`` / ``mlp_out`` of one layer patched
    from the donor's cache (rows ``donor_rows``) into the receiver at ``positions``; the cells of ``chunk``
    consecutive layers (both sites) share one batched run from the chunk's first layer."""
    n_pos = rec.n_pos
    start = min(positions)
    pos_mask = position_mask(n_pos - start, [p - start for p in positions], rec.tokens.device).view(1, -1, 1)
    out: dict = {"attn_out": [], "mlp_out": []}
    for i in range(0, len(layers), chunk):
        group = list(layers[i : i + chunk])
        cells = [(site, layer) for layer in group for site in ("attn_out", "mlp_out")]
        sources = {c: donor.cache[hook_name(c[0], c[1])][donor_rows] for c in cells}

        def make_hooks(cell_of_row, ex_of_row, cells=cells, sources=sources):
            hooks = []
            for ci, c in enumerate(cells):
                mask = (cell_of_row == ci).view(-1, 1, 1) & pos_mask
                hooks.append(core_hook(hook_name(*c), Replace(sources[c]), mask, examples=ex_of_row, offset=start))
            return hooks

        vals = run_cells(rec, metric, group[0], start, len(cells), make_hooks).float().cpu()  # [cells, pairs]
        for ci, (site, _) in enumerate(cells):
            out[site].append(vals[ci])
    return out


def _random_heads(model, k: int, exclude, n_draws: int, seed: int) -> list[list[tuple[int, int]]]:
    """``n_draws`` sets of ``k`` query heads drawn without replacement from the heads not in ``exclude``."""
    pool = [(a, b) for a in range(model.cfg.n_layers) for b in range(model.cfg.n_heads) if (a, b) not in set(exclude)]
    gen = torch.Generator().manual_seed(int(seed))
    k = min(k, len(pool))
    return [[pool[int(i)] for i in torch.randperm(len(pool), generator=gen)[:k]] for _ in range(n_draws)]


def _head_forward(model, groups: dict, token_ids, col, paren_ids, wrong_of, names=None):
    """One cached forward per count: caches, head logits, accuracy and logit differences per prompt."""
    caches, hls, correct, lds, logits_of = {}, {}, {}, {}, {}
    for k, toks in groups.items():
        logits, cache = lens.run_cache(model, toks, extra=("attn.hook_pattern",))
        caches[k], logits_of[k] = cache, logits
        last = logits[:, -1].float().cpu()
        correct[k] = last.argmax(-1) == paren_ids[k]
        lds[k] = last[:, paren_ids[k]] - last[:, paren_ids[wrong_of[k]]]
        hls[k] = lens.head_logits(model, toks, token_ids, cache=cache)
    return caches, hls, correct, lds, logits_of


def _promoters_of(hls, counts, col, token_ids, ratio):
    merged = lens.HeadLogits(
        torch.cat([hls[k].values for k in counts]), tuple(token_ids), hls[counts[0]].token_labels, True, -1
    )
    labels = torch.cat([torch.full((hls[k].values.shape[0],), col[k]) for k in counts])
    return heads_mod.paren_promoters(merged, labels, classes=counts, ratio=ratio), merged, labels


def run(
    model, config: ParensConfig | None = None, *, corpus=None, progress: bool = True, **overrides
) -> ParensStudy:
    """Run the whole study on ``model`` (see the module docstring); returns a :class:`ParensStudy`.

    ``config`` defaults to :class:`ParensConfig`; keyword ``overrides`` change single settings. ``corpus``: the code
    to mine real closing-paren positions from (a :class:`codecircuits.corpus.Corpus`; default the standard
    library's held-out ``"test"`` split).
    """
    from .. import ablation

    cfg = configure(ParensConfig, config, overrides)
    R = cfg.n_resamples
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ds = task.dataset(model, n_values=cfg.n_values, n_numbers=cfg.n_numbers, seed=cfg.seed, split=None)
    sel_ds = ds.select(split=cfg.selection_split, limit=cfg.selection_prompts_per_n)
    ev_ds = ds.select(split=cfg.split, limit=cfg.prompts_per_n)
    counts = ev_ds.n_opens
    paren_ids = dict(ds.label_ids)
    wrong_of = {k: _neighbour(counts, k) for k in counts}
    token_ids = [paren_ids[k] for k in counts]
    col = {k: i for i, k in enumerate(counts)}
    timings["data"] = time.perf_counter() - t0

    # ---- selection split: promoters, old-style counting heads, the layers to report, the hardest count
    t0 = time.perf_counter()
    sel_groups = {k: toks for k, (_, toks) in sel_ds.groups(model).items()}
    s_caches, s_hls, s_correct, s_lds, _ = _head_forward(model, sel_groups, token_ids, col, paren_ids, wrong_of)
    promoters, _, _ = _promoters_of(s_hls, counts, col, token_ids, cfg.promoter_ratio)
    counting = heads_mod.counting_heads(
        model,
        [(sel_groups[k], k) for k in counts],
        caches=[s_caches[k] for k in counts],
        head_logits=[s_hls[k] for k in counts],
        correct_index=[col[k] for k in counts],
    )
    s_contrib = {
        k: lens.sublayer_contributions(model, sel_groups[k], paren_ids[k], paren_ids[wrong_of[k]], cache=s_caches[k])
        for k in counts
    }
    del s_caches
    sel_accuracy = {k: float(s_correct[k].float().mean()) for k in counts}
    hardest = min(counts, key=lambda k: (sel_accuracy[k], float(s_lds[k].mean())))
    # the layer with the largest mean direct effect, per sublayer and count (the layers whose patching is reported)
    best_layer = {
        k: {"attn_out": int(s_contrib[k].attn.mean(-1).argmax()), "mlp_out": int(s_contrib[k].mlp.mean(-1).argmax())}
        for k in counts
    }
    timings["selection"] = time.perf_counter() - t0

    # ---- evaluation split: one cached forward per count serves the lens, the heads and every intervention
    t0 = time.perf_counter()
    names = _lens_names(model)
    ev: dict[int, _Evaluated] = {}
    lenses, contribs, hls, accuracy, preds, correct_b, ld_b = {}, {}, {}, {}, {}, {}, {}
    for k, (ps, toks) in tqdm(ev_ds.groups(model).items(), disable=not progress, desc="parens: evaluation"):
        c_ids = torch.full((toks.shape[0],), paren_ids[k])
        w_ids = torch.full((toks.shape[0],), paren_ids[wrong_of[k]])
        rec = Receiver(model, toks, extra_names=names, metric=_logit_diff_metric(c_ids, w_ids))
        e = _Evaluated(k, ps, toks, rec, paren_ids[k], paren_ids[wrong_of[k]])
        ev[k] = e
        cache, logits = rec.cache, rec.logits
        correct_b[k], ld_b[k] = e.base()
        pred = logits[:, -1].argmax(-1)
        accuracy[k] = float(correct_b[k].float().mean())
        preds[k] = [model.tokenizer.decode([i]) for i in pred.tolist()]
        lenses[k] = lens.logit_diff_lens(model, toks, paren_ids[k], paren_ids[wrong_of[k]], cache=cache, logits=logits)
        contribs[k] = lens.sublayer_contributions(model, toks, paren_ids[k], paren_ids[wrong_of[k]], cache=cache)
        hls[k] = lens.head_logits(model, toks, token_ids, cache=cache)
    promoters_eval, ev_merged, ev_labels = _promoters_of(hls, counts, col, token_ids, cfg.promoter_ratio)
    # attention of the top heads on one example per count
    show = []
    for k in counts:
        show += [h for h in promoters.heads(k, 2) if h not in show]
    show += [h for h in counting.heads(2) if h not in show]
    examples = {}
    for k in counts:
        pats = torch.stack([ev[k].receiver.cache[hook_name("pattern", layer)][0, h] for layer, h in show])
        examples[k] = {
            "tokens": [model.tokenizer.decode([t]) for t in ev[k].tokens[0].tolist()],
            "heads": [head_label(layer, h) for layer, h in show],
            "patterns": pats.float().cpu(),
        }
    # promoter F1 of the selected heads, measured on the evaluation prompts
    v = ev_merged.values
    mx = v.max(-1, keepdim=True).values
    promotes = ((v >= cfg.promoter_ratio * mx) & (mx > 0)).double()  # [b, l, h, t]
    f1_eval = {}
    for k in counts:
        top = promoters.heads(k, 1)
        if not top:
            continue
        (layer, h) = top[0]
        is_k = (ev_labels == col[k]).double()
        f1_eval[k] = {
            "head": head_label(layer, h),
            "f1_selection": float(promoters.f1[col[k], layer, h]),
            "f1": vboot(_f1_stat, promotes[:, layer, h, col[k]], is_k, n_resamples=R),
        }
    timings["evaluation"] = time.perf_counter() - t0

    # ---- counting heads on prompts that close some parens first (token count regressed out)
    t0 = time.perf_counter()
    tracking_out: dict = {"available": False}
    tracking = None
    try:
        cds = task.closed_dataset(
            model, n_values=cfg.n_values, closed_values=cfg.counting_closed, n_numbers=cfg.n_numbers, seed=cfg.seed
        )
    except InputError as err:
        tracking_out["reason"] = str(err)
    else:
        both = task.ParensDataset(
            cds.select(split=cfg.selection_split, limit=cfg.counting_selection_per_cell).prompts
            + cds.select(split=cfg.split, limit=cfg.counting_prompts_per_cell).prompts,
            cds.n_values, cds.seed, cds.n_numbers, dict(cds.label_ids),
        )
        parts: dict = {"selection": ([], [], []), "evaluation": ([], [], [])}
        for ps, toks in both.by_length(model):
            logits, cache = lens.run_cache(model, toks, names=(), extra=("attn.hook_pattern",))
            pred = logits[:, -1].argmax(-1).cpu()
            for name_, split_ in (("selection", cfg.selection_split), ("evaluation", cfg.split)):
                idx = [i for i, p in enumerate(ps) if p.split == split_]
                if not idx:
                    continue
                it = torch.tensor(idx)
                sub_cache = {n: cache[n][it] for n in (hook_name("pattern", la) for la in range(model.cfg.n_layers))}
                parts[name_][0].append((toks[it], torch.tensor([float(ps[i].n_open) for i in idx])))
                parts[name_][1].append(sub_cache)
                parts[name_][2].extend((ps[i].n_open, ps[i].n_closed, bool(pred[i] == ps[i].label_id)) for i in idx)
            del cache
        tracks = {n_: heads_mod.count_tracking(model, g, caches=c) for n_, (g, c, _) in parts.items()}
        t_acc = {n_: a for n_, (_, _, a) in parts.items()}
        tracking = tracks["evaluation"]
        chosen = tracks["selection"].heads(3)
        top_head = chosen[0]
        sign = float(torch.sign(tracks["selection"].partial_corr[top_head].nan_to_num(0)) or 1.0)
        y_ev = tracking.mass[:, top_head[0], top_head[1]]
        pc_top = vboot(
            lambda x, y, z: sign * _partial_stat(x, y, z), tracking.n_open, y_ev, tracking.covariates, n_resamples=R
        )
        raw_top = counting.heads(1)[0]  # the older measure's head (plain correlation on the paper's prompts)
        sign_raw = float(torch.sign(tracking.partial_corr[raw_top].nan_to_num(0)) or 1.0)
        pc_raw = vboot(
            lambda x, y, z: sign_raw * _partial_stat(x, y, z),
            tracking.n_open,
            tracking.mass[:, raw_top[0], raw_top[1]],
            tracking.covariates,
            n_resamples=R,
        )
        rand = _random_heads(model, 1, chosen, max(cfg.n_random, 8), cfg.seed)
        y_rand = torch.stack([tracking.mass[:, a, b] for ((a, b),) in rand], 1)  # [n, draws]
        pc_rand = vboot(
            lambda x, y, z: torch.stack(
                [_partial_stat(x, y[..., j], z).abs() for j in range(y.shape[-1])], -1
            ).mean(-1),
            tracking.n_open,
            y_rand,
            tracking.covariates,
            n_resamples=R,
        )
        acc_closed = {}
        for k in counts:
            rows_ = [c for (o, _, c) in t_acc["evaluation"] if o == k]
            if rows_:
                acc_closed[k] = intervals.mean(torch.tensor(rows_, dtype=torch.float64), n_resamples=R)
        tracking_out = {
            "available": True,
            "closed_values": list(cfg.counting_closed),
            "n_selection": int(tracks["selection"].n_open.numel()),
            "n_evaluation": int(tracking.n_open.numel()),
            "chosen": [head_label(a, b) for a, b in chosen],
            "partial_corr_selection": tracks["selection"].partial_corr,
            "partial_corr": tracking.partial_corr,
            "raw_corr": tracking.raw_corr,
            "top": head_label(*top_head),
            "top_partial_corr": _iv(pc_top),
            "raw_measure_head": head_label(*raw_top),
            "raw_measure_head_partial_corr": _iv(pc_raw),
            "random_abs_partial_corr": _iv(pc_rand),
            "table": tracking.top(8).to_dict("records"),
            "accuracy_with_closed_calls": {k: _iv(x) for k, x in acc_closed.items()},
        }
        tracking_out["_intervals"] = (pc_top, pc_raw, pc_rand)
        del tracks["selection"]
    timings["counting"] = time.perf_counter() - t0

    # ---- sublayer patching, clean into counterfactual, at the answer position and at the open-paren positions
    t0 = time.perf_counter()
    n_layers = int(model.cfg.n_layers)
    pairs = task.pairs(model, ev_ds, on_missing="skip")
    patch: dict = {}
    for k in tqdm(pairs.n_opens, disable=not progress, desc="parens: patching"):
        sub = pairs.select(n_open=k, limit=cfg.pairs_per_n)
        e = ev[k]
        row_of = {p.text: i for i, p in enumerate(e.prompts)}
        rows_clean = torch.tensor([row_of[p.clean] for p in sub.pairs])
        clean, corrupted = sub.tokens(model)
        c_ids, w_ids = sub.answer_ids()
        metric = _logit_diff_metric(c_ids, w_ids)
        rec = Receiver(model, corrupted, metric=metric)
        base = metric(rec.logits).float().cpu()
        source = metric(e.receiver.logits[rows_clean]).float().cpu()
        n_pos = int(clean.shape[1])
        all_c, _ = heads_mod.open_paren_counts(model, clean[:1])
        paren_pos = [i for i in range(n_pos) if all_c[0, i] > 0]
        entry: dict = {
            "corrupted_count": [float(sub.pairs[0].corrupted_n_open)],
            "n_pairs": len(sub),
            "clean_logit_diff": [float(source.mean())],
            "corrupted_logit_diff": [float(base.mean())],
            "paren_positions": paren_pos,
        }
        answer_layers = sorted(
            set(range(0, n_layers, cfg.patch_stride)) | {v_ for b in best_layer.values() for v_ in b.values()}
        )
        paren_layers = list(range(0, n_layers, cfg.paren_patch_stride))
        entry["answer_layers"] = answer_layers
        entry["paren_layers"] = paren_layers
        per_pair: dict = {}
        for where, layers, positions in (("answer", answer_layers, [n_pos - 1]), ("parens", paren_layers, paren_pos)):
            vals = _patch_cells(rec, e.receiver, metric, layers, positions, rows_clean, chunk=cfg.patch_chunk)
            for site in ("attn_out", "mlp_out"):
                key = site if where == "answer" else f"{site}_parens"
                per_pair[key] = dict(zip(layers, vals[site]))
                entry[key] = [float((v - base).mean() / (source - base).mean()) for v in vals[site]]
        # the layer chosen on the selection split (largest direct effect), its recovery with an interval
        for site in ("attn_out", "mlp_out"):
            layer = best_layer[k][site]
            entry[f"{site}_selected_layer"] = layer
            entry[f"{site}_selected_recovery"] = _iv(vboot(_ratio, per_pair[site][layer], base, source, n_resamples=R))
        entry["_per_pair"] = (per_pair, base, source)
        patch[k] = entry
    timings["patching"] = time.perf_counter() - t0

    # ---- ablation: single heads, and each count's promoters against random heads of the same number
    t0 = time.perf_counter()
    at = cfg.intervene_at

    def ablated(hs, only=None):
        hooks = ablation.ablation_hooks(model, heads=hs, kind="zero")
        lo = min(a for a, _ in hs)
        return {k: ev[k].run(hooks, lo, at) for k in (counts if only is None else (only,))}

    cand: list[tuple[int, int]] = []
    for k in counts:
        cand += [h for h in promoters.heads(k, 1) if h not in cand]
    if tracking is not None:
        cand += [h for h in chosen[:2] if h not in cand]
    cand += [h for h in counting.heads(2) if h not in cand]
    cand = cand[: cfg.n_candidates]
    abl_rows = []
    for layer, h in tqdm(cand, disable=not progress, desc="parens: head ablation"):
        r = ablated([(layer, h)])
        row = {"head": head_label(layer, h), "layer": layer, "head_index": h}
        for k in counts:
            d_ld = r[k][1] - ld_b[k]
            row[f"accuracy_{k}"] = float(r[k][0].float().mean())
            row[f"d_accuracy_{k}"] = row[f"accuracy_{k}"] - accuracy[k]
            iv = intervals.mean(d_ld, n_resamples=R)
            row[f"d_logit_diff_{k}"] = iv.estimate
            row[f"d_logit_diff_{k}_ci"] = [iv.low, iv.high]
        abl_rows.append(row)
    sets, drops, drops_rand = [], [], []
    set_rows = []
    for k in counts:
        top = promoters.heads(k, cfg.ablate_top_k)
        if not top:
            continue
        drop = ld_b[k] - ablated(top, k)[k][1]
        rand_sets = _random_heads(model, len(top), top, cfg.n_random, cfg.seed + k)
        drop_r = torch.stack([ld_b[k] - ablated(rs, k)[k][1] for rs in rand_sets]).mean(0)
        sets.append(top)
        drops.append(drop)
        drops_rand.append(drop_r)
        set_rows.append(
            {
                "count": k,
                "heads": [head_label(a, b) for a, b in top],
                "drop": _iv(intervals.mean(drop, n_resamples=R)),
                "random_drop": _iv(intervals.mean(drop_r, n_resamples=R)),
                "difference": _iv(vboot(lambda a, b: (a - b).mean(-1), drop, drop_r, n_resamples=R)),
            }
        )
    pooled = None
    if drops:
        d_all, r_all = torch.cat(drops), torch.cat(drops_rand)
        pooled = (
            intervals.mean(d_all, n_resamples=R),
            intervals.mean(r_all, n_resamples=R),
            vboot(lambda a, b: (a - b).mean(-1), d_all, r_all, n_resamples=R),
        )
    ablation_out = {
        "intervene_at": at,
        "candidates": [head_label(layer, h) for layer, h in cand],
        "baseline": {k: {"accuracy": accuracy[k], "logit_diff": float(ld_b[k].mean())} for k in counts},
        "rows": abl_rows,
        "promoter_sets": set_rows,
        "pooled": None if pooled is None else {n_: _iv(x) for n_, x in zip(("drop", "random_drop", "difference"), pooled)},
    }
    timings["ablation"] = time.perf_counter() - t0

    # ---- amplification of the failing count (chosen on the selection split)
    t0 = time.perf_counter()

    def scaled(hs, c, only=None):
        hooks = ablation.scale_hooks(model, {hd: c for hd in hs})
        lo = min(a for a, _ in hs)
        return {k: ev[k].run(hooks, lo, at) for k in (counts if only is None else (only,))}

    def amp_row(variant, hs, c, extra):
        r = scaled(hs, c)
        row = {"variant": variant, **extra, "n_heads": len(hs), "factor": c, "heads": [head_label(a, b) for a, b in hs]}
        row.update({f"accuracy_{k}": float(r[k][0].float().mean()) for k in counts})
        row.update({f"logit_diff_{k}": float(r[k][1].mean()) for k in counts})
        row["accuracy"] = row[f"accuracy_{hardest}"]
        return row, r[hardest]

    scale_rows, per_prompt = [], []
    for ranking in cfg.scale_rankings:
        for top_k in cfg.scale_top_k:
            top = promoters.heads(hardest, top_k, min_logit=0.0, by=ranking)
            if not top:
                continue
            for c in cfg.scale_factors:
                row, pp = amp_row("failing count", top, c, {"ranking": ranking, "share": None})
                scale_rows.append(row)
                per_prompt.append((row, top, pp))
    general = promoters.general(min_f1=cfg.general_min_f1, min_counts=cfg.general_min_counts)
    for share in cfg.general_shares:
        n_take = max(1, int(round(share * len(general)))) if general else 0
        top = general[:n_take]
        if not top:
            continue
        for c in cfg.general_factors:
            row, pp = amp_row("general heads (authors)", top, c, {"ranking": "macro-f1", "share": share})
            scale_rows.append(row)
            per_prompt.append((row, top, pp))
    best = max(scale_rows, key=lambda r: (r["accuracy"], r[f"logit_diff_{hardest}"]), default=None)
    best_by_variant = {}
    for variant in ("failing count", "general heads (authors)"):
        cands_ = [x for x in per_prompt if x[0]["variant"] == variant]
        if not cands_:
            continue
        row, hs, (corr_amp, ld_amp) = max(cands_, key=lambda x: (x[0]["accuracy"], x[0][f"logit_diff_{hardest}"]))
        rand_sets = _random_heads(model, len(hs), hs, cfg.n_random, cfg.seed + 100)
        rand = [scaled(rs, row["factor"], hardest)[hardest] for rs in rand_sets]
        corr_r = torch.stack([x[0].double() for x in rand]).mean(0)
        ld_r = torch.stack([x[1] for x in rand]).mean(0)
        base_c, base_ld = correct_b[hardest].double(), ld_b[hardest]
        best_by_variant[variant] = {
            "row": {k_: v_ for k_, v_ in row.items()},
            "accuracy": _iv(intervals.mean(corr_amp.double(), n_resamples=R)),
            "accuracy_gain": _iv(intervals.mean(corr_amp.double() - base_c, n_resamples=R)),
            "logit_diff_gain": _iv(intervals.mean(ld_amp - base_ld, n_resamples=R)),
            "random_accuracy": _iv(intervals.mean(corr_r, n_resamples=R)),
            "random_accuracy_gain": _iv(intervals.mean(corr_r - base_c, n_resamples=R)),
            "random_logit_diff_gain": _iv(intervals.mean(ld_r - base_ld, n_resamples=R)),
            "gain_over_random": _iv(vboot(lambda a, b: (a - b).mean(-1), ld_amp, ld_r, n_resamples=R)),
        }
    scaling_out = {
        "hardest": hardest,
        "hardest_chosen_on": cfg.selection_split,
        "selection_accuracy": sel_accuracy,
        "baseline": accuracy[hardest],
        "baseline_logit_diff": float(ld_b[hardest].mean()),
        "general_heads": [head_label(a, b) for a, b in general],
        "rows": scale_rows,
        "best": best,
        "best_by_variant": best_by_variant,
        "intervene_at": at,
        "note": "the best configuration is picked on the evaluation prompts, so its accuracy is an optimistic "
        "estimate; the random control uses the same number of heads and the same factor",
    }
    timings["scaling"] = time.perf_counter() - t0

    # ---- intervals of the headline numbers
    acc_iv = {k: intervals.mean(correct_b[k].double(), n_resamples=R) for k in counts}
    ld_iv = {k: intervals.mean(ld_b[k], n_resamples=R) for k in counts}
    emerge_iv = {}
    for k in counts:
        post = lenses[k].post().T.double()  # [prompts, layers]
        frac = cfg.emergence_fraction

        def _emerge(p, frac=frac):
            m = p.mean(-2)  # [R, layers]
            fin = m[..., -1:]
            ok = (m >= frac * fin) & (fin > 0)
            # first layer from which every later layer is ok
            tail = torch.flip(torch.cummin(torch.flip(ok.int(), [-1]), -1).values, [-1]).bool()
            first = torch.where(tail.any(-1), tail.int().argmax(-1).double(), torch.full(m.shape[:-1], float("nan")))
            return first

        emerge_iv[k] = vboot(_emerge, post, n_resamples=R)
    net = {}
    for k in counts:
        a_ = contribs[k].attn.sum(0).double()
        m_ = contribs[k].mlp.sum(0).double()
        net[k] = (a_, m_)
    intervals_out = {
        "accuracy": {k: _iv(x) for k, x in acc_iv.items()},
        "logit_diff": {k: _iv(x) for k, x in ld_iv.items()},
        "emergence_layer": {k: _iv(x) for k, x in emerge_iv.items()},
        "attn_net": {k: _iv(intervals.mean(net[k][0], n_resamples=R)) for k in counts},
        "mlp_net": {k: _iv(intervals.mean(net[k][1], n_resamples=R)) for k in counts},
        "promoter_f1": {k: {**v_, "f1": _iv(v_["f1"])} for k, v_ in f1_eval.items()},
    }

    study_claims = _claims(
        cfg, counts, n_layers, acc_iv, emerge_iv, net, patch, pooled, best_by_variant, hardest, accuracy,
        tracking_out, f1_eval,
    )
    for k in patch:
        patch[k].pop("_per_pair", None)
    tracking_out.pop("_intervals", None)
    for e in ev.values():
        e.receiver = None  # free the caches

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
        except InputError as err:
            mined_out = {"available": False, "reason": str(err)}
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
        promoters_eval=promoters_eval,
        tracking=tracking_out,
        intervals=intervals_out,
        claims=study_claims,
    )


COMMAND = "codecircuits parens --model {model}"


def _claims(cfg, counts, n_layers, acc_iv, emerge_iv, net, patch, pooled, best_by_variant, hardest, accuracy,
            tracking_out, f1_eval) -> list[intervals.Claim]:
    """The paper's claims with the verdicts this run's intervals give."""
    R = cfg.n_resamples
    out = []
    last = max(counts)
    easy = [k for k in counts if k != last]
    worst_easy = min(easy, key=lambda k: acc_iv[k].estimate) if easy else None
    if worst_easy is not None:
        ok_easy = all(acc_iv[k].low >= 0.9 for k in easy)
        fails = acc_iv[last].high <= 0.2
        out.append(
            intervals.Claim(
                f"closes 1-{max(easy)} parens, fails at {last} (the authors' code: gpt2 models fail at 4)",
                intervals.verdict(ok_easy and fails, ok_easy or fails),
                evidence=acc_iv[last],
                control=acc_iv[worst_easy],
                detail=f"accuracy at {last} parens; control: the lowest of 1-{max(easy)} ({worst_easy} parens); "
                + ", ".join(f"{k}: {acc_iv[k].format()}" for k in counts),
            )
        )
    ok_counts = [k for k in counts if acc_iv[k].estimate > 0.5 and not torch.isnan(torch.tensor(emerge_iv[k].estimate))]
    if ok_counts:
        earliest = min(ok_counts, key=lambda k: emerge_iv[k].estimate)
        iv = emerge_iv[earliest]
        late = iv.low >= n_layers / 2
        out.append(
            intervals.Claim(
                "the answer emerges in middle-to-late layers",
                intervals.verdict(late, iv.estimate >= n_layers / 2),
                evidence=iv,
                detail=f"earliest emergence layer (of {n_layers}) over the counts the model gets right "
                f"({earliest} parens); "
                + ", ".join(f"{k}: {emerge_iv[k].format(1)}" for k in ok_counts),
            )
        )
        a_all = torch.cat([net[k][0] for k in ok_counts])
        m_all = torch.cat([net[k][1] for k in ok_counts])
        diff = vboot(lambda a, m: (a - m).mean(-1), a_all, m_all, n_resamples=R)
        rec_txt = "; ".join(
            f"{k}: attn L{patch[k]['attn_out_selected_layer']} "
            f"{intervals.Interval.from_json(patch[k]['attn_out_selected_recovery']).format()}, mlp "
            f"L{patch[k]['mlp_out_selected_layer']} "
            f"{intervals.Interval.from_json(patch[k]['mlp_out_selected_recovery']).format()}"
            for k in ok_counts
            if k in patch
        )
        per_count = [
            vboot(lambda a, m: (a - m).mean(-1), net[k][0], net[k][1], n_resamples=R).above(0) for k in ok_counts
        ]
        out.append(
            intervals.Claim(
                "attention carries the answer (MHA more than FF)",
                intervals.verdict(diff.above(0) and all(per_count), diff.above(0) or any(per_count)),
                evidence=intervals.mean(a_all, n_resamples=R),
                control=intervals.mean(m_all, n_resamples=R),
                detail=f"net direct effect of all attention vs all MLP sublayers on the logit difference, counts "
                f"{ok_counts} pooled; difference {diff.format()}; patching recovery at the answer position of the "
                f"layer chosen on the selection split: {rec_txt}",
            )
        )
    if pooled is not None:
        drop, rdrop, diff = pooled
        out.append(
            intervals.Claim(
                "promoter heads' ablation hurts more than random heads'",
                intervals.verdict(diff.above(0), diff.estimate > 0),
                evidence=drop,
                control=rdrop,
                detail=f"drop of the logit difference when each count's top {cfg.ablate_top_k} promoters (chosen "
                f"on {cfg.selection_split}) are zero-ablated at the {cfg.intervene_at} position(s), all counts "
                f"pooled; control: {cfg.n_random} random sets of as many heads; difference {diff.format()}",
            )
        )
    if f1_eval:
        worst = min(f1_eval, key=lambda k: f1_eval[k]["f1"].estimate)
        out.append(
            intervals.Claim(
                "paren-promoting heads promote their count on held-out prompts",
                intervals.verdict(all(v["f1"].low >= 0.5 for v in f1_eval.values()),
                                  sum(v["f1"].low >= 0.5 for v in f1_eval.values()) >= 1),
                evidence=f1_eval[worst]["f1"],
                detail="F1 on the evaluation prompts of each count's top promoter chosen on the selection split "
                "(the lowest shown): "
                + ", ".join(f"{k}: {v['head']} {v['f1'].format()}" for k, v in f1_eval.items()),
            )
        )
    gen = best_by_variant.get("general heads (authors)") or best_by_variant.get("failing count")
    if gen is not None:
        acc = intervals.Interval.from_json(gen["accuracy"])
        gain_r = intervals.Interval.from_json(gen["gain_over_random"])
        fixed = acc.low >= 0.8 and accuracy[hardest] < 0.8
        helped = intervals.Interval.from_json(gen["accuracy_gain"]).above(0) and gain_r.above(0)
        others = "; ".join(
            f"{v}: {intervals.Interval.from_json(b['accuracy']).format()} (random heads "
            f"{intervals.Interval.from_json(b['random_accuracy']).format()})"
            for v, b in best_by_variant.items()
        )
        out.append(
            intervals.Claim(
                f"amplification fixes the failing count ({hardest} parens)",
                intervals.verdict(fixed, helped),
                evidence=acc,
                control=intervals.Interval.from_json(gen["random_accuracy"]),
                detail=f"accuracy on {hardest} parens (baseline {accuracy[hardest]:.2f}) of the best configuration "
                f"({gen['row']['variant']}, {gen['row']['n_heads']} heads x {gen['row']['factor']}); control: random "
                f"heads, same number and factor; logit-difference gain over random {gain_r.format()}; best per "
                f"variant: {others}",
            )
        )
    if tracking_out.get("available"):
        pc_top, pc_raw, pc_rand = tracking_out["_intervals"]
        out.append(
            intervals.Claim(
                "counting heads track the count beyond token count",
                intervals.verdict(pc_top.low > 0.5 and pc_top.low > pc_rand.high, pc_top.low > 0),
                evidence=pc_top,
                control=pc_rand,
                detail=f"partial correlation (prompt length and '(' tokens regressed out) of {tracking_out['top']}'s "
                f"attention to '(' with the open-paren count, on evaluation prompts that close 0-"
                f"{max(cfg.counting_closed)} calls first (head chosen on the selection split); control: random "
                f"heads' |partial correlation|; the older measure's head {tracking_out['raw_measure_head']}: "
                f"{pc_raw.format()}",
            )
        )
    return out


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
        meta={
            "prompts per count": s.config.prompts_per_n,
            "heads chosen on": f"{s.config.selection_split} ({s.config.selection_prompts_per_n} per count)",
            "measured on": s.config.split,
            "seed": s.config.seed,
        },
    )
    if s.claims:
        r.section(
            "Claims and verdicts",
            text="Each claim of the paper (or of the authors' follow-up code) with the number it rests on, its 95% "
            f"bootstrap interval over prompts ({s.config.n_resamples} resamples) and its control. Heads, layers "
            f"and the failing count are chosen on the {s.config.selection_split} split and measured on the "
            f"{s.config.split} split.",
        )
        r.claims(s.claims)
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
    rows = [k for k in counts if k in s.patching and "answer_layers" in s.patching[k]]
    for site in ("attn_out", "mlp_out"):
        for key, layers_key, where in ((site, "answer_layers", "the answer position"), (f"{site}_parens", "paren_layers", "the open-paren positions")):
            if rows:
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

    if s.tracking.get("available"):
        r.text(
            "Counting heads measured so that token count cannot explain them: on prompts that close 0-"
            f"{max(s.tracking['closed_values'])} str( calls before the open ones, the partial correlation of a "
            "head's attention to the '(' tokens with the number of open parens, with the prompt's length and its "
            f"number of '(' tokens regressed out. Heads chosen on {s.tracking['n_selection']} selection prompts "
            f"({', '.join(s.tracking['chosen'])}), measured on {s.tracking['n_evaluation']} evaluation prompts."
        )
        r.table(s.tracking["table"], caption="heads ranked by |partial correlation| (evaluation prompts)")
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
                    "drop (95% CI)": intervals.Interval.from_json(row["drop"]).format(),
                    "random heads' drop": intervals.Interval.from_json(row["random_drop"]).format(),
                    "difference": intervals.Interval.from_json(row["difference"]).format(),
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
                    "accuracy (95% CI)": intervals.Interval.from_json(b["accuracy"]).format(),
                    "random heads": intervals.Interval.from_json(b["random_accuracy"]).format(),
                    "logit-diff gain": intervals.Interval.from_json(b["logit_diff_gain"]).format(),
                    "random gain": intervals.Interval.from_json(b["random_logit_diff_gain"]).format(),
                }
                for v, b in s.scaling["best_by_variant"].items()
            ],
            caption="best amplification of each variant on the failing count, against random heads",
        )
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
