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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import concepts as cc
from .. import intervals
from .. import memories as mem
from ..errors import InputError
from ..memories.crosslang import CrossLanguage, compare_languages
from ..memories.languages import corpus_language
from .common import Study, configure, json_safe, model_name, setting, write_study

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
        None, "directory of the per-language scan checkpoints, reused and resumed (none: OUT/scans)", cli=False
    )


@dataclass(frozen=True)
class LanguagesStudy(Study):
    model: str
    languages: tuple[str, ...]
    corpora: dict
    tokens: dict
    distributions: dict = field(repr=False)  # language -> per-layer shallow / semantic DataFrame
    rq1: dict = field(default_factory=dict)  # language -> third -> Interval of the semantic share
    comparison: CrossLanguage | None = None
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
        out = []
        for g in self.languages:
            e, late = self.rq1[g]["early"], self.rq1[g]["late"]
            rise = late.low > e.high
            out.append(
                intervals.Claim(
                    f"{g}: the semantic share of labelled keys rises from the first to the last third of the layers",
                    intervals.verdict(rise, partly=late.estimate > e.estimate),
                    evidence=late,
                    control=e,
                    detail="measured: last third; control: first third",
                    command="codecircuits languages",
                )
            )
        s = self.comparison.summary()
        share = s["above_chance"] / s["concept_pairs"] if s["concept_pairs"] else 0.0
        df = self.comparison.shared_pairs()
        if len(df):  # intervals over the concept-language pairs with keys in both languages
            jac, chance = df["jaccard"].to_numpy(dtype=float), df["chance_mean"].to_numpy(dtype=float)
            evidence, control = intervals.mean(jac), intervals.mean(chance)
            excess = intervals.paired(lambda a, b: (a - b).mean(), jac, chance)
            detail = (
                f"{s['above_chance']} of {s['concept_pairs']} concept-language pairs above the 95% chance range; "
                f"mean Jaccard excess over chance {excess.format(3)}"
            )
        else:
            evidence = control = excess = None
            detail = "no concept has keys in two languages"
        above = excess is not None and excess.low > 0
        out.append(
            intervals.Claim(
                "a concept selects the same keys in every language (overlap above layer-matched chance)",
                intervals.verdict(share >= 0.5 and above, partly=share > 0.1 or above),
                evidence=evidence,
                control=control,
                detail=detail + "; measured: mean Jaccard of the pairs; control: mean of layer-matched random sets",
                command="codecircuits languages",
            )
        )
        return out

    def to_json(self) -> dict:
        return json_safe(
            {
                "model": self.model,
                "paper": PAPER,
                "languages": list(self.languages),
                "corpora": self.corpora,
                "tokens": self.tokens,
                "metrics": self.metrics(),
                "rq1": {g: {t: iv.to_json() for t, iv in d.items()} for g, d in self.rq1.items()},
                "layer_distribution": {g: d.to_dict(orient="records") for g, d in self.distributions.items()},
                "cross_language": self.comparison.to_dataframe().to_dict(orient="records"),
                "claims": [c.to_json() for c in self.claims()],
                "timings": self.timings,
                "config": None if self.config is None else asdict(self.config),
            }
        )

    def report(self):
        from ..report import Report

        r = Report(f"FF memories in {', '.join(self.languages)} on {self.model}")
        r.metrics(json_safe(self.metrics()))
        r.claims(self.claims())
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
            title="Semantic share of labelled keys by layer",
            x_title="layer",
            y_title="semantic share",
        )
        r.section(
            "The same keys in every language?",
            text="Per shared concept and pair of languages: Jaccard overlap of the selected keys, beside the overlap "
            f"of random key sets with the same number of keys per layer ({self.comparison.n_draws} draws).",
        )
        r.table(self.comparison.to_dataframe(), caption="Keys a concept selects, compared across languages")
        r.data(self.to_json())
        return r

    def save(self, out_dir) -> tuple[Path, Path]:
        return write_study(out_dir, self.to_json(), self.report)


def run(
    model, config: LanguagesConfig | None = None, *, out_dir=None, progress: bool = True, workers=None, **overrides
):
    """Scan each language's corpus (resuming its checkpoint), score it, and compare the languages.

    ``workers`` shards each scan over Ray workers (:mod:`codecircuits.distributed`); the result is the same.
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
        tag = str(spec).replace(":", "_").replace("/", "_")
        plan = "" if cfg.order == "breadth" else f"_{cfg.order}{cfg.seed}"
        ck = scans_dir / f"{tag}_{cfg.max_tokens or 'all'}_w{cfg.window}_k{cfg.k}{plan}.safetensors"
        scan = mem.scan(
            model, chunked, k=cfg.k, batch_size=cfg.batch_size, checkpoint=ck, resume=ck.exists(), progress=progress,
            workers=workers,
        )
        sc = cc.key_scores(scan, chunked, cc.catalogue(language=lang))
        scores[lang] = sc
        dists[lang] = sc.layer_distribution(tau=cfg.tau, min_lift=cfg.min_lift)
        rq1[lang] = sc.semantic_share_by_depth(tau=cfg.tau, min_lift=cfg.min_lift)
        tokens[lang] = scan.tokens_done
        corpora[lang] = str(spec)
        timings[f"{lang}_s"] = round(time.perf_counter() - t0, 1)
    comparison = compare_languages(scores, tau=cfg.tau, min_lift=cfg.min_lift, n_draws=cfg.n_draws)
    return LanguagesStudy(
        model=model_name(model),
        languages=tuple(scores),
        corpora=corpora,
        tokens=tokens,
        distributions=dists,
        rq1=rq1,
        comparison=comparison,
        timings=timings,
        config=cfg,
    )


__all__ = ["LanguagesConfig", "LanguagesStudy", "run"]
