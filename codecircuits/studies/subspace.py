"""Subspace activation patching and its interpretability illusion (Makelov et al. 2023) on a code feature.

The feature is how many parentheses are still open at the end of the closing-paren prompt of Miller et al.
(:mod:`codecircuits.tasks.parens`): 2 (``print(str(123`` -> ``))``) or 3 (``print(str(str(123`` -> ``)))``). A
pair's base and source have different values and different numbers; they need not have the same length since only
the last position is patched. Only prompts the model answers correctly are used.

Steps (:func:`run`):

1. prompts of the paper's template (train numbers for training, test numbers held out) and of a few held-out
   templates (the comment line reworded), kept where the model is right;
2. a sweep of full-component patches (last position) at every layer's ``hook_resid_post`` and ``mlp.hook_post``
   (:func:`codecircuits.subspace.full_patch_sweep`);
3. three locations, chosen from the sweep as Makelov et al. chose MLP8 and resid_post.8 for IOI: the MLP whose
   full patch matters most, the MLP whose full patch matters least after the feature has reached the last
   position, and the residual stream after that layer;
4. at each, :func:`codecircuits.subspace.illusion_checks`: one DAS direction per seed (three by default)
   trained on the training pairs, then full / DAS / rowspace / nullspace / difference-of-means / random patches on
   held-out pairs, the separation of clean activations along ``v``, ``v_row``, ``v_null``, every number with its
   95% bootstrap interval over pairs (or prompts), and a verdict per seed by the stated rule
   (:func:`codecircuits.subspace.decide`);
5. controls with known answers: the positive control (a linear probe's direction at the MLP whose full patch
   carries the count, :func:`codecircuits.subspace.probe_direction`: the checks must say "faithful") and the
   negative control (a planted illusion at the quiet MLP, :func:`codecircuits.subspace.planted_illusion`: they
   must say "illusion");
6. the rank-1 edit of ``W_out`` equal to the patch of the quiet MLP's DAS direction
   (:func:`codecircuits.subspace.edit_equivalence`), exact and with the paper's covariance key;
7. the claims table (:func:`study_claims`).

Each step is a function of the config and what the earlier steps made: :func:`build_pairs`,
:func:`sweep_and_choose`, :func:`check_hooks`, :func:`run_controls`, :func:`run_edits`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .. import intervals
from .. import subspace as sub
from .common import Study, claim_specs, configure, json_safe, model_name, result, setting, timed

#: the prompts' templates (the paper's, and its comment line reworded) and those DAS is trained on
TEMPLATES = sub.PAREN_TEMPLATES
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
    mlp_layers: tuple[int, ...] | None = setting(
        None, "MLP layers to study (none: chosen from the sweep)", convert="int_list"
    )
    resid_layer: int | None = setting(None, "residual layer to study (none: chosen from the sweep)", convert=int)
    epochs: int = setting(4, "DAS training epochs")
    seeds: tuple[int, ...] = setting((0, 1, 2), "DAS seeds (one direction per seed at each hook)", convert="int_list")
    controls: bool = setting(True, "run the positive control (probe direction) and the planted illusion")
    edit: bool = setting(True, "check the rank-1 W_out edit equal to the quiet MLP's patch")
    batch_size: int = setting(16, "pairs per DAS step and per forward")
    lr: float = setting(1e-2, "DAS learning rate")
    seed: int = setting(0, "seed of pair sampling")
    n_numbers: int = setting(300, "numbers drawn for the prompts")
    only_correct: bool = setting(True, "keep only prompts the model answers correctly (off for untrained test models)")


@dataclass(frozen=True)
class SubspaceStudy(Study):
    """Everything a study run measured; :meth:`to_json` has every number, :meth:`report` the HTML."""

    model_name: str = result(key="model")
    config: SubspaceConfig = result()
    accuracy: dict = result()  # template -> {value: accuracy of the clean model}
    n_pairs: dict = result()  # "train" / "test" -> number of pairs
    test_groups: dict = result()  # group -> number of held-out pairs
    sweep: dict = result()  # "resid" / "mlp" -> [layer] full-patch FLDD
    choice: dict = result()  # role -> hook name, with why
    checks: dict = result()  # hook -> IllusionReport
    by_group: dict = result()  # hook -> group -> {object: FLDD}
    examples: list = result()  # a few pairs
    timings: dict = result(default_factory=dict)
    roles: dict = result(default_factory=dict)  # "causal" / "quiet" / "resid" -> hook
    controls: dict = result(default_factory=dict)  # "probe" / "planted" -> IllusionReport
    edits: dict = result(default_factory=dict, json=lambda d: {k: e.summary() for k, e in d.items()})  # EditResults
    claims: list = result(default_factory=list)  # intervals.Claim rows
    JSON_DIGITS = None

    def verdicts(self) -> dict[str, str]:
        return {h: r.verdict for h, r in self.checks.items()}

    def metrics(self) -> dict[str, float]:
        """Every metric card of the report: pair counts, then each learned subspace's headline numbers."""
        m = {"train_pairs": self.n_pairs["train"], "test_pairs": self.n_pairs["test"]}
        for h, rep in self.checks.items():
            m.update(_hook_metrics(h, rep))
        return m

    def report(self, model=None):
        return _report(self)

    def summary_text(self) -> str:
        """What ``codecircuits subspace`` prints: the pairs, each hook's verdict with its numbers and reasons, the
        controls' verdicts and the claims."""
        lines = [f"pairs: {self.n_pairs['train']} train, {self.n_pairs['test']} held out"]
        for hook, rep in self.checks.items():
            row = f"  FLDD full {rep.fldd('full/test'):7.1f}%  DAS {rep.patches['das/test'].fldd_interval.format(1)}%"
            if rep.fraction is not None:
                row += f"  rowspace share {rep.fraction.format()}  |v_row| {rep.row_norm:.2f}"
            lines.append(f"{hook:28s} {rep.verdict:14s} (seeds: {', '.join(rep.verdicts)}){row}")
            lines += [f"    - {reason}" for reason in rep.reasons]
        lines += [f"control {name:10s} {rep.hook_name:28s} {rep.verdict}" for name, rep in self.controls.items()]
        lines += [f"[{c.verdict}] {c.claim}: {c.evidence.format() if c.evidence else ''}" for c in self.claims]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ data


def build_pairs(model, config: SubspaceConfig, *, progress: bool = False):
    """Step 1: train pairs, held-out pairs and the clean model's accuracy per template and value
    (:func:`codecircuits.subspace.paren_pairs` with the config's sizes)."""
    return sub.paren_pairs(
        model, tuple(config.values), train_pairs=config.train_pairs, test_pairs=config.test_pairs,
        template_pairs=config.template_pairs, templates=TEMPLATES, train_templates=TRAIN_TEMPLATES,
        n_numbers=config.n_numbers, seed=config.seed, only_correct=config.only_correct, progress=progress,
    )


# ------------------------------------------------------------------------------------------------------ steps


def sweep_and_choose(model, config: SubspaceConfig, train: sub.PatchPairs, *, progress: bool = False):
    """Steps 2-3: the full-component sweep on the first ``sweep_pairs`` training pairs and the locations chosen
    from it (:func:`codecircuits.subspace.choose_hooks`)."""
    sweep = sub.full_patch_sweep(model, train.subset(slice(0, config.sweep_pairs)), progress=progress)
    return sweep, sub.choose_hooks(sweep, mlp_layers=config.mlp_layers, resid_layer=config.resid_layer)


def check_hooks(model, config: SubspaceConfig, train, test, choice: dict, timings: dict, *, progress: bool = False):
    """Step 4: :func:`codecircuits.subspace.illusion_checks` at each chosen hook (one DAS direction per seed), and
    each report's FLDD per held-out template; the seconds of each go to ``timings``."""
    checks, by_group = {}, {}
    for role, c in choice.items():
        with timed(timings, f"{role}_s"):
            rep = sub.illusion_checks(
                model, train, test, c["hook"], epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                seeds=tuple(config.seeds), progress=progress,
            )
            checks[c["hook"]] = rep
            by_group[c["hook"]] = rep.fldd_by_group(test.groups)
    return checks, by_group


def run_controls(model, train, test, checks: dict, roles: dict, *, progress: bool = False) -> dict:
    """Step 5: the checks on a linear probe's direction at the causal MLP (should be faithful) and on a planted
    illusion at the quiet MLP (should be an illusion), reusing those hooks' controls."""
    out = {}
    for name, role, direction_of in (("probe", "causal", sub.probe_direction), ("planted", "quiet", sub.planted_illusion)):
        hook = roles[role]
        direction = direction_of(model, train, hook)
        out[name] = sub.illusion_checks(model, train, test, hook, direction=direction, reuse=checks[hook], progress=progress)
    return out


def run_edits(model, train, test, checks: dict, roles: dict, *, progress: bool = False) -> dict:
    """Step 6: the rank-1 ``W_out`` edit equal to the quiet MLP's DAS patch, with a key orthogonal to the prompt's
    other positions (``"prompt"``) and with the paper's covariance key (``"covariance"``)."""
    quiet = roles["quiet"]
    v = checks[quiet].direction
    prompt = sub.edit_equivalence(model, test, v, rule="prompt", progress=progress)
    sigma = sub.second_moment_pinv(model, train, quiet)
    cov = sub.edit_equivalence(model, test, v, rule="covariance", sigma_pinv=sigma, progress=progress)
    return {"prompt": prompt, "covariance": cov}


def run(model, config: SubspaceConfig | None = None, *, progress: bool = True, **overrides) -> SubspaceStudy:
    """Run the study on ``model`` (see the module docstring). ``config`` defaults to :class:`SubspaceConfig`;
    keyword ``overrides`` change single settings."""
    config = configure(SubspaceConfig, config, overrides)
    timings: dict[str, float] = {}
    with timed(timings, "data_s"):
        train, test, accuracy = build_pairs(model, config, progress=progress)
    with timed(timings, "sweep_s"):
        sweep, choice = sweep_and_choose(model, config, train, progress=progress)
    checks, by_group = check_hooks(model, config, train, test, choice, timings, progress=progress)
    roles = _roles(choice, checks)
    controls: dict = {}
    edits: dict = {}
    if config.controls:
        with timed(timings, "controls_s"):
            controls = run_controls(model, train, test, checks, roles, progress=progress)
    if config.edit:
        with timed(timings, "edit_s"):
            edits = run_edits(model, train, test, checks, roles, progress=progress)
    groups: dict[str, int] = {}
    for g in test.groups:
        groups[g] = groups.get(g, 0) + 1
    examples = train.subset(slice(0, 4)).to_dataframe().to_dict("records")
    pairs = {"train": len(train), "test": len(test)}
    study = SubspaceStudy(
        model_name(model), config, accuracy, pairs, groups, sweep, choice, checks, by_group, examples, timings, roles,
        controls, edits,
    )
    return replace(study, claims=study_claims(study))


def _roles(choice: dict, checks: dict) -> dict:
    """Which studied hook plays which part: ``causal`` (the MLP whose full patch does most), ``quiet`` (the MLP
    whose full patch does least) and ``resid`` (a residual-stream hook); one MLP plays both when only one is
    studied."""
    mlps = [c["hook"] for c in choice.values() if c["hook"].endswith("mlp.hook_post")]
    resid = [c["hook"] for c in choice.values() if not c["hook"].endswith("mlp.hook_post")]
    out = {}
    if mlps:
        out["causal"] = max(mlps, key=lambda h: checks[h].fldd("full/test"))
        out["quiet"] = min(mlps, key=lambda h: checks[h].fldd("full/test"))
    if resid:
        out["resid"] = resid[0]
    return out


# ------------------------------------------------------------------------------------------------------ report


_CARD_LABELS = {
    "fldd_full": "FLDD %, whole component (held-out)",
    "fldd_das_train": "FLDD %, DAS direction (train)",
    "fldd_das_test": "FLDD %, DAS direction (held-out)",
    "iia_das_test": "interchange accuracy over the two answers, DAS (held-out)",
    "iia_vocab_das_test": "interchange accuracy over the vocabulary, DAS (held-out)",
    "fldd_rowspace_test": "FLDD %, rowspace part only (held-out)",
    "rowspace_fraction": "share of the DAS effect the rowspace part keeps",
    "v_row_norm": "|v_row|: rowspace part of the direction",
    "v_null_norm": "|v_null|: nullspace part of the direction",
}


def _hook_metrics(hook: str, rep: sub.IllusionReport) -> dict[str, float]:
    """The headline numbers of one learned subspace (:meth:`~codecircuits.subspace.IllusionReport.headline`),
    keyed by the hook: its report section's cards."""
    key = hook.replace(".", "_")
    return {f"{key}_{k}": v for k, v in rep.headline().items()}


def _report(s: SubspaceStudy):
    """The study as a :class:`codecircuits.report.Report`: the claims, the key numbers (the pairs, and each hook's
    full-component and DAS patches), then the pairs, the sweep, the verdicts, the controls and one section per
    hook."""
    v0, v1 = s.config.values
    labels = {"train_pairs": "training pairs", "test_pairs": "held-out pairs"}
    for h in list(s.checks)[:3]:
        key = h.replace(".", "_")
        labels[f"{key}_fldd_full"] = f"FLDD %, whole component at {h} (held-out)"
        labels[f"{key}_fldd_das_test"] = f"FLDD %, DAS direction at {h} (held-out)"
    r = s.open_report(
        f"Subspace patching and its illusion on {s.model_name}",
        f"feature: {v0} vs {v1} open parentheses at the end of the prompt (answer {')' * v0} vs {')' * v1})",
        labels=labels, claims_text="95% bootstrap intervals over held-out pairs or prompts.",
    )
    r.section(
        "The feature and the pairs",
        text="Each pair is a base and a source prompt with a different number of open parens (and a different number). "
        "Patching the base's last-position activation from the source should make the model close the source's "
        "number of parens. FLDD = 100·(1 − mean patched logit difference / mean clean logit difference); interchange "
        "accuracy = share of pairs whose patched answer (among the two paren tokens) is the source's.",
    )
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
        x=list(range(len(s.sweep["resid"]))), series={"resid_post": s.sweep["resid"], "mlp hook_post": s.sweep["mlp"]},
        title="FLDD (%) of full-component patches", x_title="layer", y_title="FLDD %",
    )
    r.table([{"role": k, **v} for k, v in s.choice.items()], caption="chosen locations")

    rule = sub.RULE
    r.section(
        "Verdicts",
        text=f"Each DAS direction (one per seed) gets a verdict by a fixed rule (codecircuits.subspace.decide): "
        f"'no effect' unless its held-out FLDD interval lies above {rule.min_effect:g} points and above a random "
        f"direction's; at an MLP, 'illusion' when the rowspace part is dormant -- the rowspace-only patch keeps less "
        f"than {rule.min_fraction:g} of the effect (whole interval) or clean activations do not separate along v_row "
        f"(Cohen's d interval below {rule.min_cohens_d:g}); 'faithful' when it generalises (held-out FLDD at least "
        f"{rule.min_generalisation:g} of training), separates along v and, at an MLP, the rowspace part is active "
        f"(fraction interval at or above {rule.min_fraction:g}, d along v_row above {rule.min_cohens_d:g}); otherwise "
        "'inconclusive'. A hook's verdict is the one every seed got, else 'seeds disagree'.",
    )
    r.table(
        [
            {
                "hook": h,
                "verdict": rep.verdict,
                "per seed": ", ".join(rep.verdicts),
                "reasons (seed 0)": "; ".join(rep.reasons) or "—",
            }
            for h, rep in s.checks.items()
        ],
        caption="one verdict per learned subspace",
    )
    r.table(
        [{"hook": h, **c.row()} for h, rep in s.checks.items() for c in rep.seeds],
        caption="every DAS seed, with 95% bootstrap intervals",
    )
    baselines = [
        {"hook": h, **{f"{k} {q}": v for k in ("row", "null") for q, v in rep.norm_baseline.to_json()[k].items()}}
        for h, rep in s.checks.items()
        if rep.norm_baseline is not None
    ]
    if baselines:
        r.table(baselines, caption="|v_row| and |v_null| of random unit vectors (mean and 95% range)")
    if s.controls:
        r.section(
            "Controls with known answers",
            text="Positive control: a linear probe's direction (the class-mean difference of clean activations, "
            "fitted on the training prompts) at the MLP whose full patch carries the count -- the checks should say "
            "faithful. Negative control: a planted illusion at the quiet MLP, the nullspace part of the class-mean "
            "difference plus a rowspace direction the prompts never vary along -- the checks should say illusion.",
        )
        r.table(
            [{"control": k, **c.summary()} for k, c in s.controls.items()],
            caption="the checks on directions whose answer is known",
        )
    if s.edits:
        r.section(
            "The rank-1 edit of W_out",
            text="The patch along v at an MLP's hook_post equals the weight edit W_out + b a^T with a = ((u - w)·v) "
            "(v^T W_out) and b^T w = 1 (one edit per pair). With b orthogonal to the prompt's other positions the "
            "edited model's logits equal the patched model's; with the paper's covariance key the edit also fires a "
            "little at other positions.",
        )
        r.table([e.summary() for e in s.edits.values()], caption="edit vs patch on the held-out pairs")
    for h, rep in s.checks.items():
        _hook_section(r, s, h, rep, shown=set(labels))
    return s.close_report(r)


def _hook_section(r, s: SubspaceStudy, h: str, rep: sub.IllusionReport, shown: set) -> None:
    """One learned subspace: its verdict, the cards not shown at the top, every patch, the separation of clean
    activations (with histograms), the FLDD per held-out template and the DAS training loss."""
    r.section(
        f"{h}",
        text=f"Verdict: {rep.verdict} (per seed: {', '.join(rep.verdicts)}). "
        + ("; ".join(rep.reasons) + "." if rep.reasons else ""),
    )
    m = {k: v for k, v in json_safe(_hook_metrics(h, rep), digits=None).items() if k not in shown}
    prefix = h.replace(".", "_") + "_"
    r.metrics(m, labels={k: _CARD_LABELS.get(k[len(prefix) :], k) for k in m})
    r.table(rep.to_dataframe().drop(columns=["hook"]), caption="every patch, train and held-out pairs")
    r.table(
        [{"direction": k, **v.summary()} for k, v in rep.separation.items()],
        caption="separation of clean activations (held-out prompts) along each direction",
    )
    x, series = rep.separation["v"].histogram()
    r.line_chart(x=x, series=series, title="clean projections on v", x_title="projection", y_title="prompts")
    if "v_row" in rep.separation:
        x, series = rep.separation["v_row"].histogram()
        r.line_chart(x=x, series=series, title="clean projections on v_row", x_title="projection", y_title="prompts")
    r.table(
        [{"group": g, **d} for g, d in s.by_group[h].items()], caption="FLDD (%) of each patch per held-out template"
    )
    r.line_chart(
        x=list(range(1, len(rep.direction.losses) + 1)), series={"loss": list(rep.direction.losses)},
        title="DAS training loss", x_title="epoch", y_title="cross-entropy",
    )


# ------------------------------------------------------------------------------------------------------ claims

COMMAND = "codecircuits subspace --model smollm2-135m"
#: where the paper's numbers come from (METHODS §5 quotes them)
TABLE_1 = "Makelov et al., Table 1 (GPT-2 small IOI)"
NOTEBOOK = "the authors' IOI analysis notebook (METHODS §5)"
CLAIMS = claim_specs(
    COMMAND, TABLE_1,
    quiet=("a DAS direction at a quiet MLP ({hook}) moves the output while patching the whole MLP does not (paper, "
           "MLP8: FLDD 46.7% vs -8%)",
           "reproduced: on every seed the full MLP's interval lies below {quiet:g} and the DAS direction's above it "
           "(with an effect); partly: on some seeds", "MLP8: FLDD 46.7% (DAS) vs -8% (full MLP)"),
    dormant=("its effect comes through a dormant rowspace part: the rowspace-only patch loses most of it (paper: keeps "
             "13.5/46.7 = 29%)",
             "reproduced: every seed's verdict is illusion; partly: some seed's is, or its fraction's interval lies "
             "below {fraction:g}", "the rowspace-only patch keeps 13.5/46.7 = 29%"),
    null_norm=("the DAS direction at the quiet MLP has a large nullspace part (paper: |v_null| 0.657, |v_row| 0.753)",
               "reproduced: every seed's |v_null| at least a random unit vector's 2.5% quantile; partly: at least 0.5",
               "|v_null| 0.657, |v_row| 0.753", NOTEBOOK),
    null_patch=("the nullspace part alone does nothing (paper: 0%)",
                "reproduced: the interval lies within (-1, 1) FLDD points", "0%", NOTEBOOK),
    resid=("a DAS direction in the residual stream ({hook}) is faithful and does more than the full residual patch "
           "(paper: 140.7% vs 123.6%)",
           "reproduced: every seed is faithful and above the full patch's interval; partly: every seed is faithful",
           "FLDD 140.7% (DAS) vs 123.6% (full residual)"),
    flips=("DAS at the quiet MLP flips the answer less often than DAS in the residual stream (paper interchange "
           "accuracy 4.2% vs 74.8%)",
           "reproduced: the quiet MLP's interval lies below the residual stream's lower end; partly: its estimate is "
           "lower", "interchange accuracy 4.2% vs 74.8%"),
    probe=("positive control: at the MLP whose full patch carries the count ({hook}), the checks call a linear probe's "
           "direction, and the DAS directions, faithful",
           "reproduced: the probe's direction and every DAS seed are called faithful; partly: one of the two"),
    planted=("negative control: the checks call a planted illusion at {hook} an illusion",
             "reproduced: the planted direction's verdict is illusion"),
    edit=("the 1-D patch at {hook} equals a rank-1 edit of W_out (paper: patch = edit W_out + b a^T)",
          "reproduced: the edited model's largest |logit difference| from the patch and that of the MLP output are "
          "below 1e-3; partly: the MLP output's is", "patch = edit W_out + b a^T",
          "Makelov et al., the rank-1 link (METHODS §5)"),
)


def _seed_range(values: list[float]) -> intervals.Interval:
    """The first seed's value with the range over seeds (an Interval whose n is the number of seeds)."""
    return intervals.Interval(float(values[0]), float(min(values)), float(max(values)), len(values))


def study_claims(s: SubspaceStudy) -> list[intervals.Claim]:
    """The claim -> verdict rows of the study (Makelov et al.'s Table 1 and checks, and the controls), each with
    the interval it rests on and its control. Verdicts that need every DAS seed say so in the detail."""
    return [*_quiet_mlp_claims(s), *_resid_claims(s), *_control_claims(s)]


def _quiet_mlp_claims(s: SubspaceStudy) -> list[intervals.Claim]:
    """At the quiet MLP: the DAS direction beats the full patch, through a dormant rowspace part."""
    if "quiet" not in s.roles:
        return []
    q, rule = s.checks[s.roles["quiet"]], sub.RULE
    das, full, rand = (q.patches[k].fldd_interval for k in ("das/test", "full/test", "random/test"))
    exceeds = [c.flags.get("exceeds_component", False) and c.verdict != "no effect" for c in q.seeds]
    claims = [CLAIMS["quiet"](
        all(exceeds), any(exceeds), das, rand,
        f"FLDD %; full MLP {full.format(1)}; DAS per seed "
        + ", ".join(f"{c.patches['das/test'].fldd:.1f}" for c in q.seeds)
        + f"; {sum(exceeds)}/{len(exceeds)} seeds exceed the full patch (rule: full CI below {rule.quiet_full:g}, "
        "DAS CI above it); control: a random unit direction", hook=q.hook_name, quiet=rule.quiet_full)]
    if q.fraction is not None:
        dormant = [c.verdict == "illusion" for c in q.seeds]
        loses = [c.fraction is not None and c.fraction.below(rule.min_fraction) for c in q.seeds]
        nulls, b = [c.null_norm for c in q.seeds], q.norm_baseline
        null = q.patches["nullspace/test"].fldd_interval
        claims += [
            CLAIMS["dormant"](
                all(dormant), any(dormant) or any(loses), q.fraction,
                sub.rowspace_fraction(q.patches["das/test"], q.patches["random_rowspace/test"]),
                "share of the DAS effect the rowspace-only patch keeps, per seed "
                + ", ".join(f"{c.fraction.format()}" for c in q.seeds if c.fraction)
                + "; Cohen's d along v_row per seed "
                + ", ".join(f"{c.separation['v_row'].cohens_d_interval.format(1)}" for c in q.seeds)
                + f"; verdicts {', '.join(q.verdicts)} (illusion = fraction CI below {rule.min_fraction:g} or d CI "
                f"along v_row below {rule.min_cohens_d:g}); control: a random rowspace direction's share",
                fraction=rule.min_fraction),
            CLAIMS["null_norm"](
                min(nulls) >= b.null_low, min(nulls) >= 0.5, _seed_range(nulls), b.null_interval(),
                "|v_null| of seed 0 [min, max over seeds]; |v_row| per seed "
                + ", ".join(f"{c.row_norm:.2f}" for c in q.seeds)
                + f"; control: {b.n} random unit vectors (mean [95% range]), |v_row| {b.row_mean:.2f} "
                f"[{b.row_low:.2f}, {b.row_high:.2f}]; partly = at least 0.5 but less than a random vector's"),
            CLAIMS["null_patch"](max(abs(null.low), abs(null.high)) < 1.0, False, null, rand,
                                 "FLDD % of the patch along v_null/|v_null|; W_out maps it to zero"),
        ]
    return claims


def _resid_claims(s: SubspaceStudy) -> list[intervals.Claim]:
    """In the residual stream: the DAS direction is faithful, and flips more answers than the quiet MLP's."""
    if "resid" not in s.roles:
        return []
    r = s.checks[s.roles["resid"]]
    das, full, rand = (r.patches[k].fldd_interval for k in ("das/test", "full/test", "random/test"))
    faithful = [c.verdict == "faithful" for c in r.seeds]
    beats = [c.patches["das/test"].fldd_interval.above(full.high) for c in r.seeds]
    claims = [CLAIMS["resid"](
        all(faithful) and all(beats), all(faithful), das, rand,
        f"FLDD %; full residual {full.format(1)}; verdicts per seed {', '.join(r.verdicts)}; {sum(beats)}/{len(beats)} "
        "seeds above the full patch's interval; control: a random direction", hook=r.hook_name)]
    if "quiet" in s.roles:
        q = s.checks[s.roles["quiet"]]
        qa, ra = q.patches["das/test"].accuracy_vocab_interval, r.patches["das/test"].accuracy_vocab_interval
        claims.append(CLAIMS["flips"](
            qa.below(ra.low), qa.estimate < ra.estimate, qa, ra,
            "interchange accuracy, argmax over the whole vocabulary (quiet MLP | control column: residual stream); "
            f"over the two answer tokens only: {q.patches['das/test'].accuracy_interval.format()} vs "
            f"{r.patches['das/test'].accuracy_interval.format()}"))
    return claims


def _control_claims(s: SubspaceStudy) -> list[intervals.Claim]:
    """The controls with known answers (the probe's direction: faithful; the planted illusion: illusion), and the
    patch at the quiet MLP equal to a rank-1 edit of W_out."""
    claims = []
    if "probe" in s.controls:
        p, c = s.controls["probe"], s.checks[s.roles["causal"]]
        ok = [p.verdict == "faithful", all(v == "faithful" for v in c.verdicts)]
        claims.append(CLAIMS["probe"](
            all(ok), any(ok), p.patches["das/test"].fldd_interval, p.patches["random/test"].fldd_interval,
            f"FLDD % of the probe direction (class-mean difference fitted on the training prompts); full MLP "
            f"{p.patches['full/test'].fldd_interval.format(1)}; probe: {p.verdict}, d along v_row "
            f"{p.separation['v_row'].cohens_d_interval.format(1)}, rowspace share {p.fraction.format()}; DAS per seed: "
            f"{', '.join(c.verdicts)}", hook=p.hook_name))
    if "planted" in s.controls:
        p = s.controls["planted"]
        claims.append(CLAIMS["planted"](
            p.verdict == "illusion", False, p.patches["das/test"].fldd_interval, p.patches["random/test"].fldd_interval,
            f"FLDD % of the planted direction (nullspace part of the class-mean difference + a dormant rowspace "
            f"direction); verdict {p.verdict}; rowspace share {p.fraction.format()}; d along v_row "
            f"{p.separation['v_row'].cohens_d_interval.format(1)}", hook=p.hook_name))
    if "prompt" in s.edits:
        e, cov = s.edits["prompt"], s.edits.get("covariance")
        detail = (f"FLDD % of the edited model (key b orthogonal to the prompt's other positions) | control column: "
                  f"the subspace patch; largest |logit difference| edit vs patch over the vocabulary "
                  f"{float(e.max_logit_diff.max()):.1e}, of the MLP output {float(e.mlp_out_diff.max()):.1e}")
        if cov is not None:
            detail += (f"; the paper's key b = S+w/(wTS+w): FLDD {cov.fldd_edit.format(1)}, edit minus patch "
                       f"{cov.fldd_difference.format(1)}, largest |logit difference| "
                       f"{float(cov.max_logit_diff.max()):.2f}")
        exact = float(e.max_logit_diff.max()) < 1e-3 and float(e.mlp_out_diff.max()) < 1e-3
        claims.append(CLAIMS["edit"](exact, float(e.mlp_out_diff.max()) < 1e-3, e.fldd_edit, e.fldd_patch, detail,
                                     hook=e.hook_name))
    return claims
