"""The layers of ``codecircuits``, lowest first: a module imports only modules of its own layer or of a layer
below it, and no two modules import each other, directly or round a longer loop. ``tests/test_layering.py``
parses every module (imports at module level and inside functions) and fails on an import cycle, on an upward
import, on a private name imported across modules, and on a module that no layer names, so a new module is placed
here when it is written. ``docs/architecture.md`` quotes this table.

Each layer lists module paths relative to the package; a path covers the module and, for a package, everything
in it, and the longest path that matches a module decides its layer (``"core.batching"`` before ``"core"``).
``""`` is the package's own ``__init__``.

Where a module sits, and why:

- ``base``: the error classes, this table, ``_moved.py`` (the table of moved names behind the shims) and
  ``figures/`` (the SVG figures every result's ``plot()`` returns and the reports embed); they import nothing of
  the package above them.
- ``models``: loading and describing models (``models/``), with the package ``__init__``, which re-exports
  ``load_model``, ``describe`` and the errors (the report reads its ``__version__``).
- ``tokens``: the token conversions of the core, ``core/batching.py`` (prompts to tokens, clean/corrupted pairs,
  prompts by length, pad and BOS ids, memory budgets, progress bars) and ``core/inputs.py`` (single-token labels,
  hook-name checks, token texts). They need only ``errors``, and a task needs them to turn its prompts into tokens
  and its labels into ids, so they sit below the tasks, at the bottom of the core.
- ``data``: corpora and tasks: ``corpus.py``, ``debian_sources.py`` (fetching; ``corpus`` reads what it fetched),
  ``tasks/`` (prompts, labels, counterfactual pairs, and each task's own accuracy: a plain forward pass), and the
  memories study's corpus chunking (``memories/chunks.py``: documents cut into token windows).
- ``core``: sites, interventions, the runner, metrics and result merging: the one vocabulary every method speaks.
- ``methods``: everything a notebook calls: patching, ablation, attribution, lens, heads, CNA, neurons, memories,
  repair, subspace, signatures, circuits, confidence intervals, the held-out loss and paren accuracy
  (``quality.py``), training, the tracr models, the tiny-model helpers of ``testing.py`` and the 7B-shaped
  random models of ``shapes.py``.
- ``distributed``: runs methods on shards over Ray workers and merges what they return; no method imports it.
- ``report``: HTML reports and views; ``report/prompt.py`` draws lens results, so it sits above the methods.
- ``studies``: one paper's protocol each, composed of methods and reported with ``report``.
- ``commands``: the command line (``cli.py``, ``__main__.py``, ``commands/``): a study's config as options.
- ``shims``: the old module names kept for users (``metrics``, ``inputs``, ``concepts``, ``agreement``,
  ``evaluation``, ``neurons.evaluation``, ``circuits.evaluation``); they re-export where the code went, and since
  nothing may import a higher layer, the library never imports them.
"""

LAYERS: dict[str, tuple[str, ...]] = {
    "base": ("errors", "layers", "_moved", "figures"),
    "models": ("models", ""),
    "tokens": ("core.batching", "core.inputs"),
    "data": ("corpus", "debian_sources", "tasks", "memories.chunks"),
    "core": ("core",),
    "methods": (
        "patching",
        "ablation",
        "attribution",
        "lens",
        "heads",
        "cna",
        "neurons",
        "memories",
        "repair",
        "subspace",
        "signatures",
        "circuits",
        "intervals",
        "quality",
        "training",
        "tracr_models",
        "testing",
        "shapes",
        "transcoders",
        "graphs",
    ),
    "distributed": ("distributed",),
    "report": ("report",),
    "studies": ("studies",),
    "commands": ("cli", "__main__", "commands"),
    "shims": (
        "metrics",
        "inputs",
        "concepts",
        "agreement",
        "evaluation",
        "neurons.evaluation",
        "circuits.evaluation",
    ),
}
