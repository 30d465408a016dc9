"""Subspace activation patching and its interpretability illusion (Makelov et al. 2023) on a code feature.

The feature is how many parentheses are still open at the end of the closing-paren prompt of Miller et al.
(:mod:`codecircuits.tasks.parens`): 2 (``print(str(123`` -> ``))``) or 3 (``print(str(str(123`` -> ``)))``). A
pair's base and source have different values and different numbers; they need not have the same length since only
the last position is patched. Only prompts the model answers correctly are used.

Steps (:func:`run`):

1. prompts of the paper's template (train numbers for training, test numbers held out) and of a few held-out
   templates (the comment line reworded), kept where the model is right;
2. a sweep of full-component patches (last position) at every layer's ``hook_resid_post`` and ``mlp.hook_post``;
3. three locations, chosen from the sweep as Makelov et al. chose MLP8 and resid_post.8 for IOI: the MLP whose
   full patch matters most, the MLP whose full patch matters least after the feature has reached the last
   position, and the residual stream after that layer;
4. at each, :func:`codecircuits.subspace.illusion_checks`: a DAS direction trained on the training pairs, then
   full / DAS / rowspace / nullspace / difference-of-means / random patches on train and held-out pairs, the
   separation of clean activations along ``v``, ``v_row``, ``v_null``, and a verdict.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import subspace as sub
from ..core.sites import hook_name
from ..errors import InputError
from ..inputs import single_token_id
from ..tasks import parens
from .common import Study, configure, json_safe, model_name, setting, write_study

# Held-out templates: the paper's comment line reworded; the code line is the paper's.
TEMPLATES = {
    "paper": "#print the string {num}\nprint({calls}{num}",
    "number": "#print the number {num}\nprint({calls}{num}",
    "show": "# show the string {num}\nprint({calls}{num}",
    "output": "# output the string {num}\nprint({calls}{num}",
    "value": "#print the value {num}\nprint({calls}{num}",
}
TRAIN_TEMPLATES = ("paper",)


@dataclass(frozen=True)
class SubspaceConfig:
    """Settings of the study.

    ``values`` are the two numbers of open parens compared; ``train_pairs`` / ``test_pairs`` are pairs of the
    paper's template (train and test numbers), ``template_pairs`` pairs per held-out template; ``sweep_pairs``
    training pairs go into the layer sweep. ``mlp_layers`` / ``resid_layer`` override the automatic choice.
    """

    values: tuple[int, int] = setting((2, 3), "the two numbers of open parens compared")
    train_pairs: int = setting(32, "pairs of the paper's template with train numbers (DAS is fitted on them)")
    test_pairs: int = setting(16, "pairs of the paper's template with held-out numbers")
    template_pairs: int = setting(6, "pairs per held-out template")
    sweep_pairs: int = setting(8, "training pairs in the full-component layer sweep")
    mlp_layers: tuple[int, ...] | None = setting(None, "MLP layers to study (none: chosen from the sweep)", convert="int_list")
    resid_layer: int | None = setting(None, "residual layer to study (none: chosen from the sweep)", convert=int)
    epochs: int = setting(4, "DAS training epochs")
    batch_size: int = setting(16, "pairs per DAS step and per forward")
    lr: float = setting(1e-2, "DAS learning rate")
    seed: int = setting(0, "seed of pair sampling and DAS")
    n_numbers: int = setting(300, "numbers drawn for the prompts")
    only_correct: bool = setting(
        True, "keep only prompts the model answers correctly (off for untrained test models)"
    )


@dataclass(frozen=True)
class SubspaceStudy(Study):
    """Everything a study run measured; :meth:`to_json` has every number, :meth:`report` the HTML."""

    model_name: str
    config: SubspaceConfig
    accuracy: dict  # template -> {value: accuracy of the clean model}
    n_pairs: dict  # "train" / "test" -> number of pairs
    test_groups: dict  # group -> number of held-out pairs
    sweep: dict  # "resid" / "mlp" -> [layer] full-patch FLDD
    choice: dict  # role -> hook name, with why
    checks: dict  # hook -> IllusionReport
    by_group: dict  # hook -> group -> {object: FLDD}
    examples: list  # a few pairs
    timings: dict = field(default_factory=dict)

    def verdicts(self) -> dict[str, str]:
        return {h: r.verdict for h, r in self.checks.items()}

    def metrics(self) -> dict[str, float]:
        """Every metric card of the report: pair counts, then each learned subspace's headline numbers."""
        m = {"train_pairs": self.n_pairs["train"], "test_pairs": self.n_pairs["test"]}
        for h, rep in self.checks.items():
            m.update(_hook_metrics(h, rep))
        return m

    def to_json(self) -> dict:
        return json_safe(
            dict(
                model=self.model_name,
                config=asdict(self.config),
                accuracy=self.accuracy,
                n_pairs=self.n_pairs,
                test_groups=self.test_groups,
                sweep=self.sweep,
                choice=self.choice,
                checks={h: r.to_dict() for h, r in self.checks.items()},
                by_group=self.by_group,
                examples=self.examples,
                timings=self.timings,
                metrics=self.metrics(),
            ),
            digits=None,
        )

    def report(self):
        return _report(self)

    def save(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``report.html`` and ``results.json`` into ``out_dir``; returns both paths."""
        return write_study(out_dir, self.to_json(), self.report)


# ------------------------------------------------------------------------------------------------------ data


def _prompt(template: str, n_open: int, num: int) -> str:
    return template.format(num=num, calls=parens.CALL * (n_open - 1))


@torch.no_grad()
def _correct(model, prompts: list[str], answer_id: int, batch_size: int = 64) -> list[bool]:
    by_len: dict[int, list[int]] = {}
    toks = [model.to_tokens(p)[0] for p in prompts]
    for i, t in enumerate(toks):
        by_len.setdefault(len(t), []).append(i)
    ok = [False] * len(prompts)
    for _, ix in by_len.items():
        for s in range(0, len(ix), batch_size):
            part = ix[s : s + batch_size]
            last = model(torch.stack([toks[i] for i in part]))[:, -1]
            for i, p in zip(part, last.argmax(-1).tolist()):
                ok[i] = p == answer_id
    return ok


def build_pairs(model, config: SubspaceConfig, *, progress: bool = False):
    """Train pairs, held-out pairs and the clean model's accuracy per template and value."""
    values = tuple(config.values)
    if len(values) != 2 or values[0] == values[1] or min(values) < 1:
        raise InputError(f"values must be two different numbers of open parens (>= 1), got {values}.")
    answers = [parens.label_text(v) for v in values]
    answer_ids = [single_token_id(model, a) for a in answers]
    numbers = random.Random(20).sample(range(100, 1000), config.n_numbers)
    n_train = int(round(parens.TRAIN_FRACTION * len(numbers)))
    split_numbers = {"train": numbers[:n_train], "test": numbers[n_train:]}
    rng = random.Random(config.seed)
    accuracy: dict = {}
    pools: dict = {}  # (template, split) -> value index -> [prompts the model gets right]
    for name, template in tqdm(TEMPLATES.items(), desc="clean prompts", disable=not progress, leave=False):
        accuracy[name] = {}
        for split, nums in split_numbers.items():
            if name not in TRAIN_TEMPLATES and split == "train":
                continue
            pools[(name, split)] = {}
            # enough numbers for distinct prompts in each pair, not the whole split
            want = (
                config.train_pairs
                if split == "train"
                else (config.test_pairs if name in TRAIN_TEMPLATES else config.template_pairs)
            )
            nums = nums[: max(8, want + 4)]
            for k, v in enumerate(values):
                prompts = [_prompt(template, v, n) for n in nums]
                ok = _correct(model, prompts, answer_ids[k])
                pools[(name, split)][k] = [p for p, good in zip(prompts, ok) if good or not config.only_correct]
                accuracy[name].setdefault(v, []).extend(ok)
    accuracy = {t: {v: float(np.mean(ok)) for v, ok in d.items()} for t, d in accuracy.items()}

    def make(template: str, split: str, n: int) -> tuple[list, list, list, list, list]:
        pool = pools[(template, split)]
        base, source, bv, sv = [], [], [], []
        for i in range(n):
            a = i % 2  # alternate the direction of the interchange
            b = 1 - a
            if not pool[a] or not pool[b]:
                break
            base.append(rng.choice(pool[a]))
            source.append(rng.choice(pool[b]))
            bv.append(a)
            sv.append(b)
        return base, source, bv, sv, [template] * len(base)

    def pairs_of(parts) -> sub.PatchPairs:
        cols = [sum((p[i] for p in parts), []) for i in range(5)]
        if not cols[0]:
            raise InputError(
                f"The model answers too few prompts correctly to build pairs for values {values}; accuracy per "
                f"template: {accuracy}."
            )
        return sub.PatchPairs.from_prompts(model, cols[0], cols[1], cols[2], cols[3], answers, groups=cols[4])

    train = pairs_of([make(t, "train", config.train_pairs) for t in TRAIN_TEMPLATES])
    test_parts = [make(t, "test", config.test_pairs) for t in TRAIN_TEMPLATES]
    test_parts += [make(t, "test", config.template_pairs) for t in TEMPLATES if t not in TRAIN_TEMPLATES]
    test = pairs_of([p for p in test_parts if p[0]])
    return train, test, accuracy


# ------------------------------------------------------------------------------------------------------ sweep


def layer_sweep(model, pairs: sub.PatchPairs, *, progress: bool = False) -> dict[str, list[float]]:
    """FLDD of the full-component last-position patch at every layer's residual stream and MLP ``hook_post``."""
    hooks = {
        kind: [hook_name(site, layer) for layer in range(model.cfg.n_layers)]
        for kind, site in (("resid", "resid_post"), ("mlp", "post"))
    }
    wanted = set(hooks["resid"]) | set(hooks["mlp"])
    with torch.no_grad():  # every source activation in one pass
        _, cache = model.run_with_cache(pairs.source_tokens, names_filter=lambda n: n in wanted)
    rows = torch.arange(len(pairs))
    clean = sub.patched_logits(model, pairs, hooks["resid"][0], None, 1.0, 64)
    out: dict[str, list[float]] = {"resid": [], "mlp": []}
    bar = tqdm(total=len(wanted), desc="full-patch sweep", disable=not progress, leave=False)
    for kind, names in hooks.items():
        for hook in names:
            source = cache[hook][rows, pairs.source_positions].float().cpu()
            out[kind].append(sub.patch(model, pairs, hook, None, clean=clean, source=source).fldd)
            bar.update(1)
    bar.close()
    return out


def choose_hooks(sweep: dict[str, list[float]], config: SubspaceConfig) -> dict[str, dict]:
    """The three locations (see the module docstring), unless the config names them."""
    n = len(sweep["mlp"])
    mlp = np.asarray(sweep["mlp"])
    resid = np.asarray(sweep["resid"])
    choice: dict[str, dict] = {}
    if config.mlp_layers:
        for i, layer in enumerate(config.mlp_layers):
            choice[f"mlp_{i}"] = dict(hook=hook_name("post", layer), why="given in the config")
    else:
        top = int(np.argmax(mlp))
        choice["mlp_causal"] = dict(
            hook=hook_name("post", top), why=f"largest full-MLP patch effect (FLDD {mlp[top]:.1f}%)"
        )
        reached = [layer for layer in range(n) if resid[layer] >= 50.0]
        start = reached[0] if reached else n // 2
        cands = [layer for layer in range(start, n - 1) if layer != top] or [
            layer for layer in range(n) if layer != top
        ]
        quiet = min(cands, key=lambda layer: abs(mlp[layer]))
        choice["mlp_inert"] = dict(
            hook=hook_name("post", quiet),
            why=f"smallest full-MLP patch effect (FLDD {mlp[quiet]:.1f}%) from layer {start}, where patching the "
            "residual stream first moves the answer half way",
        )
    layer = config.resid_layer
    if layer is None:
        inert = choice.get("mlp_inert") or next(iter(choice.values()))
        layer = int(inert["hook"].split(".")[1])
        why = "the residual stream after the inert MLP's layer (as resid_post.8 beside MLP8 in the paper)"
    else:
        why = "given in the config"
    choice["resid"] = dict(hook=hook_name("resid_post", layer), why=why + f"; full-patch FLDD {resid[layer]:.1f}%")
    return choice


# ------------------------------------------------------------------------------------------------------ run


def run(model, config: SubspaceConfig | None = None, *, progress: bool = True, **overrides) -> SubspaceStudy:
    """Run the study on ``model`` (see the module docstring). ``config`` defaults to :class:`SubspaceConfig`;
    keyword ``overrides`` change single settings."""
    config = configure(SubspaceConfig, config, overrides)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    train, test, accuracy = build_pairs(model, config, progress=progress)
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sweep = layer_sweep(model, train.subset(slice(0, config.sweep_pairs)), progress=progress)
    choice = choose_hooks(sweep, config)
    timings["sweep_s"] = time.perf_counter() - t0

    checks, by_group = {}, {}
    for role, c in choice.items():
        t0 = time.perf_counter()
        hook = c["hook"]
        rep = sub.illusion_checks(
            model,
            train,
            test,
            hook,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=config.seed,
            progress=progress,
        )
        checks[hook] = rep
        by_group[hook] = _by_group(test, rep)
        timings[f"{role}_s"] = time.perf_counter() - t0
    groups: dict[str, int] = {}
    for g in test.groups:
        groups[g] = groups.get(g, 0) + 1
    examples = train.subset(slice(0, 4)).to_dataframe().to_dict("records")
    return SubspaceStudy(
        model_name(model),
        config,
        accuracy,
        {"train": len(train), "test": len(test)},
        groups,
        sweep,
        choice,
        checks,
        by_group,
        examples,
        timings,
    )


def _by_group(test: sub.PatchPairs, rep: sub.IllusionReport) -> dict:
    """FLDD of every patched object on each held-out template (from the per-pair logit differences)."""
    out = {}
    groups = np.asarray(test.groups)
    for g in dict.fromkeys(test.groups):
        mask = torch.as_tensor(groups == g)
        row: dict = {"pairs": int(mask.sum())}
        for key, res in rep.patches.items():
            obj, split = key.split("/")
            if split == "test":
                row[obj] = 100.0 * (1.0 - float(res.ld_patched[mask].mean()) / float(res.ld_clean[mask].mean()))
        out[g] = row
    return out


# ------------------------------------------------------------------------------------------------------ report


def _hist(sep: sub.Separation, bins: int = 12) -> tuple[list[float], dict[str, list[float]]]:
    p = sep.projections.numpy()
    edges = np.linspace(p.min(), p.max() + 1e-9, bins + 1)
    centres = ((edges[:-1] + edges[1:]) / 2).tolist()
    series = {}
    for v in sorted(set(sep.values.tolist())):
        counts, _ = np.histogram(p[sep.values.numpy() == v], bins=edges)
        series[f"value {v}"] = counts.astype(float).tolist()
    return centres, series


_CARD_LABELS = {
    "fldd_full": "FLDD %, whole component (held-out)",
    "fldd_das_train": "FLDD %, DAS direction (train)",
    "fldd_das_test": "FLDD %, DAS direction (held-out)",
    "iia_das_test": "interchange accuracy, DAS (held-out)",
    "fldd_rowspace_test": "FLDD %, rowspace part only (held-out)",
    "v_row_norm": "|v_row|: rowspace part of the direction",
    "v_null_norm": "|v_null|: nullspace part of the direction",
}


def _hook_metrics(hook: str, rep) -> dict[str, float]:
    """The headline numbers of one learned subspace (its report section's cards)."""
    key = hook.replace(".", "_")
    m = {
        f"{key}_fldd_full": rep.fldd("full/test"),
        f"{key}_fldd_das_train": rep.fldd("das/train"),
        f"{key}_fldd_das_test": rep.fldd("das/test"),
        f"{key}_iia_das_test": rep.patches["das/test"].interchange_accuracy,
    }
    if "rowspace/test" in rep.patches:
        m[f"{key}_fldd_rowspace_test"] = rep.fldd("rowspace/test")
        m[f"{key}_v_row_norm"] = rep.row_norm
        m[f"{key}_v_null_norm"] = rep.null_norm
    return m


def _report(s: SubspaceStudy):
    from ..report import Report

    v0, v1 = s.config.values
    r = Report(
        title=f"Subspace patching and its illusion on {s.model_name}",
        subtitle=f"feature: {v0} vs {v1} open parentheses at the end of the prompt (answer {')' * v0} vs {')' * v1})",
    )
    r.section(
        "The feature and the pairs",
        text="Each pair is a base and a source prompt with a different number of open parens (and a different number). "
        "Patching the base's last-position activation from the source should make the model close the source's "
        "number of parens. FLDD = 100·(1 − mean patched logit difference / mean clean logit difference); interchange "
        "accuracy = share of pairs whose patched answer (among the two paren tokens) is the source's.",
    )
    r.metrics({"train_pairs": s.n_pairs["train"], "test_pairs": s.n_pairs["test"]})  # see SubspaceStudy.metrics
    r.table(
        [{"template": t, **{f"accuracy, {v} open": a for v, a in d.items()}} for t, d in s.accuracy.items()],
        caption="clean accuracy per template (only correctly answered prompts are used)",
    )
    r.code(TEMPLATES["paper"].format(num=123, calls="str("), title="the paper's template (2 open)")
    r.table(s.examples, caption="example training pairs")

    r.section(
        "Full-component patches by layer",
        text="The whole activation at the last position patched from source to base, at each layer's residual "
        "stream and MLP hook_post. The locations below were chosen from this sweep.",
    )
    r.line_chart(
        x=list(range(len(s.sweep["resid"]))),
        series={"resid_post": s.sweep["resid"], "mlp hook_post": s.sweep["mlp"]},
        title="FLDD (%) of full-component patches",
        x_title="layer",
        y_title="FLDD %",
    )
    r.table([{"role": k, **v} for k, v in s.choice.items()], caption="chosen locations")

    r.section(
        "Verdicts",
        text="A subspace passes when none of the checks fails: it generalises to held-out prompts, beats a random "
        "direction, does not do much more than the full component when that does little, keeps its effect when "
        "patched along the rowspace part only, and clean activations separate along it by feature value.",
    )
    r.table(
        [{"hook": h, "verdict": rep.verdict, "reasons": "; ".join(rep.reasons) or "—"} for h, rep in s.checks.items()],
        caption="one verdict per learned subspace",
    )
    for h, rep in s.checks.items():
        r.section(f"{h}", text=f"Verdict: {rep.verdict}. " + ("; ".join(rep.reasons) + "." if rep.reasons else ""))
        m = json_safe(_hook_metrics(h, rep), digits=None)
        prefix = h.replace(".", "_") + "_"
        r.metrics(m, labels={k: _CARD_LABELS.get(k[len(prefix) :], k) for k in m})
        r.table(rep.to_dataframe().drop(columns=["hook"]), caption="every patch, train and held-out pairs")
        r.table(
            [{"direction": k, **v.summary()} for k, v in rep.separation.items()],
            caption="separation of clean activations (held-out prompts) along each direction",
        )
        x, series = _hist(rep.separation["v"])
        r.line_chart(x=x, series=series, title="clean projections on v", x_title="projection", y_title="prompts")
        if "v_row" in rep.separation:
            x, series = _hist(rep.separation["v_row"])
            r.line_chart(
                x=x, series=series, title="clean projections on v_row", x_title="projection", y_title="prompts"
            )
        r.table(
            [{"group": g, **d} for g, d in s.by_group[h].items()],
            caption="FLDD (%) of each patch per held-out template",
        )
        r.line_chart(
            x=list(range(1, len(rep.direction.losses) + 1)),
            series={"loss": list(rep.direction.losses)},
            title="DAS training loss",
            x_title="epoch",
            y_title="cross-entropy",
        )
    r.data(s.to_json(), "results")
    return r
