"""Modules and names that moved, and the deprecation warnings that say where they went.

The old modules of :data:`MOVED` (``codecircuits.metrics``, ``.inputs``, ``.concepts``, ``.agreement``,
``.evaluation``, ``.circuits.evaluation``, ``.neurons.evaluation``) are thin aliases kept so that code written
against them still runs: importing one warns once with its new home(s), and each name read through it warns with
that name's new home and gives the very object that lives there. :data:`RENAMED` lists the names that left a
module that still exists; the module's ``__getattr__`` (:func:`package_getattr`) warns and gives the new object.
Nothing inside the package uses them (``tests/test_api.py`` checks that), so they can be deleted in a later
release. This module imports only the standard library, so ``import codecircuits`` stays cheap.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

_BATCHING = "codecircuits.core.batching"
_INPUTS = "codecircuits.core.inputs"
_METRICS = "codecircuits.core.metrics"
_CONCEPTS = "codecircuits.memories.concepts"
_AGREEMENT = "codecircuits.memories.agreement"
_QUALITY = "codecircuits.quality"
_FAITHFULNESS = "codecircuits.circuits.faithfulness"
_KNOCKOUT = "codecircuits.neurons.knockout"


def _names(names: str, home: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), home)


#: old module -> {public name it gave: the module where that name lives now}
MOVED: dict[str, dict[str, str]] = {
    "codecircuits.metrics": _names(
        "Metric Metrics RowwiseMetric as_named check_output evaluate metric_positions per_cell per_cell_named rowwise",
        _METRICS,
    ),
    "codecircuits.inputs": {
        **_names("check_hook_names single_token_id token_texts", _INPUTS),
        **_names("bos_id check_pair_lengths pad_id paired_tokens to_tokens", _BATCHING),
    },
    "codecircuits.concepts": _names(
        "CATALOGUE CODE KINDS REGIONS SCOPES Concept ConceptEdit ConceptMasks ConceptScores TokenEval catalogue "
        "chunk_flat_tokens concept_positions doc_masks edit_concept edit_table evaluate get key_scores mask_hooks "
        "random_keys resolve_concepts token_masks",
        _CONCEPTS,
    ),
    "codecircuits.agreement": _names(
        "COMPONENTS LayerAgreement balanced_agreement default_edges layer_agreement", _AGREEMENT
    ),
    "codecircuits.evaluation": _names(
        "LOGITS_BUDGET CorpusLoss EvalResult bos_setting corpus_loss evaluate paren_accuracy", _QUALITY
    ),
    "codecircuits.circuits.evaluation": _names(
        "ABLATIONS MIB_PERCENTAGES FaithfulnessCurve areas circuit_metric cmd cpr edge_auroc exact_edge_scores "
        "faithfulness_curves reference_sources",
        _FAITHFULNESS,
    ),
    "codecircuits.neurons.evaluation": _names(
        "TopNeuronEval attention_neuron_mask_hooks evaluate_top_attention_neurons evaluate_top_neurons "
        "neuron_mask_hooks",
        _KNOCKOUT,
    ),
}

#: module that still exists -> {name it no longer has: "new.module:new_name"}
RENAMED: dict[str, dict[str, str]] = {
    "codecircuits.neurons": {"head_zero_hooks": "codecircuits.ablation:ablation_hooks"},
}


def homes(old: str) -> list[str]:
    """The new home(s) of the old module ``old``, in the order its names first appear in :data:`MOVED`."""
    return list(dict.fromkeys(MOVED[old].values()))


_HERE = os.path.dirname(os.path.abspath(__file__))
_ALIASES = {os.path.join(_HERE, "__init__.py"), os.path.abspath(__file__)} | {
    os.path.join(_HERE, *old.split(".")[1:]) + ".py" for old in MOVED
}
_IMPORTLIB = os.path.dirname(os.path.abspath(importlib.__file__))


def _caller_stacklevel() -> int:
    """The ``stacklevel`` (counted from the function that calls ``warnings.warn``) of the user's frame: the first
    frame that is neither import machinery nor this package's alias code, so the warning points at the user's line."""
    frame, level = sys._getframe(2), 2  # frame 0 is this function, 1 the function that will call warnings.warn
    while frame is not None:
        name = frame.f_code.co_filename
        if "importlib" in name and "_bootstrap" in name:
            frame = frame.f_back  # warnings.warn skips importlib's bootstrap frames when it counts, so do we
            continue
        ours = not name.startswith("<") and os.path.abspath(name) in _ALIASES
        if not (ours or os.path.dirname(os.path.abspath(name)) == _IMPORTLIB):
            return level
        frame, level = frame.f_back, level + 1
    return 1


def _warn(message: str) -> None:
    warnings.warn(message, DeprecationWarning, stacklevel=_caller_stacklevel())


def alias_module(old: str):
    """Make the module named ``old`` a deprecated alias: warn now (its import), and return the ``__getattr__``,
    ``__dir__`` and ``__all__`` the alias module binds, which forward each moved name to its new home."""
    table = MOVED[old]
    if len(homes(old)) == 1:
        where = f"from {homes(old)[0]}"
    else:
        where = " and ".join(
            f"{', '.join(n for n, h in table.items() if h == home)} from {home}" for home in homes(old)
        )
    _warn(f"{old} is deprecated and will be removed in a future release; import {where} instead.")

    def __getattr__(name: str):
        home = table.get(name)
        if home is None:
            raise AttributeError(
                f"module {old!r} has no attribute {name!r}; {old} is a deprecated alias of {', '.join(homes(old))}, "
                "look there."
            )
        _warn(f"{old}.{name} moved to {home}.{name}; import it from {home} ({old} will be removed).")
        return getattr(importlib.import_module(home), name)

    def __dir__() -> list[str]:
        return sorted(table)

    return __getattr__, __dir__, sorted(table)


def package_getattr(package: str):
    """The module ``__getattr__`` of ``package``: an old submodule of :data:`MOVED` imports its alias (which
    warns), a name of :data:`RENAMED` warns and gives the object at its new home."""

    def __getattr__(name: str):
        old = f"{package}.{name}"
        if old in MOVED:
            return importlib.import_module(old)
        if name in RENAMED.get(package, {}):
            home, new = RENAMED[package][name].split(":")
            _warn(f"{old} is deprecated and will be removed; use {home}.{new} instead (the same call).")
            return getattr(importlib.import_module(home), new)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
