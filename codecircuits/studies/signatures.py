"""Study: weight signatures of real code shifts, run as Cai et al. (ICML 2023) run robust weight signatures.

From the pretrained model ``theta_pre``, brief fine-tunes of the same weights (by default every block's weights) on
the same standard-library functions: clean (``theta_std``, the standard task vector ``a``) and under each shift
(tabs, renamed locals, swapped quote style, ...; ``theta_c``). A shift's signature is its task vector minus the
projection on ``a``, per tensor. As in the paper, the signature is patched into the CLEAN FINE-TUNED model,
``theta_std + alpha * RWS_c``, and compared with the shift fine-tune ``theta_c`` on held-out shifted code:

- **recovery**: the share of ``theta_c``'s gain over ``theta_std`` on shifted code that the patch recovers, against a
  matched-norm random direction (a random tensor per weight with the signature's per-tensor norm);
- **alpha**: clean and shifted loss across alpha (the in-situ trade-off);
- **discriminative**: a signature's gain on its own shift against its gain on the OTHER shifts;
- **composition**: all signatures summed at alpha each, and the RWS code's alpha/N form;
- **transfer across datasets**: the stdlib signature patched into a model fine-tuned on another corpus (HumanEval
  by default), against that corpus's own shift fine-tune;
- **updated backbone**: the signature patched into ``theta_std`` fine-tuned further on more clean code;
- **depth**: the signature of the shallow half of the layers against the deep half; norms and cosines by layer;
- **storage**: the signature's safetensors file against a full copy of the weights, both on disk.

Every fine-tune is repeated for each seed (the seed sets the data order). Evaluation is per held-out document;
intervals are 95% percentile-bootstrap intervals over documents (the per-document losses averaged over seeds), and
every number is also given per seed. Claims go to ``results.json`` (``"claims"``) and the report.

The code and its shifts (:data:`codecircuits.signatures.SHIFTS`, :func:`~codecircuits.signatures.code_snippets`)
and the storage and depth profile (:func:`~codecircuits.signatures.storage_sizes`,
:func:`~codecircuits.signatures.layer_profile`) are the method module's; the steps of :func:`run` are
:func:`load_data`, :func:`finetune_shifts`, :func:`measure_signatures`, :func:`update_backbone` and
:func:`measure_transfer`, then the intervals (:func:`measure_intervals`) and the claims (:func:`claims_of`).

>>> study = run(load_model("cc-py-neox"), SignatureConfig())
>>> html, js = study.save("reports/signatures")
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace

import pandas as pd
import torch

from .. import intervals
from .. import signatures as S
from ..errors import InputError
from ..intervals import Claim, Interval, claims_markdown
from ..signatures import SHIFTS, code_snippets, shifted_texts, transfer_snippets
from .common import Study, claim_specs, configure, json_safe, model_name, result, setting

COMMAND = "codecircuits signatures --threads 1"
PAPER = (
    "Cai et al. (ICML 2023), VGG/ResNet under image corruptions: a corruption's robust weight signature (its task "
    "vector minus the projection on the clean fine-tune's) patched into the clean fine-tuned model recovers the "
    "robust model's accuracy; alpha trades clean for corrupted accuracy; signatures are discriminative across "
    "corruption types, compose by summation, transfer across datasets and to an updated backbone, sit mostly in "
    "shallow layers, and are up to 13x smaller than a full weight copy."
)


@dataclass(frozen=True)
class SignatureConfig:
    """Settings of the study; the command line's options are generated from these fields."""

    shifts: tuple[str, ...] = setting(
        ("tabs", "rename", "indent2"), f"code shifts, comma-separated, from: {', '.join(SHIFTS)}"
    )
    kind: str = setting("block", "weights to fine-tune: block, mlp, mlp_out or attn")
    layers: tuple[int, ...] | None = setting(None, "layers to fine-tune, e.g. 0-9 or 0,3,6 (none: all)", convert="layer_list")
    steps: int = setting(24, "fine-tuning steps per task vector")
    lr: float = setting(3e-4, "Adam learning rate")
    batch_size: int = setting(8, "fine-tuning batch size")
    seq_len: int = setting(128, "tokens per training chunk")
    train_chunks: int = setting(192, "training chunks of seq-len tokens per fine-tune")
    eval_docs: int = setting(40, "held-out documents (functions or classes) per evaluation set")
    eval_tokens: int = setting(96, "tokens scored per held-out document (the first ones)")
    alphas: tuple[float, ...] = setting((0.5, 1.0, 1.5), "alphas of the sweep (alpha 1 is always measured)")
    seeds: tuple[int, ...] = setting((0, 1, 2), "seeds of the fine-tunes' data order, one full run each")
    backbone_steps: int = setting(24, "steps of further clean fine-tuning for the updated backbone (0: skip)")
    transfer: str = setting("humaneval", "corpus of the transfer test (humaneval, stdlib:test, a directory; '': skip)")
    n_resamples: int = setting(1000, "bootstrap resamples of the intervals")
    min_gain: float = setting(
        0.05, "a shift tests the claims only if its fine-tune's gain over theta_std lies above this (nats/token, lower end of the 95 percent interval)"
    )
    data_seed: int = setting(0, "seed of which files and functions are drawn")


# ----------------------------------------------------------------------------------------------------------------
# the result


def _spread(items: list, n: int) -> list:
    """``n`` items spaced evenly over ``items`` (all of them if there are fewer), so one file does not dominate."""
    if n >= len(items):
        return list(items)
    return [items[int(round(i * (len(items) - 1) / (n - 1)))] for i in range(n)] if n > 1 else items[:1]


def _key(seed, corpus, model, ds) -> str:
    return f"{seed}|{corpus}|{model}|{ds}"


@dataclass(frozen=True)
class SignatureStudy(Study):
    """Per-document losses of every patched model, the claims with their intervals, the per-seed numbers, the
    per-layer profile and the storage on disk."""

    model: str
    doc: dict = result(key="doc_losses", json=lambda d: {k: [round(float(x), 4) for x in v] for k, v in d.items()})
    # "seed|corpus|model|dataset" -> per-document losses [n_docs] (float64)
    losses: pd.DataFrame  # one row per (seed, corpus, model, alpha, dataset): the mean over documents
    per_seed: pd.DataFrame  # one row per (measure, shift, seed): estimate and interval
    headline: dict[str, Interval]  # "measure" (pooled over the tested shifts) or "measure:shift", seeds averaged
    claims: tuple[Claim, ...]
    profile: pd.DataFrame  # per layer: norms of task vectors and signatures, cosines with the standard one
    storage: dict
    finetunes: dict  # name -> loss curve and settings
    settings: dict = field(default_factory=dict)
    config: SignatureConfig | None = result(None, json=None)  # its settings are in ``settings``

    def report(self, model=None):
        """The study as a :class:`codecircuits.report.Report`."""
        return report(self)

    def to_dataframe(self) -> pd.DataFrame:
        return self.losses

    def top(self, k: int = 5) -> pd.DataFrame:
        """The layers where the signatures' norm is largest."""
        cols = [c for c in self.profile.columns if c.startswith("norm_sig_")]
        return self.profile.assign(norm_sig=self.profile[cols].sum(axis=1)).nlargest(k, "norm_sig")

    def docs(self, model: str, dataset: str, corpus: str = "stdlib", seed: int | None = None) -> torch.Tensor:
        """Per-document losses (mean over the seeds unless ``seed`` is given)."""
        seeds = self.settings["seeds"] if seed is None else [seed]
        keys = [_key(s, corpus, model, dataset) for s in seeds]
        if model == "pre":
            keys = [_key("all", corpus, model, dataset)]
        missing = [k for k in keys if k not in self.doc]
        if missing:
            raise KeyError(f"not measured: {missing[0]}")
        return torch.stack([self.doc[k] for k in keys], 1).mean(1)

    def loss(self, model: str, dataset: str, corpus: str = "stdlib", seed: int | None = None) -> float:
        """Mean loss over the held-out documents (and over seeds unless ``seed`` is given)."""
        return float(self.docs(model, dataset, corpus, seed).mean())

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, iv in self.headline.items():
            out[name] = iv.estimate
        for k in ("ratio_full_to_signature", "ratio_full_to_signature_fp16", "ratio_full_to_shallow_fp16"):
            if k in self.storage:
                out[k] = self.storage[k]
        return json_safe(out)

    def summary_text(self) -> str:
        """What ``codecircuits signatures`` prints: the claims, then every key number."""
        return "\n".join([claims_markdown(list(self.claims)), *(f"{k}: {v}" for k, v in self.metrics().items())])


# ----------------------------------------------------------------------------------------------------------------
# the steps of a run


def _check(cfg: SignatureConfig) -> tuple[str, ...]:
    shifts = tuple(cfg.shifts)
    if not shifts:
        raise InputError("Name at least one shift.")
    for s in shifts:
        if s not in SHIFTS:
            raise InputError(f"Unknown shift {s!r}; choose from {', '.join(SHIFTS)}.")
    if len(set(shifts)) != len(shifts):
        raise InputError(f"Each shift once, please: {shifts}.")
    if not cfg.seeds:
        raise InputError("Give at least one seed.")
    if cfg.eval_docs < 2:
        raise InputError("eval_docs must be at least 2 (the intervals resample documents).")
    return shifts


def load_data(model, cfg: SignatureConfig, shifts: tuple[str, ...]):
    """Step 1: the standard library's train functions (half for the fine-tunes, half for the updated backbone) as
    training chunks of every shift, its validation functions as held-out documents of every evaluation set, and the
    transfer corpus's likewise. Returns ``corpora`` (``{corpus: {"train": {shift: tokens}, "eval": {set:
    docs}}}``), the backbone's tokens, the held-out functions and the evaluation sets."""
    chars = cfg.train_chunks * cfg.seq_len * 5  # characters per token are about 3-4 here
    pool = code_snippets("train", 2 * chars, cfg.data_seed)
    train, more = pool[0::2], pool[1::2] or pool
    held = _spread(code_snippets("validation", None, cfg.data_seed), cfg.eval_docs)
    if len(held) < cfg.eval_docs:
        raise InputError(f"The validation split has {len(held)} usable functions, fewer than eval_docs={cfg.eval_docs}.")
    sets = ["clean", *shifts] + (["all"] if len(shifts) > 1 else [])

    def batches(texts, shift):
        return S.make_batches(model, shifted_texts(texts, shift, shifts), seq_len=cfg.seq_len, n=cfg.train_chunks)

    def docs(texts, shift):
        return S.doc_tokens(model, shifted_texts(texts, shift, shifts), max_len=cfg.eval_tokens, min_len=4)

    corpora = {"stdlib": {"train": {d: batches(train, d) for d in ["clean", *shifts]}, "eval": {d: docs(held, d) for d in sets}}}
    more_toks = batches(more, "clean")
    if cfg.transfer:
        tr_train, tr_eval = transfer_snippets(cfg.transfer, cfg.data_seed)
        tr_eval = _spread(tr_eval, cfg.eval_docs)
        corpora["transfer"] = {
            "train": {d: batches(tr_train, d) for d in ["clean", *shifts]},
            "eval": {d: docs(tr_eval, d) for d in ["clean", *shifts]},
        }
    return corpora, more_toks, held, sets


@dataclass
class _Lab:
    """What the steps of a run share: the model and its trained weights, the config, the data, and what they
    collect -- per-document losses (``doc``), their means (``rows``) and the fine-tunes' records."""

    model: object
    cfg: SignatureConfig
    shifts: tuple[str, ...]
    params: dict
    corpora: dict
    sets: list
    shallow: list
    deep: list
    doc: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)
    finetunes: dict = field(default_factory=dict)

    def measure(self, seed, corpus, name, alpha, tvs, coefs, datasets) -> None:
        """The held-out losses of ``corpus``'s ``datasets`` with ``tvs`` patched in at ``coefs`` (as ``name``)."""
        with S.patched(self.model, tvs, coefs) if tvs else contextlib.nullcontext():
            for d in datasets:
                v = S.doc_losses(self.model, self.corpora[corpus]["eval"][d])
                self.doc[_key(seed, corpus, name, d)] = v
                self.rows.append(
                    {"seed": seed, "corpus": corpus, "model": name, "alpha": alpha, "dataset": d, "loss": float(v.mean())}
                )

    def tune(self, tokens, seed: int, key: str, *, name: str | None = None, steps: int | None = None):
        """A fine-tune of the trained weights on ``tokens`` (data order ``seed``; ``steps``: the config's unless
        given), its task vector called ``name`` (default ``key``), recorded in ``finetunes[key]``."""
        c = self.cfg
        run = S.finetune(self.model, tokens, self.params, steps=c.steps if steps is None else steps, lr=c.lr,
                         batch_size=c.batch_size, seed=seed, name=name or key, progress=False)
        self.finetunes[key] = {"losses": [round(x, 4) for x in run.losses], "seconds": round(run.seconds, 1),
                               **run.settings}
        return run

    @property
    def alphas(self) -> list[float]:
        """The alphas of the sweep, 1 always among them."""
        return sorted({float(a) for a in self.cfg.alphas} | {1.0})


def finetune_shifts(lab: _Lab, seed: int, bar):
    """Step 2 (per seed): the clean fine-tune (``theta_std``, the standard task vector) and one per shift, each
    shift's signature and a matched-norm random direction per shift."""
    runs = {}
    for i, d in enumerate(["clean", *lab.shifts]):
        runs[d] = lab.tune(lab.corpora["stdlib"]["train"][d], 1000 * seed + i, f"seed {seed} {d}")
        bar.update()
    std = runs["clean"].task_vector
    sigs = {c: S.signature(runs[c].task_vector, std, name=f"{c} signature") for c in lab.shifts}
    rands = {
        c: S.random_like(sigs[c], seed=1000 * seed + 7 + i, name=f"random like {c}") for i, c in enumerate(lab.shifts)
    }
    return runs, std, sigs, rands


def measure_signatures(lab: _Lab, seed: int, std, runs: dict, sigs: dict, rands: dict) -> None:
    """Step 3 (per seed): on held-out stdlib code, ``theta_std``, each shift fine-tune, ``theta_std + alpha x
    signature`` for every alpha, the random direction, the shallow and the deep half of the signature, and (with
    several shifts) all signatures summed at alpha 1 each and at alpha 1/N."""
    sets, shifts = lab.sets, lab.shifts
    lab.measure(seed, "stdlib", "std", 0.0, [std], [1.0], sets)
    for c in shifts:
        lab.measure(seed, "stdlib", f"ft_{c}", 1.0, [runs[c].task_vector], [1.0], ["clean", c])
        for a in lab.alphas:
            ds = ["clean", *shifts] if a == 1.0 else ["clean", c]
            lab.measure(seed, "stdlib", f"sig_{c}@{a:g}", a, [std, sigs[c]], [1.0, a], ds)
        lab.measure(seed, "stdlib", f"rand_{c}", 1.0, [std, rands[c]], [1.0, 1.0], ["clean", c])
        lab.measure(seed, "stdlib", f"shallow_{c}", 1.0, [std, sigs[c].restrict(lab.shallow)], [1.0, 1.0], [c])
        if lab.deep:
            lab.measure(seed, "stdlib", f"deep_{c}", 1.0, [std, sigs[c].restrict(lab.deep)], [1.0, 1.0], [c])
    if len(shifts) > 1:
        all_sigs, n = [sigs[c] for c in shifts], len(shifts)
        lab.measure(seed, "stdlib", "compose_sum", 1.0, [std, *all_sigs], [1.0] + [1.0] * n, sets)
        lab.measure(seed, "stdlib", "compose_mean", 1.0 / n, [std, *all_sigs], [1.0] + [1.0 / n] * n, sets)


def update_backbone(lab: _Lab, seed: int, std, sigs: dict, more_toks, bar) -> None:
    """Step 4 (per seed): ``theta_std`` fine-tuned further on more clean code (the updated backbone), measured
    alone and with each signature patched in."""
    with S.patched(lab.model, std):
        further = lab.tune(more_toks, 1000 * seed + 99, f"seed {seed} backbone", name="backbone",
                           steps=lab.cfg.backbone_steps)
    bar.update()
    upd = further.task_vector
    lab.measure(seed, "stdlib", "backbone", 0.0, [std, upd], [1.0, 1.0], ["clean", *lab.shifts])
    for c in lab.shifts:
        lab.measure(seed, "stdlib", f"backbone+sig_{c}", 1.0, [std, upd, sigs[c]], [1.0, 1.0, 1.0], ["clean", c])


def measure_transfer(lab: _Lab, seed: int, sigs: dict, rands: dict, bar) -> None:
    """Step 5 (per seed): fine-tunes on the transfer corpus (clean and per shift), and the stdlib signatures (and
    the random directions) patched into its clean fine-tune, on its held-out code."""
    truns = {}
    for i, d in enumerate(["clean", *lab.shifts]):
        truns[d] = lab.tune(lab.corpora["transfer"]["train"][d], 1000 * seed + 50 + i, f"seed {seed} transfer {d}")
        bar.update()
    tstd = truns["clean"].task_vector
    lab.measure(seed, "transfer", "std", 0.0, [tstd], [1.0], ["clean", *lab.shifts])
    for c in lab.shifts:
        lab.measure(seed, "transfer", f"ft_{c}", 1.0, [truns[c].task_vector], [1.0], [c])
        lab.measure(seed, "transfer", f"sig_{c}@1", 1.0, [tstd, sigs[c]], [1.0, 1.0], ["clean", c])
        lab.measure(seed, "transfer", f"rand_{c}", 1.0, [tstd, rands[c]], [1.0, 1.0], [c])


def run(model, config: SignatureConfig | None = None, *, progress: bool = True, **overrides) -> SignatureStudy:
    """Fine-tune on clean and on shifted code (per seed), extract the shifts' signatures, patch them into the clean
    fine-tuned model (and into a model fine-tuned on the transfer corpus, and into an updated backbone) and measure
    everything on held-out documents. The model's weights are restored at the end. ``config`` defaults to
    :class:`SignatureConfig`; keyword ``overrides`` change single settings."""
    from tqdm.auto import tqdm

    cfg = configure(SignatureConfig, config, overrides)
    shifts = _check(cfg)
    t0 = time.perf_counter()
    params = S.block_params(model, None if cfg.layers is None else list(cfg.layers), cfg.kind)
    trained_layers = sorted({int(n.split(".")[1]) for n in params})
    half = max(1, len(trained_layers) // 2)
    corpora, more_toks, held, sets = load_data(model, cfg, shifts)
    lab = _Lab(model, cfg, shifts, params, corpora, sets, trained_layers[:half], trained_layers[half:])
    lab.measure("all", "stdlib", "pre", 0.0, [], [], sets)
    if cfg.transfer:
        lab.measure("all", "transfer", "pre", 0.0, [], [], ["clean", *shifts])
    first = None
    n_ft = len(cfg.seeds) * ((1 + len(shifts)) * (2 if cfg.transfer else 1) + (1 if cfg.backbone_steps else 0))
    bar = tqdm(total=n_ft, desc="fine-tunes", disable=not progress)
    for seed in cfg.seeds:
        runs, std, sigs, rands = finetune_shifts(lab, seed, bar)
        first = first or (runs, sigs)
        measure_signatures(lab, seed, std, runs, sigs, rands)
        if cfg.backbone_steps:
            update_backbone(lab, seed, std, sigs, more_toks, bar)
        if cfg.transfer:
            measure_transfer(lab, seed, sigs, rands, bar)
    bar.close()
    tvs = {name: r.task_vector for name, r in first[0].items()}
    profile = pd.DataFrame(S.layer_profile(tvs, first[1], model.cfg.n_layers))  # first seed
    storage = S.storage_sizes(model, first[1][shifts[0]], lab.shallow)
    settings = _settings(cfg, lab, trained_layers, held, t0)
    st = SignatureStudy(model_name(model), lab.doc, pd.DataFrame(lab.rows), pd.DataFrame(), {}, (), profile, storage,
                        lab.finetunes, settings, cfg)
    headline, per_seed = measure_intervals(st)  # adds tested_shifts to settings
    st = replace(st, per_seed=per_seed, headline=headline)
    claims = claims_of(st, headline)
    settings["seconds"] = round(time.perf_counter() - t0, 1)
    return replace(st, claims=tuple(claims))


def _settings(cfg: SignatureConfig, lab: _Lab, trained_layers, held, t0) -> dict:
    """The run's settings as ``results.json`` records them."""
    return dict(
        shifts=list(lab.shifts), datasets=lab.sets, kind=cfg.kind,
        layers="all" if cfg.layers is None else list(cfg.layers), trained_layers=trained_layers,
        shallow_layers=lab.shallow, deep_layers=lab.deep, steps=cfg.steps, backbone_steps=cfg.backbone_steps, lr=cfg.lr,
        batch_size=cfg.batch_size, seq_len=cfg.seq_len,
        train_tokens=int(lab.corpora["stdlib"]["train"]["clean"].numel()),
        tokens_seen_per_finetune=cfg.steps * cfg.batch_size * cfg.seq_len, eval_docs=len(held),
        eval_tokens_clean=int(sum(t.numel() for t in lab.corpora["stdlib"]["eval"]["clean"])),
        transfer=cfg.transfer or None,
        transfer_eval_docs=len(lab.corpora["transfer"]["eval"]["clean"]) if cfg.transfer else 0,
        trained_params=sum(p.numel() for p in lab.params.values()), alphas=lab.alphas, seeds=list(cfg.seeds),
        n_resamples=cfg.n_resamples, min_gain=cfg.min_gain, seconds=round(time.perf_counter() - t0, 1),
    )


# ----------------------------------------------------------------------------------------------------------------
# intervals and claims


def _share(ref, patched, ft):
    return (ref - patched).mean() / (ref - ft).mean()


def _gain_diff(ref, own, ref_other, other):
    return ((ref - own) - (ref_other - other)).mean()


def _measures(st: SignatureStudy) -> dict:
    """measure -> (statistic, function of (shift, seed) giving its per-document inputs, corpus) for every measure."""
    s = st.settings
    shifts = s["shifts"]
    amax = max(s["alphas"])
    m = {}

    def D(model, ds, corpus="stdlib"):
        return lambda seed: st.docs(model, ds, corpus, seed)

    m["share"] = (_share, lambda c: [D("std", c), D(f"sig_{c}@1", c), D(f"ft_{c}", c)])
    m["random_share"] = (_share, lambda c: [D("std", c), D(f"rand_{c}", c), D(f"ft_{c}", c)])
    m["finetune_gain"] = (lambda r, f: (r - f).mean(), lambda c: [D("std", c), D(f"ft_{c}", c)])
    m["signature_gain"] = (lambda r, p: (r - p).mean(), lambda c: [D("std", c), D(f"sig_{c}@1", c)])
    m["clean_cost_alpha1"] = (lambda r, p: (p - r).mean(), lambda c: [D("std", "clean"), D(f"sig_{c}@1", "clean")])
    m["clean_cost_alpha_max"] = (lambda r, p: (p - r).mean(), lambda c: [D("std", "clean"), D(f"sig_{c}@{amax:g}", "clean")])
    m["shift_gain_alpha_max"] = (lambda r, p: (r - p).mean(), lambda c: [D("std", c), D(f"sig_{c}@{amax:g}", c)])
    if len(shifts) > 1:
        def other(c):
            others = [o for o in shifts if o != c]
            return [D("std", c), D(f"sig_{c}@1", c),
                    lambda seed: torch.stack([st.docs("std", o, "stdlib", seed) for o in others], 1).mean(1),
                    lambda seed: torch.stack([st.docs(f"sig_{c}@1", o, "stdlib", seed) for o in others], 1).mean(1)]
        m["own_minus_other_gain"] = (_gain_diff, other)
        m["compose_sum_share"] = (_share, lambda c: [D("std", c), D("compose_sum", c), D(f"ft_{c}", c)])
        m["compose_mean_share"] = (_share, lambda c: [D("std", c), D("compose_mean", c), D(f"ft_{c}", c)])
    if s["deep_layers"]:
        m["shallow_share"] = (_share, lambda c: [D("std", c), D(f"shallow_{c}", c), D(f"ft_{c}", c)])
        m["deep_share"] = (_share, lambda c: [D("std", c), D(f"deep_{c}", c), D(f"ft_{c}", c)])
        m["shallow_minus_deep_share"] = (
            lambda r, sh, dp, f: (dp - sh).mean() / (r - f).mean(),
            lambda c: [D("std", c), D(f"shallow_{c}", c), D(f"deep_{c}", c), D(f"ft_{c}", c)],
        )
    if s["backbone_steps"]:
        m["backbone_gain"] = (lambda r, p: (r - p).mean(), lambda c: [D("backbone", c), D(f"backbone+sig_{c}", c)])
        m["backbone_retention"] = (
            lambda r2, p2, r, p: (r2 - p2).mean() / (r - p).mean(),
            lambda c: [D("backbone", c), D(f"backbone+sig_{c}", c), D("std", c), D(f"sig_{c}@1", c)],
        )
    if s["transfer"]:
        T = "transfer"
        m["transfer_share"] = (_share, lambda c: [D("std", c, T), D(f"sig_{c}@1", c, T), D(f"ft_{c}", c, T)])
        m["transfer_random_share"] = (_share, lambda c: [D("std", c, T), D(f"rand_{c}", c, T), D(f"ft_{c}", c, T)])
        m["transfer_finetune_gain"] = (lambda r, f: (r - f).mean(), lambda c: [D("std", c, T), D(f"ft_{c}", c, T)])
    return m


def measure_intervals(st: SignatureStudy) -> tuple[dict, pd.DataFrame]:
    """Intervals over documents (per-document values averaged over seeds): ``"X:c"`` for shift c, ``"X"`` pooled over
    the shifts whose fine-tune gains more than ``min_gain`` over theta_std (the *tested* shifts; all shifts if none),
    and the per-seed table. Pooling puts the shifts' per-document values side by side, so a pooled share is the
    tested shifts' summed gain over their summed fine-tune gain."""
    s = st.settings
    shifts, seeds, nr = s["shifts"], s["seeds"], s["n_resamples"]
    head, rows, cols = {}, [], {}
    measures = _measures(st)
    for name, (stat, inputs) in measures.items():
        per_shift = {c: inputs(c) for c in shifts}
        cols[name] = {c: [torch.stack([f(seed) for seed in seeds], 1) for f in fs] for c, fs in per_shift.items()}
        for c in shifts:
            head[f"{name}:{c}"] = intervals.bootstrap(stat, *cols[name][c], n_resamples=nr)
            for seed in seeds:
                iv = intervals.bootstrap(stat, *[f(seed) for f in per_shift[c]], n_resamples=nr)
                rows.append({"measure": name, "shift": c, "seed": seed, "estimate": iv.estimate, "low": iv.low, "high": iv.high})
    tested = [c for c in shifts if head[f"finetune_gain:{c}"].low > s["min_gain"]]
    tested_t = [c for c in shifts if f"transfer_finetune_gain:{c}" in head and head[f"transfer_finetune_gain:{c}"].low > s["min_gain"]]
    s["tested_shifts"], s["tested_transfer_shifts"] = tested, tested_t
    for name, (stat, _) in measures.items():
        use = (tested_t if name.startswith("transfer_") else tested) or list(shifts)
        pooled = [torch.cat([cols[name][c][i] for c in use], 1) for i in range(len(cols[name][use[0]]))]
        head[name] = intervals.bootstrap(stat, *pooled, n_resamples=nr)
    return head, pd.DataFrame(rows)


def _seed_range(st: SignatureStudy, measure: str, shift: str) -> str:
    p = st.per_seed
    if not len(p):
        return ""
    g = p[(p.measure == measure) & (p["shift"] == shift)].sort_values("seed")
    return "per seed " + ", ".join(f"{e:.2f} [{lo:.2f}, {hi:.2f}]" for e, lo, hi in zip(g.estimate, g.low, g.high))


def _per_shift(head: dict, measure: str, shifts, digits=2) -> str:
    return "; ".join(f"{c} {head[f'{measure}:{c}'].format(digits)}" for c in shifts if f"{measure}:{c}" in head)


def _pooled(use) -> str:
    return f"pooled over {', '.join(use)}" if use else "no shift tests this (none learnt)"


def _each(head: dict, measure: str, use, test) -> bool:
    """Whether ``test`` holds for the interval of ``measure`` on every shift in ``use`` (and ``use`` is not empty)."""
    return bool(use) and all(test(head[f"{measure}:{c}"]) for c in use)


_RANDOM = "reproduced: the pooled share's interval lies above 0.5 and the random direction's, and every tested "
_COMPOSE = ("signatures compose {label}: the sum keeps each shift's gain (share, {pooled})",
            "reproduced: the pooled share's interval lies above 0.5 and every tested shift's above 0; partly: the "
            "pooled one lies above 0")
CLAIMS = claim_specs(
    COMMAND,
    recovery=("the {shift} signature patched into the clean fine-tuned model recovers the {shift} fine-tune's gain on "
              "{shift} code (share of the gain, alpha 1)",
              "not reproduced unless the shift is learnt (its fine-tune's gain interval above {min_gain:g}); "
              "reproduced: the share's interval lies above 0.5 and above the random direction's; partly: above 0 and "
              "the random direction's"),
    alpha=("alpha trades clean for shifted performance (clean-loss increase at alpha {amax:g}, {pooled})",
           "reproduced: both intervals lie above 0; partly: one does"),
    discriminative=("signatures are discriminative: a signature's gain on its own shift exceeds its gain on the other "
                    "shifts (nats/token, {pooled})",
                    "reproduced: the pooled interval and every tested shift's lie above 0; partly: the pooled one "
                    "does"),
    compose_sum_share=_COMPOSE,
    compose_mean_share=_COMPOSE,
    transfer=("signatures transfer across datasets: the stdlib signature patched into a model fine-tuned on {corpus} "
              "recovers that corpus's shift fine-tune gain (share, {pooled})",
              _RANDOM + "shift's above 0; partly: above 0 and the random direction's"),
    backbone=("signatures survive a backbone update: gain on the clean model fine-tuned further, as a share of the "
              "gain on the original clean model ({pooled})",
              "reproduced: the retention's interval lies above 0.5 and every tested shift's gain above 0; partly: the "
              "pooled gain lies above 0"),
    shallow=("the signature sits mostly in shallow layers: share recovered by layers {shallow} minus that by layers "
             "{deep} ({pooled})",
             "reproduced: every tested shift's interval lies above 0; partly: the pooled one does"),
    storage=("a signature is up to 13x smaller than a full weight copy (files on disk)",
             "reproduced: the float16 signature (or its shallow half) is at least 13x smaller than the full copy; "
             "partly: smaller", "up to 13x smaller than a full weight copy", "Cai et al. (ICML 2023), abstract"),
)


def claims_of(st: SignatureStudy, head: dict) -> list[Claim]:
    """The paper's claims with this run's evidence (``head``: :func:`measure_intervals`'s intervals), control and
    verdict: recovery per shift, then the pooled claims, transfer, the updated backbone, depth and storage."""
    s, shifts, tested = st.settings, st.settings["shifts"], st.settings["tested_shifts"]
    out, pooled = [], _pooled(tested)
    for c in shifts:
        share, rnd, gain = head[f"share:{c}"], head[f"random_share:{c}"], head[f"finetune_gain:{c}"]
        learnt, why = c in tested, ""
        if not learnt:
            why = f"the {c} fine-tune's gain over theta_std does not clear {s['min_gain']:g} nats/token (its interval " \
                  "reaches below): too little to recover, so this shift is left out of the pooled claims. "
        out.append(CLAIMS["recovery"](
            learnt and share.low > 0.5 and rnd.high < share.low, learnt and share.low > 0 and rnd.high < share.low,
            share, rnd, f"{why}control: matched-norm random direction; {c} fine-tune gain over theta_std "
            f"{gain.format(3)} nats/token; {_seed_range(st, 'share', c)}", shift=c, min_gain=s["min_gain"]))
    amax, t = max(s["alphas"]), bool(tested)
    cost, gain = head["clean_cost_alpha_max"], head["shift_gain_alpha_max"]
    out.append(CLAIMS["alpha"](
        t and cost.low > 0 and gain.low > 0, t and (cost.low > 0 or gain.low > 0), cost, gain,
        f"control column: the shifted-loss gain at alpha {amax:g}; clean-loss increase at alpha 1 "
        f"{head['clean_cost_alpha1'].format(3)}; {_per_shift(head, 'clean_cost_alpha_max', shifts, 3)}",
        amax=amax, pooled=pooled))
    if "own_minus_other_gain" in head:
        d = head["own_minus_other_gain"]
        out.append(CLAIMS["discriminative"](
            t and d.low > 0 and _each(head, "own_minus_other_gain", tested, lambda i: i.low > 0), t and d.low > 0, d,
            None, _per_shift(head, "own_minus_other_gain", shifts, 3), pooled=pooled))
        for name, label in (("compose_sum_share", "by summation (alpha 1 each)"),
                            ("compose_mean_share", f"in the RWS code's alpha/N form (alpha 1/{len(shifts)} each)")):
            cs = head[name]
            out.append(CLAIMS[name](t and cs.low > 0.5 and _each(head, name, tested, lambda i: i.low > 0),
                                    t and cs.low > 0, cs, None, _per_shift(head, name, shifts), label=label,
                                    pooled=pooled))
    return out + _transfer_claims(st, head) + [_storage_claim(st)]


def _transfer_claims(st: SignatureStudy, head: dict) -> list[Claim]:
    s, shifts, out = st.settings, st.settings["shifts"], []
    tested, tested_t = s["tested_shifts"], s["tested_transfer_shifts"]
    if "transfer_share" in head:
        t, tr = head["transfer_share"], head["transfer_random_share"]
        out.append(CLAIMS["transfer"](
            bool(tested_t) and t.low > 0.5 and tr.high < t.low
            and _each(head, "transfer_share", tested_t, lambda i: i.low > 0),
            bool(tested_t) and t.low > 0 and tr.high < t.low, t, tr,
            f"control: matched-norm random direction. {_per_shift(head, 'transfer_share', shifts)}; {s['transfer']} "
            f"fine-tune gains {_per_shift(head, 'transfer_finetune_gain', shifts, 3)}",
            corpus=s["transfer"], pooled=_pooled(tested_t)))
    if "backbone_retention" in head:
        r, g = head["backbone_retention"], head["backbone_gain"]
        out.append(CLAIMS["backbone"](
            bool(tested) and r.low > 0.5 and _each(head, "backbone_gain", tested, lambda i: i.low > 0),
            bool(tested) and g.low > 0, r, None,
            f"gain on the updated backbone {g.format(3)} nats/token; {_per_shift(head, 'backbone_retention', shifts)}",
            pooled=_pooled(tested)))
    if "shallow_minus_deep_share" in head:
        d = head["shallow_minus_deep_share"]
        out.append(CLAIMS["shallow"](
            bool(tested) and _each(head, "shallow_minus_deep_share", tested, lambda i: i.low > 0),
            bool(tested) and d.low > 0, d, None,
            f"{_per_shift(head, 'shallow_minus_deep_share', shifts)}; shallow half alone "
            f"{head['shallow_share'].format(2)}, deep half alone {head['deep_share'].format(2)}",
            shallow=s["shallow_layers"], deep=s["deep_layers"], pooled=_pooled(tested)))
    return out


def _storage_claim(st: SignatureStudy) -> Claim:
    s = st.storage
    best = max(s["ratio_full_to_signature_fp16"], s["ratio_full_to_shallow_fp16"])
    return CLAIMS["storage"](
        best >= 13, best > 1, None, None,
        f"full copy {s['full_copy_file_mib']:.2f} MiB; signature float32 {s['signature_file_mib']:.2f} MiB "
        f"({s['ratio_full_to_signature']:.1f}x), float16 {s['ratio_full_to_signature_fp16']:.1f}x, shallow half "
        f"float16 {s['ratio_full_to_shallow_fp16']:.1f}x (no interval: one file each)")


# ----------------------------------------------------------------------------------------------------------------
# report

#: the metric cards the report opens with, after the claims (those a run has), and their labels
KEY_NUMBERS = {
    "share": "share of the shift fine-tune's gain the signature recovers (pooled)",
    "random_share": "the same for a matched-norm random direction",
    "finetune_gain": "shift fine-tune's gain over theta_std on shifted code (nats/token)",
    "own_minus_other_gain": "gain on its own shift minus on the others (nats/token)",
    "transfer_share": "share recovered on the transfer corpus",
    "backbone_retention": "gain kept on an updated backbone (share)",
    "shallow_minus_deep_share": "share recovered by the shallow half minus the deep half",
    "ratio_full_to_signature_fp16": "full weight copy / float16 signature (file sizes)",
}


def report(study: SignatureStudy):
    """The study as a :class:`codecircuits.report.Report`: the claims, a few key numbers, the alpha sweep, every
    measure, the depth profile and the storage."""
    s = study.settings
    r = study.open_report(
        f"Weight signatures of code shifts on {study.model}",
        f"shifts: {', '.join(s['shifts'])}; {len(s['seeds'])} seeds of {s['steps']} fine-tuning steps of "
        f"{s['batch_size']}x{s['seq_len']} tokens on the {s['kind']} weights ({s['trained_params'] / 1e6:.2f}M "
        f"parameters); {s['eval_docs']} held-out documents",
        labels=KEY_NUMBERS,
        claims_text=PAPER + " Intervals: 95% bootstrap over held-out documents, per-document losses averaged over the "
        "seeds.",
    )
    r.section("Clean versus shifted loss across alpha",
              text="theta_std + alpha x signature (alpha 0 = the clean fine-tuned model), mean over seeds.")
    for c in s["shifts"]:
        xs = [0.0] + list(s["alphas"])
        names = ["std"] + [f"sig_{c}@{a:g}" for a in s["alphas"]]
        r.line_chart(
            x=xs,
            series={"clean": [study.loss(n, "clean") for n in names], c: [study.loss(n, c) for n in names],
                    f"{c}, shift fine-tune": [study.loss(f"ft_{c}", c)] * len(xs)},
            title=f"{c} signature", x_title="alpha", y_title="loss (nats/token)",
        )
    r.section("Every measure", text="Pooled over the tested shifts (a measure without a shift), or per shift "
              "(\"measure:shift\"); seeds averaged.")
    r.metrics({k: v for k, v in study.metrics().items() if k not in r.metric_keys})
    hl = pd.DataFrame([{"measure": k, **v.to_json()} for k, v in study.headline.items()])
    r.table(hl.round(4), caption="every measure: pooled over seeds (and over shifts where no shift is named)")
    r.table(study.per_seed.round(4), caption="per seed")
    mean = study.losses.groupby(["corpus", "model", "dataset"]).loss.mean().unstack("dataset").reset_index()
    r.table(mean.round(4), caption="mean loss per model and evaluation set (mean over seeds; NaN: not evaluated)")
    r.section("Where in depth", text="Per layer (first seed): norm of each task vector and signature, and the cosine of "
              "each shift's task vector with the clean one.")
    p = study.profile
    cols = [c for c in p.columns if c.startswith(("norm_sig_", "norm_tv_"))]
    r.line_chart(x=list(p.layer), series={c: [float(v) for v in p[c]] for c in cols}, title="norm by layer",
                 x_title="layer", y_title="L2 norm")
    r.table(p.round(5), caption="norm and cosine profile by layer")
    r.section("Storage", text="safetensors files on disk: a full copy of the weights against the signature.")
    r.table(pd.DataFrame([study.storage]).round(3), caption="sizes in MiB")
    return study.close_report(r)


__all__ = ["SHIFTS", "SignatureConfig", "SignatureStudy", "claims_of", "code_snippets", "run", "shifted_texts"]
