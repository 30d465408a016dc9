"""The studies, registered once: what the command line, the verdict tables and the smoke tests read.

Each :class:`StudySpec` names a study module of this package (which holds its ``Config`` dataclass and
``run(model, config=None, *, progress=True, **overrides)``), the paper it reproduces, its findings page and
what its command needs beyond the config (a checkpoint file, Ray workers, an output directory for its scans).
``codecircuits <name>`` is generated from it (:mod:`codecircuits.commands.studies`), with one option per config
setting; ``scripts/verdict_tables.py`` prints every study's verdict table from its ``results.json``;
``tests/test_studies.py`` runs each study at its ``smoke`` settings on a tiny random model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType

from ..errors import InputError
from ..models import DEFAULT_MODEL


@dataclass(frozen=True)
class StudySpec:
    """One study: its command, its paper and what its command needs.

    Attributes:
        name: the command and the module (``codecircuits.studies.<name>``).
        config: the name of the module's config dataclass.
        help: the command's one-line help.
        paper: the paper it reproduces.
        findings: the page of its findings.
        model: the model its command runs by default.
        threads: the command's default torch threads (``None``: torch's choice).
        workers: the command takes ``--workers`` / ``--ray`` (the study shards jobs with ``workers=``).
        checkpoint: the file, inside the output directory, its long job checkpoints to (``--checkpoint``,
            ``--resume``), or ``None``.
        out_dir: the study writes files of its own into the output directory (``run(..., out_dir=OUT)``).
        smoke: settings of a run on a tiny random model (seconds), for the smoke tests.
    """

    name: str
    config: str
    help: str
    paper: str
    findings: str
    model: str = DEFAULT_MODEL
    threads: int | None = None
    workers: bool = False
    checkpoint: str | None = None
    out_dir: bool = False
    smoke: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"{__package__}.{self.name}")

    @property
    def config_class(self) -> type:
        return getattr(self.module, self.config)

    def run(self, model, config=None, **kwargs):
        """The study's ``run`` (looked up at the call, so a test may replace it)."""
        return self.module.run(model, config, **kwargs)


def _spec(name, config, help, paper, findings, smoke=None, **kw) -> StudySpec:
    return StudySpec(name, config, help, paper, findings, smoke=MappingProxyType(dict(smoke or {})), **kw)


STUDIES: tuple[StudySpec, ...] = (
    _spec(
        "parens", "ParensConfig", "run the closing-parenthesis study and write report.html + results.json",
        "Miller, Rai and Yao (2025), closing-parenthesis completion", "docs/findings_parens.md",
        smoke={"n_numbers": 20, "selection_prompts_per_n": 4, "prompts_per_n": 4, "pairs_per_n": 2,
               "paren_patch_stride": 1, "patch_stride": 1, "counting_prompts_per_cell": 1,
               "counting_selection_per_cell": 1, "counting_closed": (0, 2), "n_candidates": 3, "ablate_top_k": 1,
               "n_random": 2, "scale_top_k": (2,), "scale_factors": (1.5,), "general_factors": (1.5,),
               "general_shares": (1.0,), "general_min_f1": 0.3, "n_resamples": 100, "mined_per_count": 3,
               "mined_window": 8, "mined_max_chars": 60_000},
    ),
    _spec(
        "circuit", "CircuitConfig",
        "find the closing-paren circuit by edge attribution, measure its faithfulness, write report.html + results.json",
        "edge attribution (EAP-IG) with MIB's circuit metrics", "docs/circuits.md", workers=True,
        smoke={"n_pairs": 3, "n_test_pairs": 3, "steps": 2, "n_random": 2, "n_bootstrap": 200, "head_prompts": 3,
               "top_heads": 3, "n_numbers": 20, "percentages": (1.0, 5.0, 10.0, 50.0, 100.0),
               "drawn": (5.0, 10.0, 50.0)},
    ),
    _spec(
        "cna", "CNAConfig",
        "arithmetic heads, comparative neuron analysis and neuron attribution (Yu & Ananiadou) with intervals",
        "Yu and Ananiadou (2024), neuron attribution and comparative neuron analysis", "docs/findings_cna.md",
        workers=True,
        smoke={"n_sweep": 4, "n_cna": 2, "n_top10": 2, "top10_layers": None, "paren_n_values": (0, 1),
               "paren_numbers": 2, "ns": (2, 3)},
    ),
    _spec(
        "subspace", "SubspaceConfig",
        "learn 1-D patching subspaces by DAS, run the illusion checks, write report.html + results.json",
        "Makelov et al. (2023), subspace activation patching and its illusion", "docs/findings_subspace.md",
        threads=1,
        smoke={"train_pairs": 6, "test_pairs": 4, "template_pairs": 2, "sweep_pairs": 4, "epochs": 1, "seeds": (0,),
               "only_correct": False},
    ),
    _spec(
        "memories", "MemoriesConfig",
        "FF key-value memories: trigger examples, concept keys, masking edits, layer agreement by context size",
        "Haider et al. (2024), feed-forward layers as key-value memories", "docs/findings_memories.md",
        workers=True, checkpoint="scan.safetensors",
        smoke={"max_tokens": 150, "window": 24, "k": 3, "tau": 0.3, "min_lift": 1.0, "edit": ("indentation",),
               "edit_tokens": 60, "agreement_docs": 2, "agreement_context": 16, "edit_controls": 2, "kv_keys": 16},
    ),
    _spec(
        "languages", "LanguagesConfig",
        "FF memories in Python, Java and Go: RQ1 per language and whether a concept selects the same keys in each",
        "Haider et al. (2024), across languages", "docs/findings_memories.md", workers=True, out_dir=True,
        smoke={"max_tokens": 200, "window": 24, "k": 3, "n_draws": 20},
    ),
    _spec(
        "repair", "RepairConfig",
        "repair wrong line completions by editing a few neurons' value vectors (MINT) vs SGD; writes a report",
        "Gu et al., neuron-level repair (MINT)", "docs/findings_repair.md", checkpoint="progress.json",
        smoke={"n_cases": 2, "n_select": 1, "sources": ("humaneval",), "max_errors": 64, "context_tokens": 24,
               "n_candidates": 2, "max_edits": 1, "sgd_lrs": (1e-2,), "sgd_steps": (1, 2), "n_gen": 2,
               "heldout_tokens": 64, "n_resamples": 50},
    ),
    _spec(
        "signatures", "SignatureConfig",
        "weight signatures of code shifts patched into the clean fine-tune, with transfer, controls and intervals",
        "Cai et al. (ICML 2023), robust weight signatures", "docs/findings_signatures.md",
        model="cc-py-neox",  # 27 fine-tunes of smollm2 do not fit 10 minutes on a CPU
        smoke={"shifts": ("tabs", "rename"), "steps": 2, "batch_size": 2, "seq_len": 32, "train_chunks": 6,
               "eval_docs": 4, "eval_tokens": 32, "alphas": (0.5, 1.0), "seeds": (0,), "backbone_steps": 1,
               "n_resamples": 50},
    ),
)


def get(name: str) -> StudySpec:
    """The study called ``name``."""
    for spec in STUDIES:
        if spec.name == name:
            return spec
    raise InputError(f"No study {name!r}; the studies are {', '.join(s.name for s in STUDIES)}.")


__all__ = ["STUDIES", "StudySpec", "get"]
