"""The public API a notebook user meets: ``import codecircuits as cc`` is cheap and gives the methods as lazily
loaded submodules; the old module names that moved still work but warn with their new home, and the library itself
never imports them."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import codecircuits as cc
from codecircuits._moved import MOVED, RENAMED, homes

PACKAGE = Path(cc.__file__).parent
REPO = PACKAGE.parent
SUBMODULES = [n for n in cc.__all__ if (PACKAGE / n).is_dir() or (PACKAGE / f"{n}.py").is_file()]
# every deprecated alias module: the library imports none of them
ALIASES = set(MOVED)


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning:__main__", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


# ---------------------------------------------------------------------------------------------------------------
# import codecircuits as cc


def test_import_is_cheap_and_submodules_load_on_first_use():
    out = _python(
        f"""
        import sys
        import codecircuits as cc
        lazy = {SUBMODULES!r}
        loaded = sorted(n for n in lazy if n != "models" and "codecircuits." + n in sys.modules)
        assert not loaded, f"import codecircuits imported {{loaded}}"
        assert "ray" not in sys.modules, "import codecircuits imported ray"
        assert not [m for m in sys.modules if m in {sorted(ALIASES)!r}], "a deprecated alias was imported"
        assert callable(cc.patching.sweep)
        assert sys.modules["codecircuits.patching"] is cc.patching
        assert "ray" not in sys.modules, "codecircuits.patching imported ray"
        assert callable(cc.circuits.edge_scores)
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_submodules_are_listed_and_resolve():
    assert set(SUBMODULES) >= {"patching", "ablation", "circuits", "core", "memories", "studies", "distributed"}
    names = set(dir(cc))
    for name in SUBMODULES:
        assert name in names, name
        module = getattr(cc, name)
        assert module is sys.modules[f"codecircuits.{name}"]
        assert module is importlib.import_module(f"codecircuits.{name}")
    for name in ("load_model", "describe", "DEFAULT_MODEL", "REGISTRY", "InputError", "CodeCircuitsError"):
        assert name in cc.__all__ and name in names and hasattr(cc, name)
    assert not set(dir(cc)) & {n.split(".")[1] for n in MOVED if n.count(".") == 1}, "dir() advertises an alias"


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        cc.nonexistent  # noqa: B018
    assert not hasattr(cc, "nonexistent")


def test_core_exports_the_input_checks():
    from codecircuits import core
    from codecircuits.core import batching, inputs

    for name in ("single_token_id", "check_hook_names", "token_texts"):
        assert getattr(core, name) is getattr(inputs, name) and name in core.__all__
    for name in ("to_tokens", "paired_tokens", "check_pair_lengths", "bos_id", "pad_id"):
        assert getattr(core, name) is getattr(batching, name) and name in core.__all__


# ---------------------------------------------------------------------------------------------------------------
# the old module names: deprecated aliases


def _fresh(monkeypatch, old: str) -> None:
    """Forget the alias module, so that importing it runs (and warns) again."""
    parent, short = old.rsplit(".", 1)
    if short in vars(importlib.import_module(parent)):  # (hasattr would import the alias through __getattr__)
        monkeypatch.delattr(importlib.import_module(parent), short)
    monkeypatch.delitem(sys.modules, old, raising=False)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_warns_with_its_new_home_and_gives_the_same_objects(monkeypatch, old):
    _fresh(monkeypatch, old)
    with pytest.warns(DeprecationWarning, match=re.escape(f"{old} is deprecated")) as record:
        module = importlib.import_module(old)
    message = str(record[0].message)
    for home in homes(old):
        assert home in message
    assert set(dir(module)) == set(module.__all__) == set(MOVED[old])
    for name, home in MOVED[old].items():
        with pytest.warns(DeprecationWarning, match=re.escape(f"{old}.{name} moved to {home}.{name}")) as record:
            obj = getattr(module, name)
        assert obj is getattr(importlib.import_module(home), name)
        assert record[0].filename == __file__  # the warning points at the caller's line, not at import machinery
    with pytest.raises(AttributeError, match=re.escape(homes(old)[0])):
        module.not_a_name  # noqa: B018


@pytest.mark.parametrize("old", sorted(MOVED))
def test_package_attribute_of_a_moved_module_warns(monkeypatch, old):
    _fresh(monkeypatch, old)
    parent, short = old.rsplit(".", 1)
    with pytest.warns(DeprecationWarning, match=re.escape(homes(old)[0])) as record:
        module = getattr(importlib.import_module(parent), short)
    assert module is sys.modules[old]
    assert record[0].filename == __file__


@pytest.mark.parametrize("module", sorted(RENAMED))
def test_a_renamed_name_warns_and_gives_its_new_object(module):
    package = importlib.import_module(module)
    for old, new in RENAMED[module].items():
        home, name = new.split(":")
        with pytest.warns(DeprecationWarning, match=re.escape(f"{module}.{old} is deprecated")) as record:
            obj = getattr(package, old)
        assert obj is getattr(importlib.import_module(home), name) and f"{home}.{name}" in str(record[0].message)
        assert record[0].filename == __file__
        assert old not in dir(package)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        package.not_a_name  # noqa: B018


def test_old_from_imports_still_work(monkeypatch):
    from codecircuits.core import batching, metrics
    from codecircuits.core import inputs as core_inputs
    from codecircuits.memories import agreement, concepts

    for old in MOVED:
        _fresh(monkeypatch, old)
    with pytest.warns(DeprecationWarning) as record:
        from codecircuits import agreement as old_agreement
        from codecircuits import concepts as old_concepts
        from codecircuits.inputs import bos_id, single_token_id
        from codecircuits.metrics import rowwise

        old_concepts.get  # noqa: B018
        old_agreement.layer_agreement  # noqa: B018
    assert rowwise is metrics.rowwise
    assert single_token_id is core_inputs.single_token_id and bos_id is batching.bos_id
    assert old_concepts.get is concepts.get and old_agreement.layer_agreement is agreement.layer_agreement
    assert {w.filename for w in record} == {__file__}
    text = "\n".join(str(w.message) for w in record)
    for home in ("codecircuits.core.metrics", "codecircuits.core.inputs", "codecircuits.core.batching"):
        assert home in text
    for home in ("codecircuits.memories.concepts", "codecircuits.memories.agreement"):
        assert home in text


def test_moved_table_matches_the_new_homes():
    for old, table in MOVED.items():
        for name, home in table.items():
            assert hasattr(importlib.import_module(home), name), f"{old}.{name}: {home} has no {name}"
    for module, table in RENAMED.items():
        for old, new in table.items():
            home, name = new.split(":")
            assert old not in vars(importlib.import_module(module)), f"{module} still defines {old}"
            assert hasattr(importlib.import_module(home), name), f"{module}.{old}: {home} has no {name}"


# ---------------------------------------------------------------------------------------------------------------
# the library never imports the aliases


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module an import statement of ``source`` (the module named ``module``) can bind: ``from a import b``
    gives ``a`` and ``a.b`` (``b`` may be a submodule), relative imports resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)
    return out


def test_the_scan_finds_every_spelling_of_an_alias_import():
    spellings = [
        ("from .metrics import rowwise", "codecircuits.patching", False),
        ("from .. import concepts as cc", "codecircuits.studies.memories", False),
        ("from ..inputs import bos_id", "codecircuits.tasks.parens", False),
        ("from . import agreement", "codecircuits", True),
        ("def f():\n    from codecircuits.inputs import to_tokens", "codecircuits.lens", False),
        ("import codecircuits.metrics as m", "codecircuits.lens", False),
    ]
    for source, module, is_package in spellings:
        assert imported_modules(source, module, is_package) & ALIASES, source
    clean = "from .core.metrics import rowwise\nfrom ..memories import concepts\nfrom .core import inputs"
    assert not imported_modules(clean, "codecircuits.studies.x", False) & ALIASES


def test_no_module_of_the_package_imports_a_deprecated_alias():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        is_package = rel.name == "__init__"
        module = ".".join(rel.parent.parts if is_package else rel.parts)
        if module in ALIASES:
            continue
        found = imported_modules(path.read_text(encoding="utf-8"), module, is_package) & ALIASES
        offenders += [f"{path.relative_to(REPO)} imports {name}" for name in sorted(found)]
    assert not offenders, "\n".join(offenders)
