"""Study: neuron-level repair (MINT, Gu et al.) of line-level code completion, against a tuned SGD baseline.

Repair cases are lines of held-out code whose teacher-forced greedy completion has one or two wrong tokens:
Python (the standard library's test split and HumanEval) and, opt-in, shell (``shell:test``: Debian's
bash-completion scripts, ``codecircuits corpus fetch shell``; line completion of shell commands is our offline
stand-in for the paper's intent-to-bash task, not that task). The cases are shuffled and split into a
*selection* split (``n_select`` cases), on which the SGD baseline's learning rate and steps are chosen from a
small grid, and the *evaluation* split (``n_cases`` cases), on which everything is scored.

**One repair at a time.** Each evaluation case is repaired from the base model twice: by MINT (value-vector edits
of a few neurons) and by SGD (the chosen setting) on the MLP output weights of the same layers; after each the
study measures

- **success**: every token of the line is the greedy prediction;
- **cost**: value vectors (neurons) changed, edit steps, seconds;
- **generalisation**: other held-out prompts (other files) whose next token is the repaired target token: change
  of log p(target) and share of the wrong ones made right; the control is the signed change of log p(target) on
  unrelated prompts;
- **specificity**: unrelated prompts (other lines, other targets): share whose greedy prediction is unchanged, and
  the change in held-out loss;

then undoes the edit and checks the logits are bit-identical before the next case.

**Successive repairs.** Then each method repairs the first ``n_successive`` evaluation cases one after another
*without undoing* (MINT and SGD each in their own sequence from the base). After every repair: did it succeed,
are the earlier repaired lines still fixed (generalisation across repairs), are unrelated predictions unchanged
and how much did the held-out loss move (specificity). At the end the base is restored and checked bit for bit.

Every headline number has a 95% bootstrap interval over cases (paired for MINT - SGD, same cases), and the
paper's claims get verdicts (``study.claims``; ``results.json["claims"]``).

>>> study = run(load_model("smollm2-135m"), RepairConfig(n_cases=24))
>>> html, js = study.save("reports/repair")
"""

from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import pandas as pd
import torch

from .. import corpus as corpus_mod
from .. import intervals
from .. import repair as R
from ..core.inputs import token_texts
from ..errors import InputError
from ..repair.effects import METHODS
from .common import Study, claim_specs, configure, json_safe, result, setting

PAPER = (
    "MINT (Gu et al., arXiv 2312.05356) reports that it repairs line-level code generation (and shellcode and "
    "intent-to-bash) by patching 'usually one or two neurons', more effectively and faster than SGD fine-tuning "
    "of the FFN output weights, with generalisation to prompts of the same fix, little effect on unrelated "
    "prompts, and that it keeps working over many repairs made in succession."
)

#: the SGD baseline's grid (learning rate x steps), chosen on the selection split
SGD_LRS = (1e-3, 1e-2, 3e-2)
SGD_STEPS = (5, 10, 20)


@dataclass(frozen=True)
class RepairConfig:
    """Settings of the study; the command line's options are generated from these fields."""

    n_cases: int = setting(6, "evaluation repair cases (split over the sources)", flag="--cases")
    n_select: int = setting(2, "extra cases on which the SGD baseline's lr x steps is chosen", flag="--select")
    n_successive: int = setting(
        0, "evaluation cases repaired one after another without undoing (0: all)", flag="--successive"
    )
    sources: tuple[str, ...] = setting(
        ("stdlib:test", "humaneval"),
        "corpora of held-out code (comma-separated; add shell:test for the shell task after "
        "`codecircuits corpus fetch shell`)",
    )
    lines_per_file: int = setting(3, "random lines scanned per file")
    context_tokens: int = setting(64, "tokens of context before a repaired line")
    max_errors: int = setting(2, "wrong tokens a case may have")
    layers: str = setting("half", "editable layers: half, quarter, last3 or all")
    n_candidates: int = setting(10, "candidate neurons per wrong token", flag="--candidates")
    max_edits: int = setting(10, "edits per wrong token before rolling back")
    scale: float = setting(10.0, "MINT edit size eps = 0.01 * scale")
    sgd_lrs: tuple[float, ...] = setting(SGD_LRS, "SGD baseline learning rates to choose from (comma-separated)")
    sgd_steps: tuple[int, ...] = setting(SGD_STEPS, "SGD baseline step counts to choose from (comma-separated)")
    n_gen: int = setting(8, "prompts sharing the fix, per case (generalisation)")
    n_spec_lines: int = setting(4, "unrelated lines (specificity)")
    heldout_tokens: int = setting(256, "held-out tokens for the loss change (per task)")
    n_resamples: int = setting(1000, "bootstrap resamples of the intervals")
    seed: int = setting(0, "seed of case sampling")


@dataclass(frozen=True)
class RepairStudy(Study):
    """Per-case rows (one per evaluation case and method), the successive-repair curves, the SGD sweep, the
    intervals and claims, and the settings that produced them."""

    model: str
    rows: tuple[dict, ...]
    cases: tuple[R.RepairCase, ...] = result(json=None)
    heldout_loss_base: float = result(json=None)  # in ``metrics``
    settings: dict = field(default_factory=dict)
    examples: tuple[dict, ...] = ()
    config: RepairConfig | None = result(None, json=None)  # its settings are in ``settings``
    successive: tuple[dict, ...] = ()  # one row per method and number of repairs so far
    sweep: tuple[dict, ...] = result((), key="sgd_sweep")  # one row per SGD setting on the selection split
    sgd_choice: dict = field(default_factory=dict)
    intervals: dict = field(default_factory=dict)  # name -> intervals.Interval
    claims: tuple = ()  # intervals.Claim rows

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows))

    def top(self, k: int = 10) -> pd.DataFrame:
        """The MINT repairs that changed the fewest neurons (successes first)."""
        df = self.to_dataframe()
        df = df[df.method == "mint"]
        return df.sort_values(["success", "neurons"], ascending=[False, True]).head(k)

    def summary(self, by: tuple[str, ...] = ("method",)) -> pd.DataFrame:
        """One row per method (``by=("method", "task")``: per method and task): the key numbers, means over cases
        (:func:`codecircuits.repair.summarise`)."""
        return R.summarise(self.rows, by)

    def successive_frame(self) -> pd.DataFrame:
        """The successive-repair curves: one row per method and number of repairs made so far."""
        return pd.DataFrame(list(self.successive))

    def metrics(self) -> dict[str, float]:
        """The headline numbers (the report's cards); :meth:`summary` has the rest per method."""
        out: dict[str, float] = {"n_cases": len(self.cases), "heldout_loss_base": self.heldout_loss_base}
        for row in self.summary().to_dict("records"):
            m = row["method"]
            out.update({f"{m}_{k}": row[k] for k in HEADLINE})
        for method in METHODS:
            iv = self.intervals.get(f"{method}_successive_retained")
            if iv is not None:
                out[f"{method}_successive_retained"] = iv.estimate
        return json_safe(out)

    def json_extra(self) -> dict:
        return {"summary": self.summary().to_dict("records"),
                "summary_by_task": self.summary(("method", "task")).to_dict("records")}

    def summary_text(self) -> str:
        """What ``codecircuits repair`` prints: :meth:`summary`, rounded."""
        return self.summary().round(3).to_string(index=False)

    def report(self, model=None):
        """The study as a :class:`codecircuits.report.Report`: the claims and key numbers first, then MINT versus
        SGD, the SGD baseline's setting, the successive repairs and every case."""
        s = self.settings
        r = self.open_report(
            f"Neuron-level repair (MINT) on {self.model}",
            f"{s['n_cases']} lines of held-out code ({', '.join(s['sources'])}), MINT vs SGD on W_out",
            labels={k: LABELS[k] for k in KEY_NUMBERS},
        )
        _report_methods(r, self)
        _report_successive(r, self)
        _report_cases(r, self)
        return self.close_report(r, LABELS)


#: the numbers of :meth:`RepairStudy.summary` that :meth:`RepairStudy.metrics` gives per method
HEADLINE = (
    "success_rate", "neurons_per_success", "seconds_per_case", "gen_fixed", "gen_delta_logp", "spec_unchanged",
    "heldout_loss_delta",
)  # fmt: skip


@functools.lru_cache(maxsize=16)
def _load(spec: str):
    """``corpus.load(spec)``, read once per process (finding a standard-library split walks the whole library)."""
    return corpus_mod.load(spec)


def _task(spec: str) -> str:
    return "shell" if spec.split(":", 1)[0] == "shell" else "python"


# ----------------------------------------------------------------------------------------------------------------
# the steps of a run


def _check(cfg: RepairConfig) -> None:
    if cfg.n_cases < 1:
        raise InputError("n_cases must be at least 1.")
    if cfg.n_select < 0 or cfg.n_successive < 0:
        raise InputError("n_select and n_successive must be >= 0.")
    if not cfg.sgd_lrs or not cfg.sgd_steps or min(cfg.sgd_lrs) < 0 or min(cfg.sgd_steps) < 1:
        raise InputError("The SGD grid needs at least one lr >= 0 and one step count >= 1.")


def _collect(model, cfg: RepairConfig, progress: bool):
    """Cases from every source (shuffled together), the scanned pool, and each case's task."""
    sources = tuple(cfg.sources)
    if not sources:
        raise InputError("Give at least one source corpus (e.g. --sources stdlib:test,humaneval).")
    corpora = {spec: _load(spec) for spec in sources}  # an unfetched shell corpus fails here, clearly
    total = cfg.n_cases + cfg.n_select
    per = [total // len(sources) + (i < total % len(sources)) for i in range(len(sources))]
    cases, pool, task = [], [], {}
    for spec, n in zip(sources, per):
        if n == 0:
            continue
        c, scanned = R.repair_cases(
            model, corpora[spec], n, context_tokens=cfg.context_tokens, max_errors=cfg.max_errors, seed=cfg.seed,
            min_scanned=3 * n, lines_per_file=cfg.lines_per_file, max_lines=max(2000, 40 * n), progress=progress,
        )
        if len(c) < n:
            raise InputError(
                f"{spec} gave only {len(c)} of the {n} repair cases asked for (scanned {len(scanned)} lines); ask "
                "for fewer cases, raise --lines-per-file, or add a source."
            )
        cases += c
        pool += scanned
        for x in c + scanned:
            task[(x.source, x.line_no)] = _task(spec)
    random.Random(cfg.seed).shuffle(cases)
    return cases, pool, task, corpora


@dataclass
class _Bench:
    """What every repair is measured against: the probes, the held-out text, the base model's evaluations of them
    and the base logits of each evaluation case."""

    task_of: dict
    spec_probes: list
    gen_files: dict  # task -> held-out files outside every case's file
    gen_ids: dict  # task -> path -> token ids
    heldout: torch.Tensor
    cache: R.ResidCache
    base_spec: dict
    base_loss: float
    base_digest: dict  # evaluation case index -> digest of its base logits


def _bench(model, cfg: RepairConfig, all_cases, cases, pool, task_of, corpora) -> _Bench:
    """The specificity probes (unrelated scanned lines), the generalisation files, the held-out text, and the base
    model measured on them."""
    case_keys = {(c.source, c.line_no) for c in all_cases}
    others = [c for c in pool if (c.source, c.line_no) not in case_keys]
    spec_lines = random.Random(cfg.seed).sample(others, min(cfg.n_spec_lines, len(others)))
    spec_probes = R.probes_of(spec_lines)
    if not spec_probes:
        raise InputError("No unrelated lines are left for the specificity probes; add a source or scan more lines.")
    # generalisation: held-out positions (not in any case's file) whose next token is the repaired target
    case_files = {c.source for c in all_cases}
    sources = tuple(cfg.sources)
    gen_files = {
        t: [f for spec in sources if _task(spec) == t for f in corpora[spec] if f.path not in case_files]
        for t in {_task(s) for s in sources}
    }
    gen_ids = {t: R.tokenize_files(model, fs) for t, fs in gen_files.items()}
    held = [_load("stdlib:validation")]
    if any(_task(s) == "shell" for s in sources):
        held.append(_load("shell:validation"))
    heldout = torch.cat([R.heldout_tokens(model, h, cfg.heldout_tokens) for h in held])
    cache = R.ResidCache(model, R.upper_layers(model, cfg.layers)[0])  # both methods edit only layers above
    return _Bench(
        task_of=task_of, spec_probes=spec_probes, gen_files=gen_files, gen_ids=gen_ids, heldout=heldout, cache=cache,
        base_spec=R.evaluate_probes(model, spec_probes, cache=cache),
        base_loss=R.heldout_loss(model, heldout, cache=cache),
        base_digest={i: R.logits_digest(cache.logits(c.tokens)) for i, c in enumerate(cases)},
    )


def _choose_sgd(model, cfg: RepairConfig, select, bench: _Bench, done: R.Checkpoint, progress: bool):
    """The SGD baseline's setting, chosen on the selection split (:func:`codecircuits.repair.sgd_sweep`): the sweep
    rows and the choice; without a selection split, MINT's baseline setting (lr 1e-2, 10 steps) where the grid
    has it."""
    if select and done.state["sweep"] is not None:
        return done.state["sweep"]
    if select:
        sweep, choice = R.sgd_sweep(
            model, select, layers=cfg.layers, lrs=cfg.sgd_lrs, steps=cfg.sgd_steps, cache=bench.cache, progress=progress
        )
        done.state["sweep"] = [sweep, choice]
        done.save()
        return sweep, choice
    choice = {
        "lr": 1e-2 if 1e-2 in cfg.sgd_lrs else cfg.sgd_lrs[0],
        "steps": 10 if 10 in cfg.sgd_steps else cfg.sgd_steps[0],
    }
    return [], choice


def _repair_case(model, cfg: RepairConfig, bench: _Bench, ci: int, case, lr: float, steps: int):
    """Repair one evaluation case from the base by MINT and by SGD (:func:`codecircuits.repair.repair_both`) with
    its own probes: unrelated ones of other targets, and held-out prompts of the same fix. Returns the two rows and
    MINT's example."""
    tok = model.tokenizer
    task = bench.task_of[(case.source, case.line_no)]
    first = case.errors[0]
    target, wrong = case.reference[first], case.predicted[first]
    keep = [i for i, p in enumerate(bench.spec_probes) if p.target != target]
    gen = R.same_target_probes(
        model, bench.gen_files[task], target, cfg.n_gen, wrong=wrong, context_tokens=cfg.context_tokens,
        max_candidates=2 * cfg.n_gen, seed=cfg.seed + ci, token_ids=bench.gen_ids[task],
    )
    mint, sgd, res = R.repair_both(
        model, case, gen=gen, spec=[bench.spec_probes[i] for i in keep], heldout=bench.heldout,
        base_gen=R.evaluate_probes(model, gen, cache=bench.cache) if gen else None,
        base_spec={k: v[keep] for k, v in bench.base_spec.items()}, base_loss=bench.base_loss, cache=bench.cache,
        base_digest=bench.base_digest[ci], layers=cfg.layers, n_candidates=cfg.n_candidates,
        max_edits=cfg.max_edits, scale=cfg.scale, lr=lr, steps=steps,
    )
    common = dict(case=ci, task=task, source=case.source, line_no=case.line_no, errors=len(case.errors),
                  target=token_texts(tok, [target])[0], wrong=token_texts(tok, [wrong])[0])
    example = {
        "task": task,
        "line": case.line,
        "reference": token_texts(tok, case.reference),
        "before": token_texts(tok, case.predicted),
        "after_mint": token_texts(tok, res.predicted_after),
        "neurons": [f"L{a}N{b}" for a, b in res.edits.neurons],
        "success": res.success,
    }
    return [dict(common, method="mint", **mint), dict(common, method="sgd", **sgd)], example


def _repair_cases(model, cfg: RepairConfig, bench: _Bench, cases, lr, steps, done: R.Checkpoint, progress: bool):
    """Every evaluation case repaired on its own (from the checkpoint where it holds the case); the rows and the
    first six examples."""
    from tqdm.auto import tqdm

    rows, examples = [], []
    for ci, case in enumerate(tqdm(cases, desc="repair", disable=not progress)):
        saved = done.state["cases"].get(str(ci))
        if saved is None:
            new, example = _repair_case(model, cfg, bench, ci, case, lr, steps)
            saved = {"rows": new, "example": example if len(examples) < 6 else None}
            done.state["cases"][str(ci)] = saved
            done.save()
        rows += saved["rows"]
        if saved["example"] is not None and len(examples) < 6:
            examples.append(saved["example"])
    return rows, examples


def _successive(model, cfg: RepairConfig, bench: _Bench, cases, lr, steps, done: R.Checkpoint, progress: bool):
    """Each method's sequence of repairs without undoing (:func:`codecircuits.repair.successive_repairs`), from
    the checkpoint where it holds it: the rows, and per method the earlier fixes held and unrelated predictions
    unchanged after the last repair."""
    rows, still, final_spec = [], {}, {}
    for method in METHODS:
        if method not in done.state["successive"]:
            r_, st, fs = R.successive_repairs(
                model, method, cases, spec_probes=bench.spec_probes, base_spec=bench.base_spec, heldout=bench.heldout,
                base_loss=bench.base_loss, cache=bench.cache, layers=cfg.layers, n_candidates=cfg.n_candidates,
                max_edits=cfg.max_edits, scale=cfg.scale, lr=lr, steps=steps, progress=progress,
            )
            done.state["successive"][method] = [r_, st.tolist(), fs.tolist()]
            done.save()
        r_, st, fs = done.state["successive"][method]
        still[method], final_spec[method] = torch.tensor(st, dtype=torch.float64), torch.tensor(fs, dtype=torch.float64)
        rows += r_
    return rows, still, final_spec


def run(
    model,
    config: RepairConfig | None = None,
    *,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    **overrides,
) -> RepairStudy:
    """Collect ``n_select + n_cases`` repair cases (split over ``sources``), choose the SGD baseline on the
    selection split, repair each evaluation case with MINT and with SGD (undoing each), then repair the first
    ``n_successive`` in succession with each method; intervals and claims over the evaluation cases.

    ``config`` defaults to :class:`RepairConfig`; keyword ``overrides`` change single settings. ``scale``: MINT's
    edit size ``eps = 0.01 * scale`` (its planning factor is 0.01; its benchmark uses 10x). ``checkpoint``: a JSON
    file the finished steps are written to as they finish; ``resume=True`` skips the steps it holds (after
    checking it came from the same model, settings and cases).
    """
    cfg = configure(RepairConfig, config, overrides)
    _check(cfg)
    t0 = time.perf_counter()
    all_cases, pool, task_of, corpora = _collect(model, cfg, progress)
    select, cases = all_cases[: cfg.n_select], all_cases[cfg.n_select :]
    bench = _bench(model, cfg, all_cases, cases, pool, task_of, corpora)
    settings = {k: v for k, v in asdict(cfg).items() if k != "n_resamples"}  # the bootstrap is redone on resume
    done = R.Checkpoint(checkpoint, R.checkpoint_key(model, settings, all_cases), resume)
    resumed = bool(done.state["cases"] or done.state["sweep"])
    sweep, choice = _choose_sgd(model, cfg, select, bench, done, progress)
    lr, steps = float(choice["lr"]), int(choice["steps"])
    rows, examples = _repair_cases(model, cfg, bench, cases, lr, steps, done, progress)
    n_succ = len(cases) if cfg.n_successive == 0 else min(cfg.n_successive, len(cases))
    succ_rows, still, final_spec = _successive(model, cfg, bench, cases[:n_succ], lr, steps, done, progress)
    base_restored = all(R.logits_digest(bench.cache.logits(c.tokens)) == bench.base_digest[i]
                        for i, c in enumerate(cases))
    base_restored = base_restored and R.heldout_loss(model, bench.heldout, cache=bench.cache) == bench.base_loss
    ivs = R.repair_intervals(rows, succ_rows, still, final_spec, n_resamples=cfg.n_resamples, seed=cfg.seed)
    layer_list = R.upper_layers(model, cfg.layers)
    settings = dict(
        n_cases=len(cases), n_select=len(select), n_successive=n_succ, sources=list(cfg.sources),
        tasks=sorted({task_of[(c.source, c.line_no)] for c in cases}), lines_per_file=cfg.lines_per_file,
        context_tokens=cfg.context_tokens, max_errors=cfg.max_errors,
        layers=f"{cfg.layers} ({layer_list[0]}..{layer_list[-1]})", n_candidates=cfg.n_candidates,
        max_edits=cfg.max_edits, scale=cfg.scale, eps=0.01 * cfg.scale,
        sgd_grid={"lr": list(cfg.sgd_lrs), "steps": list(cfg.sgd_steps)}, sgd_lr=lr, sgd_steps=steps, n_gen=cfg.n_gen,
        n_spec_probes=len(bench.spec_probes), heldout_tokens=int(bench.heldout.numel()), pool_lines=len(pool),
        base_restored=bool(base_restored), threads=torch.get_num_threads(), seed=cfg.seed, command=command_of(cfg),
        resumed=resumed, seconds=round(time.perf_counter() - t0, 1),
    )
    return RepairStudy(
        model=str(model.cfg.model_name), rows=tuple(rows), cases=tuple(cases), heldout_loss_base=bench.base_loss,
        settings=settings, examples=tuple(examples), config=cfg, successive=tuple(succ_rows), sweep=tuple(sweep),
        sgd_choice=choice, intervals=ivs, claims=tuple(_claims(ivs, rows, succ_rows, cfg, choice)),
    )


def command_of(cfg: RepairConfig) -> str:
    """The ``codecircuits repair`` command line that runs ``cfg`` (only the settings that differ from the
    defaults)."""
    default = RepairConfig()
    parts = ["codecircuits repair"]
    for f in fields(RepairConfig):
        v = getattr(cfg, f.name)
        if v == getattr(default, f.name):
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        parts.append(f"{flag} {','.join(str(x) for x in v) if isinstance(v, tuple) else v}")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# intervals and claims


def _by_method(rows) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MINT's rows and SGD's (each in case order)."""
    df = pd.DataFrame(rows)
    mint = df[df.method == "mint"].sort_values("case").reset_index(drop=True)
    sgd = df[df.method == "sgd"].sort_values("case").reset_index(drop=True)
    return mint, sgd


#: where the paper says what the claims quote
SOURCE = "Gu et al., arXiv 2312.05356, abstract"
CLAIMS = claim_specs(
    source=SOURCE,
    neurons=("MINT repairs by patching 'usually one or two neurons'",
             "reproduced: the interval's upper end is at most 2.5 neurons; partly: the estimate is at most 3",
             "usually one or two neurons"),
    effective=("MINT is more effective than SGD fine-tuning of the FFN output weights",
               "reproduced: the paired difference (MINT - SGD) lies above 0; partly: its estimate is positive",
               "significantly outperforms the state of the art in effectiveness"),
    efficient=("MINT is more efficient than SGD (fewer weights changed, less time)",
               "reproduced: MINT changes under a hundredth of SGD's value vectors and the paired difference of seconds "
               "lies below 0; partly: the first only", "significantly outperforms the state of the art in efficiency"),
    generalise=("MINT's edits generalise to other prompts of the same fix",
                "reproduced: the paired difference (same fix - unrelated) and the share of wrong same-target prompts "
                "made right both lie above 0; partly: the first only"),
    specific=("MINT has little effect on unrelated prompts (specificity)",
              "reproduced: the share unchanged is at least 0.9 and the held-out loss change at most 0.05 (interval "
              "ends); partly: MINT's share is not below SGD's"),
    successive=("MINT keeps working over repairs made in succession (earlier fixes hold, unrelated predictions stay)",
                "reproduced: the share of earlier fixes held is at least 0.8 and of unrelated predictions unchanged at "
                "least 0.9 (interval lower ends); partly: the share held is at least 0.5"),
    shell=("MINT repairs a second task: shell command lines (our offline stand-in for intent-to-bash)",
           "reproduced: the success interval's lower end is at least 0.5; partly: its estimate is"),
)


def _claims(iv: dict, rows, succ_rows, cfg: RepairConfig, choice: dict) -> list[intervals.Claim]:
    """The paper's claims with their verdicts: what a repair costs and does, then over successive repairs and on
    the second task; each measured by the command that runs ``cfg``."""
    mint, sgd = _by_method(rows)
    n = len(mint)
    nps, d, dt = iv["mint_neurons_per_success"], iv["mint_minus_sgd_success"], iv["mint_minus_sgd_seconds"]
    fewer = float(mint.neurons.mean()) * 100 < float(sgd.neurons.mean())
    out = [
        CLAIMS["neurons"](nps.high <= 2.5, not math.isnan(nps.estimate) and nps.estimate <= 3, nps,
                          iv["sgd_neurons_per_success"],
                          f"value vectors changed per successful MINT repair over {int(mint.success.sum())} successes "
                          f"of {n} cases; control: rows changed per successful SGD repair"),
        CLAIMS["effective"](d.above(0), d.estimate > 0, d, iv["sgd_success"],
                            f"paired difference of line-level success, MINT {iv['mint_success'].format()} vs SGD (lr "
                            f"{choice['lr']:g}, {choice['steps']} steps, chosen on {cfg.n_select} selection cases) on "
                            f"the same {n} cases"),
        CLAIMS["efficient"](fewer and dt.below(0), fewer, dt, iv["sgd_seconds"],
                            f"paired difference of seconds per case (MINT - SGD); value vectors changed: MINT "
                            f"{mint.neurons.mean():.2f}, SGD {sgd.neurons.mean():.0f} per case"),
    ]
    gs, gf = iv.get("mint_gen_minus_spec_delta_logp"), iv.get("mint_gen_fixed")
    if gs is not None:
        out.append(CLAIMS["generalise"](
            gs.above(0) and gf is not None and gf.above(0), gs.above(0), iv["mint_gen_delta_logp"],
            iv["mint_spec_delta_logp"],
            f"change of log p(target) on held-out prompts of the repaired target (control: on unrelated prompts); "
            f"paired difference {gs.format()}; share of wrong same-target prompts made right "
            f"{gf.format() if gf is not None else 'n/a'}"))
    su, hl, dsp = iv["mint_spec_unchanged"], iv["mint_heldout_loss_delta"], iv.get("mint_minus_sgd_spec_unchanged")
    out.append(CLAIMS["specific"](
        su.low >= 0.9 and hl.high <= 0.05, dsp is not None and not dsp.below(0), su, iv["sgd_spec_unchanged"],
        f"share of unrelated greedy predictions unchanged (control: SGD); held-out loss change {hl.format(3)} (SGD "
        f"{iv['sgd_heldout_loss_delta'].format(3)})"))
    ret, fs = iv.get("mint_successive_retained"), iv["mint_successive_spec_unchanged"]
    if ret is not None:
        sr = pd.DataFrame(succ_rows)
        last = sr[sr.method == "mint"].iloc[-1]
        out.append(CLAIMS["successive"](
            ret.low >= 0.8 and fs.low >= 0.9, ret.estimate >= 0.5, ret, iv.get("sgd_successive_retained"),
            f"after {int(last.repairs)} MINT repairs without undoing: share of the earlier repaired lines still fixed "
            f"(control: SGD's sequence); success of each repair in the sequence "
            f"{iv['mint_successive_success'].format()}; unrelated predictions unchanged {fs.format()} (SGD "
            f"{iv['sgd_successive_spec_unchanged'].format()}); held-out loss change "
            f"{float(last.heldout_loss_delta):+.3f} (SGD "
            f"{float(sr[sr.method == 'sgd'].iloc[-1].heldout_loss_delta):+.3f})"))
    if "mint_success_shell" in iv:
        sh, py = iv["mint_success_shell"], iv.get("mint_success_python")
        out.append(CLAIMS["shell"](
            sh.low >= 0.5, sh.estimate >= 0.5, sh, iv.get("sgd_success_shell"),
            f"line-level success of MINT on {sh.n} shell cases (Debian bash-completion scripts; control: SGD); Python "
            f"cases {py.format() if py is not None else 'n/a'}"))
    cmd = command_of(cfg)
    return [replace(c, command=cmd) for c in out]


# ----------------------------------------------------------------------------------------------------------------
# the report


#: the numbers the report opens with, after the claims
KEY_NUMBERS = (
    "mint_success_rate",
    "sgd_success_rate",
    "mint_neurons_per_success",
    "sgd_neurons_per_success",
    "mint_gen_fixed",
    "mint_spec_unchanged",
    "mint_heldout_loss_delta",
    "mint_successive_retained",
)

LABELS = {
    "mint_success_rate": "MINT: lines repaired",
    "sgd_success_rate": "SGD: lines repaired",
    "mint_neurons_per_success": "MINT: value vectors changed per repair",
    "sgd_neurons_per_success": "SGD: value vectors changed per repair",
    "mint_gen_fixed": "MINT: wrong prompts of the same fix made right",
    "mint_spec_unchanged": "MINT: unrelated predictions unchanged",
    "mint_heldout_loss_delta": "MINT: held-out loss change",
    "mint_successive_retained": "MINT: earlier fixes still held after the successive repairs",
}


def _report_methods(r, study: RepairStudy) -> None:
    """How each method ran, the per-method tables, the intervals and the SGD grid."""
    s = study.settings
    r.section(
        "MINT versus SGD",
        text=f"{PAPER} MINT: up to {s['max_edits']} value-vector edits per wrong token among {s['n_candidates']} "
        f"gradient x activation candidates in layers {s['layers']}, eps = {s['eps']:g}. SGD: {s['sgd_steps']} steps "
        f"at lr {s['sgd_lr']:g} on the MLP output weights of the same layers, chosen from the grid "
        f"{s['sgd_grid']} on {s['n_select']} selection cases. Every edit was undone and checked bit-exact before "
        f"the next case; after the successive repairs the base was restored "
        f"({'bit-identical' if s['base_restored'] else 'NOT bit-identical'}). Means over the evaluation cases, per "
        "method and per task; intervals: 95% bootstrap over cases (paired for MINT - SGD).",
    )
    r.table(study.summary().round(4), caption="per method: means over cases (neurons = value vectors changed)")
    r.table(study.summary(("method", "task")).round(4), caption="per method and task")
    r.table(
        pd.DataFrame(
            [{"interval": k, **{a: round(b, 4) if isinstance(b, float) else b for a, b in v.to_json().items()}}
             for k, v in study.intervals.items()]
        ),
        caption="every interval (95% bootstrap over cases)",
    )
    if study.sweep:
        r.section(
            "The SGD baseline's setting",
            text=f"Chosen on the selection split: lr {s['sgd_lr']:g}, {s['sgd_steps']} steps (most lines repaired, "
            "then the highest mean log p of the reference tokens).",
        )
        r.table(pd.DataFrame(list(study.sweep)).round(4), caption="SGD grid on the selection cases")


def _report_successive(r, study: RepairStudy) -> None:
    """The successive repairs: one curve per method of each measure, and the table."""
    sf = study.successive_frame()
    if not len(sf):
        return
    r.section(
        "Successive repairs",
        text="Each method repairs the cases one after another without undoing. retained = share of the earlier "
        "repaired lines still completed right; spec_unchanged = share of unrelated greedy predictions as in the "
        "base model; heldout_loss_delta against the base.",
    )
    for col, title in (("retained", "earlier repairs still fixed"), ("spec_unchanged", "unrelated unchanged"),
                       ("heldout_loss_delta", "held-out loss change")):
        series = {m: [float(v) for v in sf[sf.method == m][col]] for m in METHODS}
        if all(math.isnan(v) for vs in series.values() for v in vs):
            continue  # e.g. no earlier repair succeeded, so nothing could be retained
        r.line_chart(list(range(1, len(series["mint"]) + 1)), series, title=title, x_title="repairs so far",
                     y_title=col, zero_line=col == "heldout_loss_delta")
    r.table(sf.round(4), caption="after each repair in the sequence")


#: the per-case table's columns
CASE_COLUMNS = [
    "case", "method", "task", "source", "target", "wrong", "success", "neurons", "steps", "seconds", "gen_n",
    "gen_delta_logp", "gen_acc_before", "gen_acc_after", "spec_unchanged", "heldout_loss_delta", "edited",
]  # fmt: skip


def _report_cases(r, study: RepairStudy) -> None:
    """One row per case and method, and a few repaired lines."""
    r.section(
        "Per case",
        text="Generalisation: held-out prompts from other files whose next token is the repaired target, the same "
        "confusion first (gen_*; gen_fixed = share of those the model got wrong that are now right). Specificity: "
        "unrelated prompts whose greedy prediction is unchanged (spec_unchanged), and the held-out loss change.",
    )
    r.table(study.to_dataframe()[CASE_COLUMNS].round(4), caption="one row per case and method")
    for ex in study.examples[:4]:
        r.code(
            ex["line"],
            title=f"{'repaired' if ex['success'] else 'not repaired'} with {', '.join(ex['neurons']) or 'no edits'}: "
            f"greedy before {''.join(ex['before'])!r}, after {''.join(ex['after_mint'])!r}",
            language="bash" if ex.get("task") == "shell" else "python",
        )
