"""Imports inside ``codecircuits/`` run one way.

Every module of the package is parsed with :mod:`ast` (imports at module level and inside functions, relative
and absolute) into a module import graph, and three rules are checked on it:

(a) no import cycle between modules;
(b) no upward import: a module imports only modules of its own layer or of the layers below it, in the order
    written once in ``codecircuits/layers.py``; every module must be placed in a layer;
(c) no private name (``_x``, not a dunder) is imported across modules, neither ``from .a import _x`` nor
    ``import a`` followed by ``a._x``. A private *module* (``report/_util.py``) is private to its package: its
    siblings may import it, nothing outside that package may.

How imports become edges. ``from P import n`` is an edge to the submodule ``P.n`` where there is one, else to
``P`` (a package's ``__init__``); ``import P.Q`` is an edge to ``P.Q``. So a package ``__init__`` that re-exports
its submodules has edges down to them, and a submodule that imports a name of its own package's ``__init__``
(``from . import name``, ``from .. import memories``) has an edge up to it; both at once is a cycle, as it is at
run time. The parent packages that Python runs before a submodule are not edges: importing ``pkg.mod`` is not
importing what ``pkg/__init__.py`` re-exports.

The checkers are plain functions over a directory, tested here on planted packages so that the test can fail.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "codecircuits"


@dataclass(frozen=True)
class Edge:
    """One import: module ``src`` imports module ``dst`` at ``src``'s ``line`` (``text`` is that line)."""

    src: str
    dst: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.src}:{self.line} -> {self.dst}    {self.text}"


@dataclass(frozen=True)
class PrivateUse:
    """``src`` uses the private name ``name`` of module ``owner`` (imported or as an attribute)."""

    src: str
    owner: str
    name: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.src}:{self.line} uses {self.owner}.{self.name}    {self.text}"


def modules_of(pkg_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` of the package (``pkg/__init__.py`` is ``pkg``)."""
    pkg_dir = Path(pkg_dir)
    out = {}
    for path in sorted(pkg_dir.rglob("*.py")):
        rel = path.relative_to(pkg_dir.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _existing(name: str, modules) -> str | None:
    """The longest prefix of the dotted ``name`` that is a module of the package (None if outside it)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _dotted(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _statements(tree):
    """Every statement of ``tree``, nested ones included (imports are statements, so expressions are skipped)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            todo.extend(reversed(getattr(node, name, ()) or ()))


def scan(pkg_dir: Path) -> tuple[dict[str, Path], list[Edge], list[PrivateUse]]:
    """(modules, import edges, private names used across modules) of the package in ``pkg_dir``."""
    modules = modules_of(pkg_dir)
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    edges: list[Edge] = []
    private: list[PrivateUse] = []
    for src, path in modules.items():
        e, p = _scan_module(src, path, modules, packages)
        edges += e
        private += p
    return modules, edges, private


def _scan_module(src: str, path: Path, modules, packages) -> tuple[list[Edge], list[PrivateUse]]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source, filename=str(path))
    here = src if src in packages else src.rpartition(".")[0]  # what `from . import` is relative to
    bound: dict[str, str] = {}  # local name -> the module of the package it is bound to
    edges: list[Edge] = []
    private: list[PrivateUse] = []
    seen: set[tuple[str, int]] = set()

    def text(node) -> str:
        return lines[node.lineno - 1].strip()

    def edge(dst: str, node) -> None:
        if dst == src or (dst, node.lineno) in seen:
            return
        seen.add((dst, node.lineno))
        edges.append(Edge(src, dst, node.lineno, text(node)))
        # a private module is private to its package: `pkg._m` may be imported only from inside `pkg`
        parts = dst.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if _is_private(parts[i]) and not (src == parent or src.startswith(parent + ".")):
                private.append(PrivateUse(src, parent, parts[i], node.lineno, text(node)))
                break

    for node in _statements(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                dst = _existing(alias.name, modules)
                if dst is None:
                    continue
                edge(dst, node)
                if alias.asname:
                    bound[alias.asname] = dst
                else:  # `import a.b.c` binds `a`; its attributes are resolved below
                    bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = here.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            owner = _existing(base, modules)
            if owner is None:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:  # `from pkg import mod`: the submodule
                    edge(sub, node)
                    bound[alias.asname or alias.name] = sub
                    continue
                edge(owner, node)  # `from mod import name`, `from pkg import name`: the module, the package __init__
                if _is_private(alias.name) and owner != src:
                    private.append(PrivateUse(src, owner, alias.name, node.lineno, text(node)))
    # `mod._x` where `mod` names a module of the package (the whole tree is walked only where the text has one)
    if not bound or not re.search(rf"\b(?:{'|'.join(map(re.escape, bound))})(?:\.\w+)*\._", source):
        return edges, private
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
            continue
        base = _dotted(node.value)
        if base is None:
            continue
        head, _, rest = base.partition(".")
        if head not in bound:
            continue
        owner = bound[head] + (f".{rest}" if rest else "")
        if owner not in modules or owner == src:
            continue
        if f"{owner}.{node.attr}" in modules and (src == owner or src.startswith(owner + ".")):
            continue  # a private submodule, reached as an attribute from inside its package
        private.append(PrivateUse(src, owner, node.attr, node.lineno, text(node)))
    return edges, private


def cycles(edges: list[Edge]) -> list[list[Edge]]:
    """Each strongly connected component of more than one module, as the edges that lie inside it."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.src, set()).add(e.dst)
        graph.setdefault(e.dst, set())
    # Tarjan's algorithm, iterative
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(component)
    return [
        sorted((e for e in edges if e.src in comp and e.dst in comp), key=lambda e: (e.src, e.line))
        for comp in sorted(components, key=sorted)
    ]


def load_layers(pkg_dir: Path):
    """The ``LAYERS`` table of ``<pkg>/layers.py``, read without importing the package."""
    path = Path(pkg_dir) / "layers.py"
    spec = importlib.util.spec_from_file_location(f"_layers_of_{Path(pkg_dir).name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.LAYERS


def layer_of(module: str, package: str, layers) -> tuple[int, str] | None:
    """(position, name) of the layer whose longest module prefix matches ``module`` (None if unplaced).

    Prefixes are written relative to the package (``"memories.chunks"``); ``""`` is the package's own
    ``__init__``. A prefix matches the module itself and its submodules."""
    rel = module[len(package) + 1 :] if module != package else ""
    best = None
    for position, (name, prefixes) in enumerate(layers.items()):
        for prefix in prefixes:
            hit = rel == prefix if prefix == "" else (rel == prefix or rel.startswith(prefix + "."))
            if hit and (best is None or len(prefix) > best[0]):
                best = (len(prefix), position, name)
    return None if best is None else (best[1], best[2])


def unplaced(modules, package: str, layers) -> list[str]:
    """The modules that no layer names."""
    return sorted(m for m in modules if layer_of(m, package, layers) is None)


def upward(edges: list[Edge], package: str, layers) -> list[tuple[Edge, str, str]]:
    """Each import of a module in a higher layer: (edge, the importer's layer, the imported module's layer)."""
    out = []
    for e in edges:
        src, dst = layer_of(e.src, package, layers), layer_of(e.dst, package, layers)
        if src is not None and dst is not None and dst[0] > src[0]:
            out.append((e, src[1], dst[1]))
    return out


# --------------------------------------------------------------------------------------------------------------
# the package itself


@pytest.fixture(scope="module")
def package_scan():
    return scan(PACKAGE)


def test_every_module_has_a_layer(package_scan):
    modules, _, _ = package_scan
    missing = unplaced(modules, PACKAGE.name, load_layers(PACKAGE))
    assert not missing, "modules with no layer in codecircuits/layers.py (place them):\n  " + "\n  ".join(missing)


def test_no_import_cycle(package_scan):
    _, edges, _ = package_scan
    found = cycles(edges)
    report = "\n\n".join(
        f"cycle {i + 1}: {', '.join(sorted({e.src for e in comp}))}\n  " + "\n  ".join(map(str, comp))
        for i, comp in enumerate(found)
    )
    assert not found, f"{len(found)} import cycle(s) in codecircuits/:\n\n{report}"


def test_no_upward_import(package_scan):
    _, edges, _ = package_scan
    found = upward(edges, PACKAGE.name, load_layers(PACKAGE))
    report = "\n  ".join(f"[{lo} imports {hi}] {e}" for e, lo, hi in found)
    assert not found, f"{len(found)} import(s) of a higher layer (order in codecircuits/layers.py):\n  {report}"


def test_no_private_name_across_modules(package_scan):
    _, _, private = package_scan
    assert not private, "private names used across modules:\n  " + "\n  ".join(map(str, private))


def test_layers_table_shape():
    layers = load_layers(PACKAGE)
    assert isinstance(layers, dict) and layers, "LAYERS is a dict: layer name -> module prefixes"
    seen: dict[str, str] = {}
    for name, prefixes in layers.items():
        assert isinstance(prefixes, tuple), name
        for prefix in prefixes:
            assert prefix not in seen, f"{prefix!r} is in layers {seen[prefix]!r} and {name!r}"
            seen[prefix] = name
            path = PACKAGE.joinpath(*prefix.split(".")) if prefix else PACKAGE
            assert path.with_suffix(".py").exists() or (path / "__init__.py").exists(), (
                f"layer {name!r} names {prefix!r}, which is no module of codecircuits/"
            )


# --------------------------------------------------------------------------------------------------------------
# the checkers, on planted packages


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


_PLANT_LAYERS = 'LAYERS = {"base": ("", "base", "layers"), "low": ("low",), "high": ("high",)}\n'


def test_checker_finds_a_planted_cycle(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/layers.py": _PLANT_LAYERS,
            "pkg/base.py": "X = 1\n",
            "pkg/low/__init__.py": "from .a import A\n",
            "pkg/low/a.py": "from .b import B\nA = 1\n",
            "pkg/low/b.py": "def f():\n    from . import a\n    return a.A\nB = 1\n",
        },
    )
    _, edges, _ = scan(pkg)
    found = cycles(edges)
    assert len(found) == 1
    assert {(e.src, e.dst, e.line) for e in found[0]} == {("pkg.low.a", "pkg.low.b", 1), ("pkg.low.b", "pkg.low.a", 2)}
    assert "from . import a" in str(found[0][1])  # the function-level import is the one reported


def test_checker_package_init_and_its_children(tmp_path):
    # an __init__ re-exporting its children is no cycle; a child importing a name of that __init__ is one
    files = {
        "pkg/__init__.py": "",
        "pkg/layers.py": _PLANT_LAYERS,
        "pkg/low/__init__.py": "from .a import A\nfrom .b import B\nC = 3\n",
        "pkg/low/a.py": "A = 1\n",
        "pkg/low/b.py": "from .a import A\nB = A\n",
    }
    _, edges, _ = scan(_write(tmp_path / "ok", files))
    assert cycles(edges) == []
    files["pkg/low/b.py"] = "from . import C\nB = C\n"
    _, edges, _ = scan(_write(tmp_path / "bad", files))
    [found] = cycles(edges)
    assert {(e.src, e.dst) for e in found} == {("pkg.low", "pkg.low.b"), ("pkg.low.b", "pkg.low")}
    files["pkg/low/b.py"] = "B = 2\n"
    files["pkg/high.py"] = "def f():\n    from .. import low\n"  # `from ..` at the top is `from .`'s parent
    files["pkg/low/a.py"] = "import pkg.low.b as bee\nA = bee.B\n"
    _, edges, _ = scan(_write(tmp_path / "abs", files))
    assert ("pkg.low.a", "pkg.low.b") in {(e.src, e.dst) for e in edges}
    assert cycles(edges) == []


def test_checker_finds_a_planted_upward_import(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/layers.py": _PLANT_LAYERS,
            "pkg/base.py": "X = 1\n",
            "pkg/low.py": "from .base import X\n\ndef f():\n    from .high import g\n    return g()\n",
            "pkg/high.py": "from .low import f\nfrom . import base\n\ndef g():\n    return base.X\n",
            "pkg/extra.py": "Y = 2\n",
        },
    )
    modules, edges, _ = scan(pkg)
    layers = load_layers(pkg)
    found = upward(edges, "pkg", layers)
    assert [(e.src, e.dst, e.line, lo, hi) for e, lo, hi in found] == [("pkg.low", "pkg.high", 4, "low", "high")]
    assert layer_of("pkg", "pkg", layers) == (0, "base")  # "" is the package's own __init__
    assert unplaced(modules, "pkg", layers) == ["pkg.extra"]
    assert [e.src for e in cycles(edges)[0]] == ["pkg.high", "pkg.low"]


def test_checker_longest_prefix_wins(tmp_path):
    layers = {"low": ("mem.chunks",), "high": ("mem",)}
    assert layer_of("pkg.mem.chunks", "pkg", layers) == (0, "low")
    assert layer_of("pkg.mem.other", "pkg", layers) == (1, "high")
    assert layer_of("pkg.memx", "pkg", layers) is None


def test_checker_finds_private_names(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "_x = 1\n__all__ = []\ndef _f():\n    return _x\n",
            "pkg/b.py": "from .a import _x, __all__\n",
            "pkg/c.py": "from . import a\nimport pkg.a\nimport pkg.a as alias\n"
            "y = a._f() + pkg.a._x + alias._x + a.__all__\n",
            "pkg/sub/__init__.py": "from ._util import h\n",
            "pkg/sub/_util.py": "def h():\n    return 1\n",
            "pkg/sub/user.py": "from . import _util\nfrom ._util import h\n",
            "pkg/d.py": "from .sub import _util\nfrom .sub._util import h\n",
        },
    )
    _, _, private = scan(pkg)
    assert sorted((p.src, p.owner, p.name, p.line) for p in private) == [
        ("pkg.b", "pkg.a", "_x", 1),
        ("pkg.c", "pkg.a", "_f", 4),
        ("pkg.c", "pkg.a", "_x", 4),
        ("pkg.c", "pkg.a", "_x", 4),
        ("pkg.d", "pkg.sub", "_util", 1),
        ("pkg.d", "pkg.sub", "_util", 2),  # a public name of a private module is still the private module
    ]


def test_docs_quote_the_layers():
    """docs/architecture.md quotes the table as it is (the ```python block that starts with ``LAYERS``)."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    start = doc.find("```python\nLAYERS")
    assert start >= 0, "docs/architecture.md no longer quotes LAYERS from codecircuits/layers.py"
    quoted = doc[start + len("```python\n") : doc.index("```", start + 3)]
    namespace: dict = {}
    exec(quoted, namespace)
    assert namespace["LAYERS"] == load_layers(PACKAGE), "docs/architecture.md quotes an old LAYERS: copy it again"
