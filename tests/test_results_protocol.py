"""Every result of a method speaks one protocol: ``to_dataframe()``, ``top(k=10)`` (the ``k`` rows with the largest
score, largest first) and ``plot()`` (a :class:`codecircuits.figures.Figure`).

(1) By introspection: every class of a methods-layer module (``codecircuits/layers.py``) that defines
``to_dataframe`` also has ``top`` and ``plot``, and ``top``'s ``k`` defaults to 10. (2) On real results of a tiny
model: ``top(3)`` has 3 rows, largest first, and ``plot()`` returns a Figure whose SVG parses as XML.
"""

from __future__ import annotations

import importlib
import inspect
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import codecircuits
from codecircuits.figures import Figure
from codecircuits.layers import LAYERS

PACKAGE = Path(codecircuits.__file__).resolve().parent

#: classes with ``to_dataframe`` that are inputs, not results (like the tasks' datasets), so they rank nothing
NOT_RESULTS = {
    "codecircuits.subspace.pairs.PatchPairs": "counterfactual prompt pairs: the input of DAS and the patches",
}


def _layer(module: str) -> str | None:
    """The layer of a dotted module name: the longest path of ``LAYERS`` that covers it."""
    rel = module.removeprefix("codecircuits").removeprefix(".")
    best, length = None, -1
    for layer, paths in LAYERS.items():
        for p in paths:
            covers = rel == p or (p and rel.startswith(p + ".")) or (p == "" and rel == "")
            if covers and len(p) > length:
                best, length = layer, len(p)
    return best


def _method_modules() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if _layer(name) == "methods" and not name.startswith("codecircuits.tasks"):
            out.append(name)
    return out


def _result_classes() -> list[type]:
    found = {}
    for name in _method_modules():
        mod = importlib.import_module(name)
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ == name and hasattr(cls, "to_dataframe"):
                found[f"{name}.{cls.__qualname__}"] = cls
    return [cls for key, cls in sorted(found.items()) if key not in NOT_RESULTS]


def test_the_methods_layer_is_found():
    mods = _method_modules()
    assert {"codecircuits.cna", "codecircuits.heads", "codecircuits.neurons.results", "codecircuits.lens"} <= set(mods)
    assert not any(m.startswith(("codecircuits.studies", "codecircuits.report", "codecircuits.tasks")) for m in mods)
    assert len(_result_classes()) >= 30


@pytest.mark.parametrize("cls", _result_classes(), ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_result_has_the_protocol(cls):
    assert callable(getattr(cls, "top", None)), f"{cls.__qualname__} has to_dataframe but no top"
    assert callable(getattr(cls, "plot", None)), f"{cls.__qualname__} has to_dataframe but no plot"
    params = inspect.signature(cls.top).parameters
    assert list(params)[:2] == ["self", "k"], f"{cls.__qualname__}.top's first argument is not k"
    assert params["k"].default == 10, f"{cls.__qualname__}.top(k={params['k'].default}): the default is 10"
    assert cls.top.__doc__, f"{cls.__qualname__}.top says nothing of what it ranks by"


# ------------------------------------------------------------------------------------------------------------
# behaviour, on real results of a tiny model

PROMPTS = ["def f(x):\n    return (x", "print(str(str(12", "x = [i * 2 for i"]
TEXTS = [
    "import os\n\n\ndef read(path):\n    with open(path) as f:\n        return f.read()\n",
    "for i in range(10):\n    total = total + i * 2\n    print('i is', i)\n",
    "try:\n    value = int(text)\nexcept ValueError:\n    value = None\n",
]


@pytest.fixture(scope="module")
def model():
    from codecircuits.testing import tiny_model

    return tiny_model("llama")


def _non_increasing(values) -> bool:
    v = [float(x) for x in values]
    return all(a >= b for a, b in zip(v, v[1:]))


def _check(result, column: str, *, absolute: bool = False, **plot_kw) -> None:
    top = result.top(3)
    assert len(top) == 3
    key = top[column].abs() if absolute else top[column]
    assert _non_increasing(key), f"{type(result).__name__}.top(3) is not largest first: {top[column].tolist()}"
    default = result.top()
    assert 3 <= len(default) <= 10 and default[column].tolist()[:3] == top[column].tolist()
    fig = result.plot(**plot_kw)
    assert isinstance(fig, Figure)
    root = ET.fromstring(fig.to_svg())
    assert root.tag.endswith("svg")


def _rows_of_the_table(result, column: str, *, absolute: bool = False) -> None:
    """``top(3)`` is the first three rows of ``to_dataframe()`` sorted by ``column`` (stable, largest first)."""
    df = result.to_dataframe()
    key = df[column].abs() if absolute else df[column]
    want = df.loc[key.sort_values(ascending=False, kind="stable").index[:3]]
    got = result.top(3)
    assert got[column].tolist() == want[column].tolist()
    assert list(got.columns) == list(df.columns)


def test_head_sweep_and_cna(model):
    from codecircuits import cna

    sweep = cna.head_sweep(model, PROMPTS, progress=False)
    _check(sweep, "accuracy_drop")
    top = sweep.top(sweep.accuracy.numel())
    pairs = list(zip(top.accuracy_drop, top.logprob_drop))
    assert pairs == sorted(pairs, reverse=True)  # ties in accuracy broken by the log-probability drop
    res = cna.compare(model, PROMPTS, (0, 0), progress=False)
    _check(res, "cna")


def test_neuron_and_head_attributions(model):
    from codecircuits import neurons

    ffn = neurons.ffn_neurons(model, PROMPTS, progress=False)
    _check(ffn, "logprob_increase")
    hd = neurons.heads(model, PROMPTS, progress=False)
    _check(hd, "logprob_increase")


def test_paren_heads(model):
    from codecircuits import heads
    from codecircuits.tasks import parens

    ds = parens.dataset(model, n_numbers=4, split=None)
    groups = [(t, k) for k, (_, t) in ds.groups(model).items()]
    found = heads.find_paren_heads(model, groups, [ds.label_ids[k] for _, k in groups])
    _check(found.promoters, "f1")
    _check(found.counting, "score", absolute=True)
    _rows_of_the_table(found.counting, "score", absolute=True)
    assert isinstance(found.promoters.plot(groups[0][1]), Figure)


def test_memories_scan_and_agreement(model):
    from codecircuits import memories as mem
    from codecircuits.memories import agreement

    ch = mem.chunk_corpus(model, TEXTS, window=24, max_chunks=5)
    scan = mem.scan(model, ch, k=3, batch_size=4, progress=False)
    _check(scan, "coefficient", absolute=scan.settings.get("rank_by") == "abs")
    ag = agreement.layer_agreement(model, ch, batch_size=3, progress=False)
    top = ag.top(2, component="resid_post")
    assert len(top) == 2 and _non_increasing(top["agreement"]) and set(top["bucket"]) == {"all"}
    assert isinstance(ag.plot(), Figure) and ET.fromstring(ag.plot().to_svg()) is not None


def test_patching_sweep(model):
    from codecircuits import patching
    from codecircuits.testing import PAIR_CLEAN, PAIR_CORRUPTED, toy_metric

    clean, corrupted = model.to_tokens(list(PAIR_CLEAN)), model.to_tokens(list(PAIR_CORRUPTED))
    res = patching.sweep(model, clean, corrupted, toy_metric, site="resid_pre", progress=False)
    _check(res, "recovery", absolute=True)
    _rows_of_the_table(res, "recovery", absolute=True)


def test_task_vector_and_top_neuron_eval(model):
    from codecircuits import neurons, signatures

    names = list(signatures.block_params(model, range(model.cfg.n_layers), "mlp"))[:4]
    base = signatures.snapshot(model, names)
    moved = {n: t + torch.randn(t.shape, generator=torch.Generator().manual_seed(i)) * (i + 1)
             for i, (n, t) in enumerate(base.items())}
    tv = signatures.task_vector(moved, base)
    _check(tv, "norm")
    _rows_of_the_table(tv, "norm")
    attr = neurons.ffn_neurons(model, PROMPTS, progress=False)
    ev = neurons.evaluate_top_neurons(model, PROMPTS, attr, k=3, progress=False)
    top = ev.top()
    assert "original" not in set(top["method"]) and _non_increasing(top["mrr_drop_pct"])
    assert isinstance(ev.plot(), Figure)
