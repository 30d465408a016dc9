"""Study: neuron-level repair (MINT, Gu et al.) of line-level code completion, against an SGD baseline.

Repair cases are lines of held-out code (the standard library's test split and HumanEval) whose teacher-forced
greedy completion has one or two wrong tokens. Each case is repaired from the same base model twice: by MINT
(value-vector edits of a few neurons) and by SGD on the MLP output weights of the same layers; after each the
study measures

- **success**: every token of the line is the greedy prediction;
- **cost**: value vectors (neurons) changed, edit steps, seconds;
- **generalisation**: other held-out prompts whose next token is the repaired target token (prompts that share
  the fix): change of log p(target) and of accuracy;
- **specificity**: unrelated prompts (other lines, other targets): fraction whose greedy prediction is unchanged,
  and the change in held-out loss;

then undoes the edit exactly (checked) before the next case.

>>> study = run(load_model("smollm2-135m"), RepairConfig(n_cases=24))
>>> html, js = study.save("reports/repair")
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .. import corpus as corpus_mod
from .. import repair as R
from ..errors import InputError
from ..inputs import bos_id, token_texts
from .common import Study, configure, json_safe, setting

PAPER = (
    "MINT (Gu et al., arXiv 2312.05356) reports that it repairs line-level code generation by patching "
    "'usually one or two neurons', more effectively and faster than SGD fine-tuning of the FFN output weights, "
    "with generalisation to prompts of the same fix and little effect on unrelated prompts."
)


@dataclass(frozen=True)
class RepairConfig:
    """Settings of the study; the command line's options are generated from these fields."""

    n_cases: int = setting(16, "repair cases (split over the sources)", flag="--cases")
    sources: tuple[str, ...] = setting(("stdlib:test", "humaneval"), "corpora of held-out code (comma-separated)")
    context_tokens: int = setting(64, "tokens of context before a repaired line")
    max_errors: int = setting(2, "wrong tokens a case may have")
    layers: str = setting("half", "editable layers: half, quarter, last3 or all")
    n_candidates: int = setting(10, "candidate neurons per wrong token", flag="--candidates")
    max_edits: int = setting(10, "edits per wrong token before rolling back")
    scale: float = setting(10.0, "MINT edit size eps = 0.01 * scale")
    sgd_lr: float = setting(1e-2, "SGD baseline learning rate")
    sgd_steps: int = setting(10, "SGD baseline steps")
    n_gen: int = setting(8, "prompts sharing the fix, per case (generalisation)")
    n_spec_lines: int = setting(4, "unrelated lines per case (specificity)")
    heldout_tokens: int = setting(256, "held-out tokens for the loss change")
    seed: int = setting(0, "seed of case sampling")


@dataclass(frozen=True)
class RepairStudy(Study):
    """Per-case rows (one per case and method) and the settings that produced them."""

    model: str
    rows: tuple[dict, ...]
    cases: tuple[R.RepairCase, ...]
    heldout_loss_base: float
    settings: dict = field(default_factory=dict)
    examples: tuple[dict, ...] = ()
    config: RepairConfig | None = None

    def report(self):
        """The study as a :class:`codecircuits.report.Report`."""
        return report(self)

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows))

    def top(self, k: int = 10) -> pd.DataFrame:
        """The MINT repairs that changed the fewest neurons (successes first)."""
        df = self.to_dataframe()
        df = df[df.method == "mint"]
        return df.sort_values(["success", "neurons"], ascending=[False, True]).head(k)

    def summary(self) -> pd.DataFrame:
        """One row per method: the key numbers."""
        df = self.to_dataframe()
        out = []
        for method, g in df.groupby("method", sort=False):
            ok = g[g.success]
            out.append(
                {
                    "method": method,
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

    def metrics(self) -> dict[str, float]:
        """The headline numbers (the report's cards); :meth:`summary` has the rest per method."""
        out: dict[str, float] = {"n_cases": len(self.cases), "heldout_loss_base": self.heldout_loss_base}
        for row in self.summary().to_dict("records"):
            m = row["method"]
            out.update({f"{m}_{k}": row[k] for k in HEADLINE})
        return json_safe(out)

    def to_json(self) -> dict:
        return json_safe(
            {
                "model": self.model,
                "settings": self.settings,
                "metrics": self.metrics(),
                "summary": self.summary().to_dict("records"),
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


def _corpus(spec: str):
    return corpus_mod.load(spec)


def _measure(model, case, gen, spec, heldout, base_gen, base_spec, base_loss, cache) -> dict:
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
    out["heldout_loss_delta"] = R.heldout_loss(model, heldout, cache=cache) - base_loss
    return out


def run(model, config: RepairConfig | None = None, *, progress: bool = True, **overrides) -> RepairStudy:
    """Collect ``n_cases`` repair cases (split over ``sources``) and repair each with MINT and with SGD.

    ``config`` defaults to :class:`RepairConfig`; keyword ``overrides`` change single settings. ``scale``: MINT's
    edit size ``eps = 0.01 * scale`` (its planning factor is 0.01; its benchmark uses 10x).
    """
    cfg = configure(RepairConfig, config, overrides)
    n_cases, sources, context_tokens, max_errors, layers = (
        cfg.n_cases,
        tuple(cfg.sources),
        cfg.context_tokens,
        cfg.max_errors,
        cfg.layers,
    )
    n_candidates, max_edits, scale, sgd_lr, sgd_steps = cfg.n_candidates, cfg.max_edits, cfg.scale, cfg.sgd_lr, cfg.sgd_steps
    n_gen, n_spec_lines, heldout_tokens, seed = cfg.n_gen, cfg.n_spec_lines, cfg.heldout_tokens, cfg.seed
    from tqdm.auto import tqdm

    if n_cases < 1:
        raise InputError("n_cases must be at least 1.")
    t0 = time.perf_counter()
    per = [n_cases // len(sources) + (i < n_cases % len(sources)) for i in range(len(sources))]
    cases, pool = [], []
    for spec, n in zip(sources, per):
        if n == 0:
            continue
        c, scanned = R.repair_cases(
            model,
            _corpus(spec),
            n,
            context_tokens=context_tokens,
            max_errors=max_errors,
            seed=seed,
            min_scanned=3 * n,
            progress=progress,
        )
        cases += c
        pool += scanned
    case_keys = {(c.source, c.line_no) for c in cases}
    others = [c for c in pool if (c.source, c.line_no) not in case_keys]
    rng = random.Random(seed)
    spec_lines = rng.sample(others, min(n_spec_lines, len(others)))
    spec_probes = R.probes_of(spec_lines)
    # generalisation: held-out positions (not in any case's file) whose next token is the repaired target
    case_files = {c.source for c in cases}
    gen_corpus = [f for spec in sources for f in _corpus(spec)]
    held = corpus_mod.stdlib("validation")
    heldout = _heldout_tokens(model, held, heldout_tokens)

    layer_list = R.upper_layers(model, layers)
    cache = R.ResidCache(model, layer_list[0])  # both methods edit only layers >= layer_list[0]
    base_spec = R.evaluate_probes(model, spec_probes, cache=cache)
    base_loss = R.heldout_loss(model, heldout, cache=cache)
    rows, examples = [], []
    tok = model.tokenizer
    for ci, case in enumerate(tqdm(cases, desc="repair", disable=not progress)):
        first = case.errors[0]
        target, wrong = case.reference[first], case.predicted[first]
        spec = [p for p in spec_probes if p.target != target]
        base_spec_c = {k: v[[i for i, p in enumerate(spec_probes) if p.target != target]] for k, v in base_spec.items()}
        gen = R.same_target_probes(
            model,
            gen_corpus,
            target,
            n_gen,
            wrong=wrong,
            context_tokens=context_tokens,
            exclude=case_files,
            seed=seed + ci,
        )
        base_gen = R.evaluate_probes(model, gen, cache=cache) if gen else None
        logits0 = cache.logits(case.tokens)
        common = dict(
            case=ci,
            source=case.source,
            line_no=case.line_no,
            errors=len(case.errors),
            target=token_texts(tok, [target])[0],
            wrong=token_texts(tok, [wrong])[0],
        )
        # MINT
        res = R.mint_repair(model, case, layers=layers, n_candidates=n_candidates, max_edits=max_edits, scale=scale)
        m = _measure(model, case, gen, spec, heldout, base_gen, base_spec_c, base_loss, cache)
        res.undo(model)
        restored = torch.equal(cache.logits(case.tokens), logits0)
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
                    "line": case.line,
                    "reference": token_texts(tok, case.reference),
                    "before": token_texts(tok, case.predicted),
                    "after_mint": token_texts(tok, res.predicted_after),
                    "neurons": [f"L{a}N{b}" for a, b in res.edits.neurons],
                    "success": res.success,
                }
            )
        # SGD baseline
        out, snap = R.sgd_repair(model, case, layers=layers, lr=sgd_lr, steps=sgd_steps)
        m = _measure(model, case, gen, spec, heldout, base_gen, base_spec_c, base_loss, cache)
        snap.restore()
        restored = torch.equal(cache.logits(case.tokens), logits0)
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
    settings = dict(
        n_cases=len(cases),
        sources=list(sources),
        context_tokens=context_tokens,
        max_errors=max_errors,
        layers=f"{layers} ({layer_list[0]}..{layer_list[-1]})",
        n_candidates=n_candidates,
        max_edits=max_edits,
        scale=scale,
        eps=0.01 * scale,
        sgd_lr=sgd_lr,
        sgd_steps=sgd_steps,
        n_gen=n_gen,
        n_spec_probes=len(spec_probes),
        heldout_tokens=int(heldout.numel()),
        pool_lines=len(pool),
        seed=seed,
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
    )


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
        f"lr {s['sgd_lr']:g} on the MLP output weights of the same layers. Every edit was undone and checked "
        "bit-exact before the next case.",
    )
    r.metrics(study.metrics())
    r.section("MINT versus SGD", text=PAPER)
    r.table(study.summary().round(4), caption="per method: means over cases (neurons = value vectors changed)")
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
        )
    r.data(study.to_json(), name="results")
    return r


def write(study: RepairStudy, out_dir) -> tuple[Path, Path]:
    """``study.save(out_dir)``: ``report.html`` and ``results.json`` (the same numbers) under ``out_dir``."""
    return study.save(out_dir)
