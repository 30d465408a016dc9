"""FF memories in Python, Java and Go (Haider et al. 2024's three languages): RQ1 per language and the
cross-language comparison of the keys each concept selects.

Each language's corpus (by default the held-out-by-path training splits of the standard library, the JDK's
``src.zip`` and Go's source, :mod:`codecircuits.debian_sources`) is scanned on its own, resumably (one checkpoint per
language under ``scans``), scored against its language's catalogue (the catalogues share concept names,
:mod:`codecircuits.memories.catalogues`), and compared with :func:`codecircuits.memories.crosslang.compare_languages`.

RQ1 per language is the semantic share of labelled keys in the first, middle and last third of the layers, with
a 95% bootstrap interval that resamples the labelled keys of each third.

>>> study = run(model, LanguagesConfig(max_tokens=300_000, scans="~/.cache/codecircuits/scans"))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import distributed, intervals
from .. import memories as mem
from ..errors import InputError
from ..memories import concepts as cc
from ..memories.crosslang import CrossLanguage, compare_languages
from ..memories.languages import corpus_language
from .common import Study, claim_specs, configure, model_name, result, setting

PAPER = (
    "Haider et al. study Java, Go and Python with the same method; lower layers store shallow patterns and higher "
    "layers more semantic ones in each language"
)


@dataclass(frozen=True)
class LanguagesConfig:
    """Settings of the three-language study; the command line's options come from these fields."""

    corpora: tuple[str, ...] = setting(
        ("stdlib:train", "java:train", "go:train"), "corpora to scan, one per language", convert="csv"
    )
    max_tokens: int | None = setting(6000, "tokens scanned per language (0: the whole corpus)", convert="zero_is_none")
    window: int = setting(128, "chunk length in tokens, BOS included")
    k: int = setting(20, "trigger examples kept per key", flag="--top-k")
    tau: float = setting(0.5, "share of a key's triggers that must match a concept")
    min_lift: float = setting(2.0, "score / base rate needed to select a key")
    n_draws: int = setting(200, "layer-matched random key sets per concept for the chance overlap")
    order: str = setting(
        "sample",
        "which chunks a budget scans: 'sample' (a seeded uniform sample of the corpus's chunks) or 'breadth' "
        "(the first chunk of every file, then the second, ...: mostly licence headers and imports at 300k tokens)",
    )
    seed: int = setting(0, "seed of the chunk sample")
    batch_size: int = setting(8, "chunks per forward of the scan")
    scans: str | None = setting(
        None, "directory of the per-language scan checkpoints, reused and resumed (none: OUT/scans)"
    )


@dataclass(frozen=True)
class LanguagesStudy(Study):
    model: str
    languages: tuple[str, ...]
    corpora: dict
    tokens: dict
    distributions: dict = result(repr=False, key="layer_distribution")  # language -> per-layer DataFrame
    rq1: dict = field(default_factory=dict)  # language -> third -> Interval of the semantic share
    comparison: CrossLanguage | None = result(None, key="cross_language",
                                              json=lambda c: c.to_dataframe().to_dict("records"))
    timings: dict = field(default_factory=dict)
    config: LanguagesConfig | None = None

    def metrics(self) -> dict:
        m = {f"{g}_tokens": self.tokens[g] for g in self.languages}
        for g in self.languages:
            for third, iv in self.rq1[g].items():
                m[f"{g}_semantic_share_{third}"] = iv.estimate
        s = self.comparison.summary()
        m.update({f"cross_{k}": v for k, v in s.items()})
        return m

    def claims(self) -> list[intervals.Claim]:
        """RQ1 per language, then whether a concept selects the same keys in every language (against
        layer-matched random key sets)."""
        out = [CLAIMS["rq1"](late.low > e.high, late.estimate > e.estimate, late, e,
                             "measured: last third; control: first third", language=g)
               for g in self.languages for e, late in [(self.rq1[g]["early"], self.rq1[g]["late"])]]
        s = self.comparison.summary()
        share = s["above_chance"] / s["concept_pairs"] if s["concept_pairs"] else 0.0
        df = self.comparison.shared_pairs()
        evidence = control = excess = None
        detail = "no concept has keys in two languages"
        if len(df):  # intervals over the concept-language pairs with keys in both languages
            jac, chance = df["jaccard"].to_numpy(dtype=float), df["chance_mean"].to_numpy(dtype=float)
            evidence, control = intervals.mean(jac), intervals.mean(chance)
            excess = intervals.paired(lambda a, b: (a - b).mean(), jac, chance)
            detail = (f"{s['above_chance']} of {s['concept_pairs']} concept-language pairs above the 95% chance "
                      f"range; mean Jaccard excess over chance {excess.format(3)}")
        above = excess is not None and excess.low > 0
        return out + [CLAIMS["cross"](share >= 0.5 and above, share > 0.1 or above, evidence, control, detail +
                      "; measured: mean Jaccard of the pairs; control: mean of layer-matched random sets")]

    def json_extra(self) -> dict:
        return {"paper": PAPER}

    def summary_text(self) -> str:
        """What ``codecircuits languages`` prints: RQ1 per language and the cross-language overlap."""
        lines = []
        for g in self.languages:
            shares = ", ".join(f"{t} {iv.format(3)}" for t, iv in self.rq1[g].items())
            lines.append(f"{g}: {self.tokens[g]} tokens scanned; semantic share of labelled keys by third: {shares}")
        s = self.comparison.summary()
        lines.append(
            f"cross-language: {s['above_chance']} of {s['concept_pairs']} concept pairs overlap above chance "
            f"(mean Jaccard {s['mean_jaccard']:.3f}, chance {s['mean_chance']:.3f})"
        )
        return "\n".join(lines)

    def report(self, model=None):
        """The claims and key numbers first, then RQ1 per language and the cross-language comparison."""
        labels = {f"{g}_semantic_share_{t}": f"{g}: semantic share of labelled keys, {third} third of the layers"
                  for g in self.languages for t, third in (("early", "first"), ("late", "last"))}
        labels.update(cross_mean_jaccard="keys a concept selects in two languages: mean Jaccard overlap",
                      cross_mean_chance="the same for layer-matched random keys (chance)")
        r = self.open_report(f"FF memories in {', '.join(self.languages)} on {self.model}", labels=labels)
        r.section("RQ1 per language", text=PAPER)
        r.table(
            [
                {"language": g, "third": t, "semantic share (95% CI)": iv.format(3), "labelled keys": iv.n}
                for g, d in self.rq1.items()
                for t, iv in d.items()
            ],
            caption="Semantic share of labelled keys per third of the layers; the interval resamples the keys",
        )
        r.line_chart(
            list(range(len(next(iter(self.distributions.values()))))),
            {g: d["semantic_share"].fillna(0).tolist() for g, d in self.distributions.items()},
            title="Semantic share of labelled keys by layer", x_title="layer", y_title="semantic share",
        )
        r.section(
            "The same keys in every language?",
            text="Per shared concept and pair of languages: Jaccard overlap of the selected keys, beside the overlap "
            f"of random key sets with the same number of keys per layer ({self.comparison.n_draws} draws).",
        )
        r.table(self.comparison.to_dataframe(), caption="Keys a concept selects, compared across languages")
        return self.close_report(r)


COMMAND = "codecircuits languages"
CLAIMS = claim_specs(
    COMMAND,
    rq1=("{language}: the semantic share of labelled keys rises from the first to the last third of the layers",
         "reproduced: the last third's interval lies above the first third's; partly: its estimate is higher",
         "lower layers shallow, higher layers more semantic, in each language", "Haider et al. 2024, RQ1"),
    cross=("a concept selects the same keys in every language (overlap above layer-matched chance)",
           "reproduced: at least half the concept-language pairs lie above their chance range and the mean Jaccard "
           "excess over chance lies above 0; partly: more than a tenth do, or the excess is above 0"),
)


def _scan_language(model, cfg: LanguagesConfig, spec: str, chunked, scans_dir: Path, progress: bool, workers):
    """The scan of one language's ``chunked`` corpus (resuming its checkpoint under ``scans_dir``)."""
    tag = str(spec).replace(":", "_").replace("/", "_")
    plan = "" if cfg.order == "breadth" else f"_{cfg.order}{cfg.seed}"
    ck = scans_dir / f"{tag}_{cfg.max_tokens or 'all'}_w{cfg.window}_k{cfg.k}{plan}.safetensors"
    return distributed.run(
        mem.scan, model, chunked, k=cfg.k, batch_size=cfg.batch_size, checkpoint=ck, resume=ck.exists(),
        progress=progress, workers=workers,
    )


def run(
    model, config: LanguagesConfig | None = None, *, out_dir=None, progress: bool = True, workers=None, **overrides
):
    """Scan each language's corpus (resuming its checkpoint), score it, and compare the languages.

    The checkpoints go to ``config.scans``, else to ``out_dir/scans``. ``workers`` shards each scan over Ray
    workers (:mod:`codecircuits.distributed`); the result is the same.
    """
    cfg = configure(LanguagesConfig, config, overrides)
    if len(cfg.corpora) < 2:
        raise InputError(f"Give at least two corpora (one per language); got {list(cfg.corpora)}.")
    scans_dir = Path(cfg.scans).expanduser() if cfg.scans else Path(out_dir or ".") / "scans"
    scans_dir.mkdir(parents=True, exist_ok=True)
    scores, dists, rq1, tokens, corpora, timings = {}, {}, {}, {}, {}, {}
    for spec in cfg.corpora:
        t0 = time.perf_counter()
        chunked = mem.chunk_corpus(
            model, spec, window=cfg.window, max_tokens=cfg.max_tokens, order=cfg.order, seed=cfg.seed
        )
        lang = corpus_language(chunked.names)
        if lang in scores:
            raise InputError(f"Two corpora are in {lang}; give one corpus per language.")
        scan = _scan_language(model, cfg, spec, chunked, scans_dir, progress, workers)
        scores[lang] = sc = cc.key_scores(scan, chunked, cc.catalogue(language=lang))
        dists[lang] = sc.layer_distribution(tau=cfg.tau, min_lift=cfg.min_lift)
        rq1[lang] = sc.semantic_share_by_depth(tau=cfg.tau, min_lift=cfg.min_lift)
        tokens[lang] = scan.tokens_done
        corpora[lang] = str(spec)
        timings[f"{lang}_s"] = round(time.perf_counter() - t0, 1)
    comparison = compare_languages(scores, tau=cfg.tau, min_lift=cfg.min_lift, n_draws=cfg.n_draws)
    return LanguagesStudy(
        model=model_name(model), languages=tuple(scores), corpora=corpora, tokens=tokens, distributions=dists, rq1=rq1,
        comparison=comparison, timings=timings, config=cfg,
    )


__all__ = ["LanguagesConfig", "LanguagesStudy", "run"]
