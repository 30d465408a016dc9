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
import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd
import torch

from .. import corpus as corpus_mod
from .. import intervals
from .. import repair as R
from ..core.batching import bos_id
from ..core.inputs import token_texts
from ..errors import InputError
from .common import Study, configure, json_safe, setting

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
    cases: tuple[R.RepairCase, ...]
    heldout_loss_base: float
    settings: dict = field(default_factory=dict)
    examples: tuple[dict, ...] = ()
    config: RepairConfig | None = None
    successive: tuple[dict, ...] = ()  # one row per method and number of repairs so far
    sweep: tuple[dict, ...] = ()  # one row per SGD setting on the selection split
    sgd_choice: dict = field(default_factory=dict)
    intervals: dict = field(default_factory=dict)  # name -> intervals.Interval
    claims: tuple = ()  # intervals.Claim rows

    def report(self, model=None):
        """The study as a :class:`codecircuits.report.Report`."""
        return report(self)

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows))

    def top(self, k: int = 10) -> pd.DataFrame:
        """The MINT repairs that changed the fewest neurons (successes first)."""
        df = self.to_dataframe()
        df = df[df.method == "mint"]
        return df.sort_values(["success", "neurons"], ascending=[False, True]).head(k)

    def summary(self, by: tuple[str, ...] = ("method",)) -> pd.DataFrame:
        """One row per method (``by=("method", "task")``: per method and task): the key numbers, means over cases."""
        df = self.to_dataframe()
        out = []
        for key, g in df.groupby(list(by), sort=False):
            key = key if isinstance(key, tuple) else (key,)
            ok = g[g.success]
            out.append(
                {
                    **dict(zip(by, key)),
                    "cases": len(g),
                    "success_rate": float(g.success.mean()),
                    "neurons_per_success": float(ok.neurons.mean()) if len(ok) else math.nan,
                    "median_neurons_per_success": float(ok.neurons.median()) if len(ok) else math.nan,
                    "edit_steps_per_success": float(ok.steps.mean()) if len(ok) else math.nan,
                    "seconds_per_case": float(g.seconds.mean()),
                    "gen_delta_logp": _mean(g.gen_delta_logp),
                    "gen_acc_before": _mean(g.gen_acc_before),
                    "gen_acc_after": _mean(g.gen_acc_after),
                    "gen_fixed": _mean(g.gen_fixed),
                    "spec_unchanged": _mean(g.spec_unchanged),
                    "spec_acc_before": _mean(g.spec_acc_before),
                    "spec_acc_after": _mean(g.spec_acc_after),
                    "heldout_loss_delta": _mean(g.heldout_loss_delta),
                }
            )
        return pd.DataFrame(out)

    def successive_frame(self) -> pd.DataFrame:
        """The successive-repair curves: one row per method and number of repairs made so far."""
        return pd.DataFrame(list(self.successive))

    def metrics(self) -> dict[str, float]:
        """The headline numbers (the report's cards); :meth:`summary` has the rest per method."""
        out: dict[str, float] = {"n_cases": len(self.cases), "heldout_loss_base": self.heldout_loss_base}
        for row in self.summary().to_dict("records"):
            m = row["method"]
            out.update({f"{m}_{k}": row[k] for k in HEADLINE})
        for method in ("mint", "sgd"):
            iv = self.intervals.get(f"{method}_successive_retained")
            if iv is not None:
                out[f"{method}_successive_retained"] = iv.estimate
        return json_safe(out)

    def to_json(self) -> dict:
        return json_safe(
            {
                "model": self.model,
                "settings": self.settings,
                "metrics": self.metrics(),
                "summary": self.summary().to_dict("records"),
                "summary_by_task": self.summary(("method", "task")).to_dict("records"),
                "intervals": {k: v.to_json() for k, v in self.intervals.items()},
                "claims": [c.to_json() for c in self.claims],
                "sgd_sweep": list(self.sweep),
                "sgd_choice": self.sgd_choice,
                "successive": list(self.successive),
                "rows": list(self.rows),
                "examples": list(self.examples),
            }
        )


HEADLINE = (
    "success_rate",
    "neurons_per_success",
    "seconds_per_case",
    "gen_fixed",
    "gen_delta_logp",
    "spec_unchanged",
    "heldout_loss_delta",
)


def _mean(s) -> float:
    s = pd.Series(s, dtype=float).dropna()
    return float(s.mean()) if len(s) else math.nan


@functools.lru_cache(maxsize=16)
def _load(spec: str):
    """``corpus.load(spec)``, read once per process (finding a standard-library split walks the whole library)."""
    return corpus_mod.load(spec)


def _task(spec: str) -> str:
    return "shell" if spec.split(":", 1)[0] == "shell" else "python"


def _digest(t: torch.Tensor) -> str:
    """A fingerprint of a tensor's exact bits (bit-identical logits have the same one)."""
    return hashlib.sha1(t.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def _fixed(cache: R.ResidCache, case: R.RepairCase) -> bool:
    """Whether the model (now) completes the whole line right, teacher-forced."""
    pred = cache.logits(case.tokens)[0].argmax(-1).cpu()
    return tuple(int(pred[p]) for p in case.positions) == tuple(case.reference)


def _measure(model, gen, spec, heldout, base_gen, base_spec, base_loss, cache) -> dict:
    out: dict[str, float] = {}
    if gen:
        ev = R.evaluate_probes(model, gen, cache=cache)
        out["gen_n"] = len(gen)
        out["gen_delta_logp"] = float((ev["logp"] - base_gen["logp"]).mean())
        out["gen_acc_before"] = float(base_gen["correct"].float().mean())
        out["gen_acc_after"] = float(ev["correct"].float().mean())
        wrong_before = ~base_gen["correct"]
        out["gen_n_wrong"] = int(wrong_before.sum())
        out["gen_fixed"] = float(ev["correct"][wrong_before].float().mean()) if wrong_before.any() else math.nan
    else:
        out.update(
            gen_n=0,
            gen_delta_logp=math.nan,
            gen_acc_before=math.nan,
            gen_acc_after=math.nan,
            gen_n_wrong=0,
            gen_fixed=math.nan,
        )
    ev = R.evaluate_probes(model, spec, cache=cache)
    out["spec_n"] = len(spec)
    out["spec_unchanged"] = float((ev["argmax"] == base_spec["argmax"]).float().mean())
    out["spec_acc_before"] = float(base_spec["correct"].float().mean())
    out["spec_acc_after"] = float(ev["correct"].float().mean())
    out["spec_abs_delta_logp"] = float((ev["logp"] - base_spec["logp"]).abs().mean())
    out["spec_delta_logp"] = float((ev["logp"] - base_spec["logp"]).mean())
    out["heldout_loss_delta"] = R.heldout_loss(model, heldout, cache=cache) - base_loss
    return out


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
            model,
            corpora[spec],
            n,
            context_tokens=cfg.context_tokens,
            max_errors=cfg.max_errors,
            seed=cfg.seed,
            min_scanned=3 * n,
            lines_per_file=cfg.lines_per_file,
            max_lines=max(2000, 40 * n),
            progress=progress,
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


def _sgd_sweep(model, cases, layers, lrs, steps, cache, progress) -> tuple[list[dict], dict]:
    """Each (lr, steps) of the grid on the selection cases (one trajectory per lr, scored at each step count; SGD
    without momentum has no state, so 5 steps then 5 more are 10 steps); the choice: most lines repaired, then
    the highest mean log p of the lines' reference tokens (the setting that pushes hardest toward the repair, so
    the baseline is not handicapped), then the gentlest (smallest lr x steps)."""
    from tqdm.auto import tqdm

    layer_list = R.upper_layers(model, layers)
    steps = sorted(set(int(s) for s in steps))
    scores = {(lr, s): [] for lr in lrs for s in steps}
    logps = {(lr, s): [] for lr in lrs for s in steps}
    bar = tqdm(total=len(cases) * len(lrs), desc="SGD sweep", disable=not progress, leave=False)
    for case in cases:
        for lr in lrs:
            snap = R.WeightSnapshot(model, layer_list)
            done = 0
            for s in steps:
                out, _ = R.sgd_repair(model, case, layers=layers, lr=lr, steps=s - done, snapshot=snap)
                done = s
                scores[(lr, s)].append(out.success)
                lp = cache.logits(case.tokens)[0].float().log_softmax(-1).cpu()
                logps[(lr, s)].append(float(lp[case.positions, list(case.reference)].mean()))
            snap.restore()
            bar.update(1)
    bar.close()
    rows = [
        {
            "lr": lr,
            "steps": s,
            "cases": len(v),
            "success_rate": float(sum(v) / max(len(v), 1)),
            "reference_logp": float(sum(logps[(lr, s)]) / max(len(v), 1)),
        }
        for (lr, s), v in scores.items()
    ]
    best = min(rows, key=lambda r: (-r["success_rate"], -round(r["reference_logp"], 6), r["lr"] * r["steps"]))
    return rows, dict(best)


def _successive(model, method, cases, cfg, lr, steps, spec_probes, base_spec, heldout, base_loss, cache, progress):
    """Repair ``cases`` one after another without undoing; one row per repair made so far. Restores the base."""
    from tqdm.auto import tqdm

    layer_list = R.upper_layers(model, cfg.layers)
    snap = R.WeightSnapshot(model, layer_list)
    results, rows, repaired = [], [], []
    earlier, ev = [], None
    for i, case in enumerate(tqdm(cases, desc=f"successive {method}", disable=not progress, leave=False)):
        if method == "mint":
            res = R.mint_repair(
                model, case, layers=cfg.layers, n_candidates=cfg.n_candidates, max_edits=cfg.max_edits, scale=cfg.scale
            )
            results.append(res)
            ok, seconds = res.success, res.seconds
        else:
            out, _ = R.sgd_repair(model, case, layers=cfg.layers, lr=lr, steps=steps, snapshot=snap)
            ok, seconds = out.success, out.seconds
        repaired.append(ok)
        earlier = [_fixed(cache, cases[j]) for j in range(i) if repaired[j]]
        ev = R.evaluate_probes(model, spec_probes, cache=cache)
        rows.append(
            {
                "method": method,
                "repairs": i + 1,
                "success": bool(ok),
                "seconds": seconds,
                "successes_so_far": int(sum(repaired)),
                "earlier_repaired": len(earlier),
                "earlier_still_fixed": int(sum(earlier)),
                "retained": float(sum(earlier) / len(earlier)) if earlier else math.nan,
                "spec_unchanged": float((ev["argmax"] == base_spec["argmax"]).float().mean()),
                "heldout_loss_delta": R.heldout_loss(model, heldout, cache=cache) - base_loss,
                "changed_rows": snap.changed_rows(),
            }
        )
    # after the last repair: the earlier repaired lines and the unrelated predictions as its row measured them
    still = earlier
    if ev is None:  # no cases: the base itself
        ev = R.evaluate_probes(model, spec_probes, cache=cache)
    final_spec = (ev["argmax"] == base_spec["argmax"]).double()
    if method == "mint":
        for res in reversed(results):  # undo only: the study then checks the base is back bit for bit
            res.undo(model)
    else:
        snap.restore()
    return rows, torch.tensor(still, dtype=torch.float64), final_spec


class _Progress:
    """The study's finished steps in a JSON file, rewritten atomically after each one (the SGD sweep, each case,
    each successive sequence), so an interrupted run resumes where it stopped. Each case is undone before the next
    and the study checks the base bit for bit, so resumed results equal an uninterrupted run's (times aside)."""

    def __init__(self, path, key: str, resume: bool):
        self.path = None if path is None else Path(path)
        self.state = {"key": key, "sweep": None, "cases": {}, "successive": {}}
        if resume and self.path is not None and self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved.get("key") != key:
                raise InputError(
                    f"{self.path} was written by a run with other settings, model or cases; delete it, give "
                    "another --out, or run without --resume to start afresh."
                )
            self.state = saved

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.path)


def _run_key(model, cfg: RepairConfig, cases) -> str:
    ident = {
        "model": str(model.cfg.model_name),
        "config": {k: v for k, v in asdict(cfg).items() if k != "n_resamples"},
        "cases": [[c.source, c.line_no, list(c.reference), list(c.predicted)] for c in cases],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


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
    if cfg.n_cases < 1:
        raise InputError("n_cases must be at least 1.")
    if cfg.n_select < 0 or cfg.n_successive < 0:
        raise InputError("n_select and n_successive must be >= 0.")
    if not cfg.sgd_lrs or not cfg.sgd_steps or min(cfg.sgd_lrs) < 0 or min(cfg.sgd_steps) < 1:
        raise InputError("The SGD grid needs at least one lr >= 0 and one step count >= 1.")
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    sources = tuple(cfg.sources)
    all_cases, pool, task_of, corpora = _collect(model, cfg, progress)
    select, cases = all_cases[: cfg.n_select], all_cases[cfg.n_select :]
    case_keys = {(c.source, c.line_no) for c in all_cases}
    others = [c for c in pool if (c.source, c.line_no) not in case_keys]
    rng = random.Random(cfg.seed)
    spec_lines = rng.sample(others, min(cfg.n_spec_lines, len(others)))
    spec_probes = R.probes_of(spec_lines)
    if not spec_probes:
        raise InputError("No unrelated lines are left for the specificity probes; add a source or scan more lines.")
    # generalisation: held-out positions (not in any case's file) whose next token is the repaired target
    case_files = {c.source for c in all_cases}
    gen_corpus = {t: [f for spec in sources if _task(spec) == t for f in corpora[spec]] for t in {_task(s) for s in sources}}
    gen_ids = {t: R.tokenize_files(model, [f for f in fs if f.path not in case_files]) for t, fs in gen_corpus.items()}
    held = [_load("stdlib:validation")]
    if any(_task(s) == "shell" for s in sources):
        held.append(_load("shell:validation"))
    heldout = torch.cat([_heldout_tokens(model, h, cfg.heldout_tokens) for h in held])

    layer_list = R.upper_layers(model, cfg.layers)
    cache = R.ResidCache(model, layer_list[0])  # both methods edit only layers >= layer_list[0]
    base_spec = R.evaluate_probes(model, spec_probes, cache=cache)
    base_loss = R.heldout_loss(model, heldout, cache=cache)
    base_digest = {i: _digest(cache.logits(c.tokens)) for i, c in enumerate(cases)}
    done = _Progress(checkpoint, _run_key(model, cfg, all_cases), resume)
    resumed = bool(done.state["cases"] or done.state["sweep"])

    # the SGD baseline's setting, chosen on the selection split
    if select and done.state["sweep"] is not None:
        sweep, choice = done.state["sweep"]
    elif select:
        sweep, choice = _sgd_sweep(model, select, cfg.layers, cfg.sgd_lrs, cfg.sgd_steps, cache, progress)
        done.state["sweep"] = [sweep, choice]
        done.save()
    else:
        # no selection split: MINT's baseline setting (lr 1e-2, 10 steps) where the grid has it
        sweep = []
        choice = {
            "lr": 1e-2 if 1e-2 in cfg.sgd_lrs else cfg.sgd_lrs[0],
            "steps": 10 if 10 in cfg.sgd_steps else cfg.sgd_steps[0],
        }
    sgd_lr, sgd_steps = float(choice["lr"]), int(choice["steps"])

    rows, examples = [], []
    tok = model.tokenizer
    for ci, case in enumerate(tqdm(cases, desc="repair", disable=not progress)):
        if str(ci) in done.state["cases"]:
            saved = done.state["cases"][str(ci)]
            rows += saved["rows"]
            if saved["example"] is not None and len(examples) < 6:
                examples.append(saved["example"])
            continue
        n_rows, n_examples = len(rows), len(examples)
        task = task_of[(case.source, case.line_no)]
        first = case.errors[0]
        target, wrong = case.reference[first], case.predicted[first]
        keep = [i for i, p in enumerate(spec_probes) if p.target != target]
        spec = [spec_probes[i] for i in keep]
        base_spec_c = {k: v[keep] for k, v in base_spec.items()}
        gen = R.same_target_probes(
            model,
            [f for f in gen_corpus[task] if f.path not in case_files],
            target,
            cfg.n_gen,
            wrong=wrong,
            context_tokens=cfg.context_tokens,
            max_candidates=2 * cfg.n_gen,
            seed=cfg.seed + ci,
            token_ids=gen_ids[task],
        )
        base_gen = R.evaluate_probes(model, gen, cache=cache) if gen else None
        common = dict(
            case=ci,
            task=task,
            source=case.source,
            line_no=case.line_no,
            errors=len(case.errors),
            target=token_texts(tok, [target])[0],
            wrong=token_texts(tok, [wrong])[0],
        )
        # MINT
        res = R.mint_repair(
            model, case, layers=cfg.layers, n_candidates=cfg.n_candidates, max_edits=cfg.max_edits, scale=cfg.scale
        )
        m = _measure(model, gen, spec, heldout, base_gen, base_spec_c, base_loss, cache)
        res.undo(model)
        restored = _digest(cache.logits(case.tokens)) == base_digest[ci]
        rows.append(
            dict(
                common,
                method="mint",
                success=res.success,
                neurons=res.n_neurons,
                steps=res.n_edits,
                seconds=res.seconds,
                restored=restored,
                edited=" ".join(f"L{a}N{b}" for a, b in res.edits.neurons),
                **m,
            )
        )
        if len(examples) < 6:
            examples.append(
                {
                    "task": task,
                    "line": case.line,
                    "reference": token_texts(tok, case.reference),
                    "before": token_texts(tok, case.predicted),
                    "after_mint": token_texts(tok, res.predicted_after),
                    "neurons": [f"L{a}N{b}" for a, b in res.edits.neurons],
                    "success": res.success,
                }
            )
        # SGD baseline
        out, snap = R.sgd_repair(model, case, layers=cfg.layers, lr=sgd_lr, steps=sgd_steps)
        m = _measure(model, gen, spec, heldout, base_gen, base_spec_c, base_loss, cache)
        snap.restore()
        restored = _digest(cache.logits(case.tokens)) == base_digest[ci]
        rows.append(
            dict(
                common,
                method="sgd",
                success=out.success,
                neurons=out.changed_rows,
                steps=out.steps,
                seconds=out.seconds,
                restored=restored,
                edited="",
                **m,
            )
        )
        done.state["cases"][str(ci)] = {
            "rows": rows[n_rows:], "example": examples[n_examples] if len(examples) > n_examples else None
        }
        done.save()

    # successive repairs, each method in its own sequence from the base
    n_succ = len(cases) if cfg.n_successive == 0 else min(cfg.n_successive, len(cases))
    succ_rows, still, final_spec = [], {}, {}
    for method in ("mint", "sgd"):
        if method in done.state["successive"]:
            r_, st, fs = done.state["successive"][method]
            still[method], final_spec[method] = torch.tensor(st, dtype=torch.float64), torch.tensor(fs, dtype=torch.float64)
        else:
            r_, still[method], final_spec[method] = _successive(
                model, method, cases[:n_succ], cfg, sgd_lr, sgd_steps, spec_probes, base_spec, heldout, base_loss,
                cache, progress,
            )
            done.state["successive"][method] = [r_, still[method].tolist(), final_spec[method].tolist()]
            done.save()
        succ_rows += r_
    base_restored = all(_digest(cache.logits(c.tokens)) == base_digest[i] for i, c in enumerate(cases))
    base_restored = base_restored and R.heldout_loss(model, heldout, cache=cache) == base_loss

    ivs, claims = _intervals_and_claims(rows, succ_rows, still, final_spec, cfg, choice)
    settings = dict(
        n_cases=len(cases),
        n_select=len(select),
        n_successive=n_succ,
        sources=list(sources),
        tasks=sorted({task_of[(c.source, c.line_no)] for c in cases}),
        lines_per_file=cfg.lines_per_file,
        context_tokens=cfg.context_tokens,
        max_errors=cfg.max_errors,
        layers=f"{cfg.layers} ({layer_list[0]}..{layer_list[-1]})",
        n_candidates=cfg.n_candidates,
        max_edits=cfg.max_edits,
        scale=cfg.scale,
        eps=0.01 * cfg.scale,
        sgd_grid={"lr": list(cfg.sgd_lrs), "steps": list(cfg.sgd_steps)},
        sgd_lr=sgd_lr,
        sgd_steps=sgd_steps,
        n_gen=cfg.n_gen,
        n_spec_probes=len(spec_probes),
        heldout_tokens=int(heldout.numel()),
        pool_lines=len(pool),
        base_restored=bool(base_restored),
        threads=torch.get_num_threads(),
        seed=cfg.seed,
        command=command_of(cfg),
        resumed=resumed,
        seconds=round(time.perf_counter() - t0, 1),
    )
    return RepairStudy(
        model=str(model.cfg.model_name),
        rows=tuple(rows),
        cases=tuple(cases),
        heldout_loss_base=base_loss,
        settings=settings,
        examples=tuple(examples),
        config=cfg,
        successive=tuple(succ_rows),
        sweep=tuple(sweep),
        sgd_choice=choice,
        intervals=ivs,
        claims=tuple(claims),
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


def _intervals_and_claims(rows, succ_rows, still, final_spec, cfg, choice):
    """Bootstrap intervals over cases (paired for MINT - SGD) and the paper's claims with their verdicts."""
    B, seed = cfg.n_resamples, cfg.seed
    df = pd.DataFrame(rows)
    mint = df[df.method == "mint"].sort_values("case").reset_index(drop=True)
    sgd = df[df.method == "sgd"].sort_values("case").reset_index(drop=True)

    def col(d, name):
        return torch.tensor(d[name].astype(float).to_numpy(), dtype=torch.float64)

    def nanmean(x):
        x = x[~torch.isnan(x)]
        return x.mean() if x.numel() else torch.tensor(float("nan"))

    def paired_diff(name):
        a, b = col(mint, name), col(sgd, name)
        ok = ~(torch.isnan(a) | torch.isnan(b))
        if not ok.any():
            return None
        return intervals.paired(lambda x, y: (x - y).mean(), a[ok], b[ok], n_resamples=B, seed=seed)

    def mean_of(d, name):
        x = col(d, name)
        x = x[~torch.isnan(x)]
        return intervals.mean(x, n_resamples=B, seed=seed) if x.numel() else None

    iv: dict[str, intervals.Interval] = {}
    for m, d in (("mint", mint), ("sgd", sgd)):
        iv[f"{m}_success"] = mean_of(d, "success")
        iv[f"{m}_neurons_per_success"] = intervals.bootstrap(
            lambda s, n: nanmean(torch.where(s > 0, n, torch.nan)), col(d, "success"), col(d, "neurons"),
            n_resamples=B, seed=seed,
        )
        iv[f"{m}_seconds"] = mean_of(d, "seconds")
        for k in ("gen_delta_logp", "gen_fixed", "spec_unchanged", "spec_delta_logp", "heldout_loss_delta"):
            iv[f"{m}_{k}"] = mean_of(d, k)
    for k in ("success", "seconds", "gen_delta_logp", "gen_fixed", "spec_unchanged", "heldout_loss_delta"):
        iv[f"mint_minus_sgd_{k}"] = paired_diff(k)
    g, s = col(mint, "gen_delta_logp"), col(mint, "spec_delta_logp")
    ok = ~torch.isnan(g)
    iv["mint_gen_minus_spec_delta_logp"] = (
        intervals.paired(lambda x, y: (x - y).mean(), g[ok], s[ok], n_resamples=B, seed=seed) if ok.any() else None
    )
    sr = pd.DataFrame(succ_rows)
    for m in ("mint", "sgd"):
        iv[f"{m}_successive_retained"] = (
            intervals.mean(still[m], n_resamples=B, seed=seed) if still[m].numel() else None
        )
        iv[f"{m}_successive_spec_unchanged"] = intervals.mean(final_spec[m], n_resamples=B, seed=seed)
        sm = sr[sr.method == m]
        iv[f"{m}_successive_success"] = intervals.mean(
            torch.tensor(sm.success.astype(float).to_numpy()), n_resamples=B, seed=seed
        )
    for t in sorted(set(df.task)):
        for m, d in (("mint", mint), ("sgd", sgd)):
            iv[f"{m}_success_{t}"] = mean_of(d[d.task == t], "success")
    iv = {k: v for k, v in iv.items() if v is not None}

    cmd = command_of(cfg)
    n = len(mint)
    claims = []
    nps = iv["mint_neurons_per_success"]
    claims.append(
        intervals.Claim(
            "MINT repairs by patching 'usually one or two neurons'",
            intervals.verdict(nps.high <= 2.5, not math.isnan(nps.estimate) and nps.estimate <= 3),
            nps,
            iv["sgd_neurons_per_success"],
            f"value vectors changed per successful MINT repair over {int(mint.success.sum())} successes of {n} "
            "cases; control: rows changed per successful SGD repair",
            cmd,
        )
    )
    d = iv["mint_minus_sgd_success"]
    claims.append(
        intervals.Claim(
            "MINT is more effective than SGD fine-tuning of the FFN output weights",
            intervals.verdict(d.above(0), d.estimate > 0),
            d,
            iv["sgd_success"],
            f"paired difference of line-level success, MINT {iv['mint_success'].format()} vs SGD (lr "
            f"{choice['lr']:g}, {choice['steps']} steps, chosen on {cfg.n_select} selection cases) on the same "
            f"{n} cases",
            cmd,
        )
    )
    dt = iv["mint_minus_sgd_seconds"]
    fewer = float(mint.neurons.mean()) * 100 < float(sgd.neurons.mean())
    claims.append(
        intervals.Claim(
            "MINT is more efficient than SGD (fewer weights changed, less time)",
            intervals.verdict(fewer and dt.below(0), fewer),
            dt,
            iv["sgd_seconds"],
            f"paired difference of seconds per case (MINT - SGD); value vectors changed: MINT "
            f"{mint.neurons.mean():.2f}, SGD {sgd.neurons.mean():.0f} per case",
            cmd,
        )
    )
    gs = iv.get("mint_gen_minus_spec_delta_logp")
    gf = iv.get("mint_gen_fixed")
    if gs is not None:
        claims.append(
            intervals.Claim(
                "MINT's edits generalise to other prompts of the same fix",
                intervals.verdict(gs.above(0) and gf is not None and gf.above(0), gs.above(0)),
                iv["mint_gen_delta_logp"],
                iv["mint_spec_delta_logp"],
                f"change of log p(target) on held-out prompts of the repaired target (control: on unrelated "
                f"prompts); paired difference {gs.format()}; share of wrong same-target prompts made right "
                f"{gf.format() if gf is not None else 'n/a'}",
                cmd,
            )
        )
    su, hl = iv["mint_spec_unchanged"], iv["mint_heldout_loss_delta"]
    dsp = iv.get("mint_minus_sgd_spec_unchanged")
    claims.append(
        intervals.Claim(
            "MINT has little effect on unrelated prompts (specificity)",
            intervals.verdict(su.low >= 0.9 and hl.high <= 0.05, dsp is not None and not dsp.below(0)),
            su,
            iv["sgd_spec_unchanged"],
            f"share of unrelated greedy predictions unchanged (control: SGD); held-out loss change "
            f"{hl.format(3)} (SGD {iv['sgd_heldout_loss_delta'].format(3)})",
            cmd,
        )
    )
    ret = iv.get("mint_successive_retained")
    fs = iv["mint_successive_spec_unchanged"]
    if ret is not None:
        last = sr[sr.method == "mint"].iloc[-1]
        claims.append(
            intervals.Claim(
                "MINT keeps working over repairs made in succession (earlier fixes hold, unrelated predictions "
                "stay)",
                intervals.verdict(ret.low >= 0.8 and fs.low >= 0.9, ret.estimate >= 0.5),
                ret,
                iv.get("sgd_successive_retained"),
                f"after {int(last.repairs)} MINT repairs without undoing: share of the earlier repaired lines still "
                f"fixed (control: SGD's sequence); success of each repair in the sequence "
                f"{iv['mint_successive_success'].format()}; unrelated predictions unchanged {fs.format()} (SGD "
                f"{iv['sgd_successive_spec_unchanged'].format()}); held-out loss change "
                f"{float(last.heldout_loss_delta):+.3f} (SGD "
                f"{float(sr[sr.method == 'sgd'].iloc[-1].heldout_loss_delta):+.3f})",
                cmd,
            )
        )
    if "mint_success_shell" in iv:
        sh = iv["mint_success_shell"]
        py = iv.get("mint_success_python")
        claims.append(
            intervals.Claim(
                "MINT repairs a second task: shell command lines (our offline stand-in for intent-to-bash)",
                intervals.verdict(sh.low >= 0.5, sh.estimate >= 0.5),
                sh,
                iv.get("sgd_success_shell"),
                f"line-level success of MINT on {sh.n} shell cases (Debian bash-completion scripts; control: SGD); "
                f"Python cases {py.format() if py is not None else 'n/a'}",
                cmd,
            )
        )
    return iv, claims


def _heldout_tokens(model, corpus, n_tokens: int, seq_len: int = 128) -> torch.Tensor:
    bos = bos_id(model)
    rows = []
    for f in corpus:
        ids = model.tokenizer(f.text, add_special_tokens=False)["input_ids"]
        body = seq_len - (bos is not None)
        for i in range(0, len(ids) - body, body):
            rows.append(([bos] if bos is not None else []) + ids[i : i + body])
            if len(rows) * seq_len >= n_tokens:
                return torch.tensor(rows)
    if not rows:
        raise InputError(f"The held-out corpus {corpus.name} is shorter than {seq_len} tokens.")
    return torch.tensor(rows)


def report(study: RepairStudy):
    """The study as a :class:`codecircuits.report.Report`."""
    from ..report import Report

    s = study.settings
    r = Report(
        title=f"Neuron-level repair (MINT) on {study.model}",
        subtitle=f"{s['n_cases']} lines of held-out code ({', '.join(s['sources'])}), MINT vs SGD on W_out",
    )
    r.section(
        "Key numbers",
        text=f"MINT: up to {s['max_edits']} value-vector edits per wrong token among {s['n_candidates']} "
        f"gradient x activation candidates in layers {s['layers']}, eps = {s['eps']:g}. SGD: {s['sgd_steps']} steps at "
        f"lr {s['sgd_lr']:g} on the MLP output weights of the same layers, chosen from the grid "
        f"{s['sgd_grid']} on {s['n_select']} selection cases. Every edit was undone and checked bit-exact before "
        f"the next case; after the successive repairs the base was restored "
        f"({'bit-identical' if s['base_restored'] else 'NOT bit-identical'}).",
    )
    r.metrics(study.metrics())
    r.section("Claims and verdicts", text=PAPER + " Intervals: 95% bootstrap over cases (paired for MINT - SGD).")
    r.claims(list(study.claims))
    r.section("MINT versus SGD", text="Means over the evaluation cases, per method and per task.")
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
    sf = study.successive_frame()
    if len(sf):
        r.section(
            "Successive repairs",
            text="Each method repairs the cases one after another without undoing. retained = share of the earlier "
            "repaired lines still completed right; spec_unchanged = share of unrelated greedy predictions as in the "
            "base model; heldout_loss_delta against the base.",
        )
        for col, title in (("retained", "earlier repairs still fixed"), ("spec_unchanged", "unrelated unchanged"),
                           ("heldout_loss_delta", "held-out loss change")):
            series = {m: [float(v) for v in sf[sf.method == m][col]] for m in ("mint", "sgd")}
            if all(math.isnan(v) for vs in series.values() for v in vs):
                continue  # e.g. no earlier repair succeeded, so nothing could be retained
            r.line_chart(list(range(1, len(series["mint"]) + 1)), series, title=title, x_title="repairs so far",
                         y_title=col, zero_line=col == "heldout_loss_delta")
        r.table(sf.round(4), caption="after each repair in the sequence")
    df = study.to_dataframe()
    r.section(
        "Per case",
        text="Generalisation: held-out prompts from other files whose next token is the repaired target, the same "
        "confusion first (gen_*; gen_fixed = share of those the model got wrong that are now right). Specificity: "
        "unrelated prompts whose greedy prediction is unchanged (spec_unchanged), and the held-out loss change.",
    )
    cols = [
        "case",
        "method",
        "task",
        "source",
        "target",
        "wrong",
        "success",
        "neurons",
        "steps",
        "seconds",
        "gen_n",
        "gen_delta_logp",
        "gen_acc_before",
        "gen_acc_after",
        "spec_unchanged",
        "heldout_loss_delta",
        "edited",
    ]
    r.table(df[cols].round(4), caption="one row per case and method")
    for ex in study.examples[:4]:
        r.code(
            ex["line"],
            title=f"{'repaired' if ex['success'] else 'not repaired'} with {', '.join(ex['neurons']) or 'no edits'}: "
            f"greedy before {''.join(ex['before'])!r}, after {''.join(ex['after_mint'])!r}",
            language="bash" if ex.get("task") == "shell" else "python",
        )
    r.data(study.to_json(), name="results")
    return r


def write(study: RepairStudy, out_dir) -> tuple[Path, Path]:
    """``study.save(out_dir)``: ``report.html`` and ``results.json`` (the same numbers) under ``out_dir``."""
    return study.save(out_dir)
