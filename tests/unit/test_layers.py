"""The import layers, read from the source with ``ast`` (nothing is imported).

Every ``import`` and ``from ... import`` of the application packages counts: absolute and relative,
at module level, inside functions and under ``TYPE_CHECKING``. The rules:

* Layers: ``core < data < {ml, trading} < {pipeline, quality} < worker < {tasks, monitoring} <
  mcp_servers < cli``. A
  package imports only itself and packages strictly below it, so ``ml`` and ``trading`` never
  import each other, nor ``tasks`` and ``monitoring``. ``celeryconfig`` is for ``worker`` alone,
  and no package imports ``tests``, ``benchmarks``, ``migrations`` or ``scripts``.
* No import cycle between packages (the order implies it; checked on its own all the same), nor
  between the parts of ``data`` and ``ml`` (their modules and sub-packages, e.g. ``data.exchange``
  and ``data.stream``).
* ``pipeline`` never imports Celery: the pipeline runs embedded too, and Celery belongs to the
  layers above it (``worker``, ``tasks``).

The last test runs the checker on a small synthetic tree with a violation and cycles, so that a
checker that silently finds nothing cannot pass.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Lowest layer first; packages of one layer may not import each other.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"core"}),
    frozenset({"data"}),
    frozenset({"ml", "trading"}),
    frozenset({"pipeline", "quality"}),
    frozenset({"worker"}),
    frozenset({"tasks", "monitoring"}),
    frozenset({"mcp_servers"}),
    frozenset({"cli"}),
)
# First-party top-level names outside the layers, and the packages that may import each.
RESTRICTED: Mapping[str, frozenset[str]] = {
    "celeryconfig": frozenset({"worker"}),
    "tests": frozenset(),
    "benchmarks": frozenset(),
    "migrations": frozenset(),
    "scripts": frozenset(),
}
# Third-party top-level modules that a package must not import.
FORBIDDEN: Mapping[str, frozenset[str]] = {"pipeline": frozenset({"celery"})}
# Packages whose parts (modules and sub-packages) must not import each other in a cycle.
PARTS_OF = ("data", "ml")


@dataclass(frozen=True)
class Import:
    file: Path  # relative to the root
    line: int
    importer: str  # the importing module, dotted
    imported: str  # the imported module, dotted (a module of the tree where it names one)
    where: str  # "", "in a function" or "under TYPE_CHECKING"

    def at(self) -> str:
        return f"{self.file}:{self.line}"

    def describe(self) -> str:
        tail = f" ({self.where})" if self.where else ""
        return f"{self.at()}: {self.importer} -> {self.imported}{tail}"


def _module_name(root: Path, path: Path) -> tuple[str, bool]:
    """Dotted name of the module at ``path`` and whether it is a package's ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_module(root: Path, dotted: str) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, where: str = "") -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement under ``node``, with where it sits."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, where
        inner = where
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            inner = where or "in a function"
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            # The ``else`` branch runs for real; only the body is for the type checker.
            for stmt in child.body:
                yield from _walk_statement(stmt, "under TYPE_CHECKING")
            for stmt in child.orelse:
                yield from _walk_statement(stmt, where)
            continue
        yield from _walk(child, inner)


def _walk_statement(stmt: ast.stmt, where: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        yield stmt, where
    yield from _walk(stmt, where)


def _resolve(root: Path, module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted modules that one import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        if node.level - 1 > len(package):
            raise ValueError(f"relative import beyond the top level in {module}")
        base_parts = package[: len(package) - (node.level - 1)]
        base = ".".join([*base_parts, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    # ``from pkg import name`` imports the module ``pkg.name`` where there is one, else ``pkg``.
    out = [f"{base}.{a.name}" for a in node.names if a.name != "*" and _is_module(root, f"{base}.{a.name}")]
    if len(out) < len(node.names):
        out.append(base)
    return out


def collect_imports(root: Path, packages: Iterable[str]) -> list[Import]:
    """Every import in the ``.py`` files of ``packages`` under ``root``."""
    found: list[Import] = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            module, is_package = _module_name(root, path)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node, where in _walk(tree):
                for imported in _resolve(root, module, is_package, node):
                    found.append(Import(path.relative_to(root), node.lineno, module, imported, where))
    return found


def _top(dotted: str) -> str:
    return dotted.split(".", 1)[0]


def layer_violations(
    imports: Iterable[Import],
    layers: Sequence[frozenset[str]] = LAYERS,
    restricted: Mapping[str, frozenset[str]] = RESTRICTED,
    forbidden: Mapping[str, frozenset[str]] = FORBIDDEN,
) -> list[str]:
    """One line per import that breaks the layer order, a restricted name or a forbidden library."""
    rank = {package: i for i, layer in enumerate(layers) for package in layer}
    out: list[str] = []
    for imp in imports:
        src, dst = _top(imp.importer), _top(imp.imported)
        if src == dst:
            continue
        if dst in rank and rank[dst] >= rank[src]:
            why = "same layer" if rank[dst] == rank[src] else "higher layer"
            out.append(f"{imp.describe()}: {src} may not import {dst} ({why})")
        elif dst in restricted and src not in restricted[dst]:
            allowed = ", ".join(sorted(restricted[dst])) or "no package"
            out.append(f"{imp.describe()}: {dst} is for {allowed} only")
        elif dst in forbidden.get(src, frozenset()):
            out.append(f"{imp.describe()}: {src} never imports {dst}")
    return out


def _cycles(edges: Mapping[str, Mapping[str, list[Import]]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, {})):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    nodes = set(edges) | {n for targets in edges.values() for n in targets}
    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return sorted(found)


def _report_cycles(edges: Mapping[str, Mapping[str, list[Import]]]) -> list[str]:
    out: list[str] = []
    for component in _cycles(edges):
        members = set(component)
        lines = [f"cycle between {', '.join(component)}:"]
        for src in component:
            for dst in sorted(set(edges[src]) & members):
                lines.append(f"  {src} -> {dst}: " + "; ".join(i.describe() for i in edges[src][dst][:3]))
        out.append("\n".join(lines))
    return out


def package_cycles(imports: Iterable[Import], packages: Iterable[str]) -> list[str]:
    """Import cycles between the top-level ``packages``, with the imports that make them."""
    wanted = set(packages)
    edges: dict[str, dict[str, list[Import]]] = defaultdict(lambda: defaultdict(list))
    for imp in imports:
        src, dst = _top(imp.importer), _top(imp.imported)
        if src != dst and src in wanted and dst in wanted:
            edges[src][dst].append(imp)
    return _report_cycles(edges)


def _part(dotted: str, package: str) -> str | None:
    """``package.x`` for any module at or under ``package.x``; ``package`` for its ``__init__``."""
    parts = dotted.split(".")
    if parts[0] != package:
        return None
    return ".".join(parts[:2])


def part_cycles(imports: Iterable[Import], package: str) -> list[str]:
    """Import cycles between the parts (modules and sub-packages) of ``package``."""
    edges: dict[str, dict[str, list[Import]]] = defaultdict(lambda: defaultdict(list))
    for imp in imports:
        src, dst = _part(imp.importer, package), _part(imp.imported, package)
        if src is not None and dst is not None and src != dst:
            edges[src][dst].append(imp)
    return _report_cycles(edges)


def _packages(layers: Sequence[frozenset[str]] = LAYERS) -> list[str]:
    return sorted(p for layer in layers for p in layer)


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return collect_imports(ROOT, _packages())


def _fail_with(problems: list[str], what: str) -> None:
    if problems:
        pytest.fail(f"{len(problems)} {what}:\n" + "\n".join(problems), pytrace=False)


def test_the_walk_sees_every_package_and_kind_of_import(imports: list[Import]) -> None:
    importers = {_top(i.importer) for i in imports}
    assert importers == set(_packages())
    assert {i.where for i in imports} >= {"", "in a function"}


def test_packages_import_only_the_layers_below_them(imports: list[Import]) -> None:
    _fail_with(layer_violations(imports), "layer violations (core < data < {ml, trading} < pipeline < ...)")


def test_no_import_cycle_between_packages(imports: list[Import]) -> None:
    _fail_with(package_cycles(imports, _packages()), "import cycles between packages")


@pytest.mark.parametrize("package", PARTS_OF)
def test_no_import_cycle_between_the_parts_of(imports: list[Import], package: str) -> None:
    _fail_with(part_cycles(imports, package), f"import cycles between the parts of {package}")


def test_pipeline_never_imports_celery(imports: list[Import]) -> None:
    celery = [
        i.describe() for i in imports if _top(i.importer) == "pipeline" and _top(i.imported) == "celery"
    ]
    _fail_with(celery, "Celery imports in pipeline")


# -- the checker itself ---------------------------------------------------------------------------


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_the_checker_finds_violations_and_cycles_in_a_synthetic_tree(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "core/__init__.py": "",
            "core/base.py": "def late():\n    from data import store  # up a layer, hidden in a function\n",
            "data/__init__.py": "",
            "data/store.py": "import core.base\n",
            "data/exchange/__init__.py": "from data.stream import feed\n",
            "data/stream/__init__.py": "",
            "data/stream/feed.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..exchange import Client\n"
            ),
            "ml/__init__.py": "",
            "ml/model.py": "from trading import book\n",
            "trading/__init__.py": "",
            "trading/book.py": "from . import helpers\nfrom .helpers import x\n",
            "trading/helpers.py": "x = 1\n",
            "pipeline/__init__.py": "import celery.app\nfrom core import base\nimport celeryconfig\n",
            "celeryconfig.py": "",
        },
    )
    layers = (frozenset({"core"}), frozenset({"data"}), frozenset({"ml", "trading"}), frozenset({"pipeline"}))
    found = collect_imports(tmp_path, _packages(layers))

    relative = [i for i in found if i.importer == "trading.book"]
    assert {i.imported for i in relative} == {"trading.helpers"}
    feed = [i for i in found if i.importer == "data.stream.feed" and i.imported == "data.exchange"]
    assert [(i.line, i.where) for i in feed] == [(3, "under TYPE_CHECKING")]

    violations = layer_violations(found, layers)
    assert len(violations) == 4, violations
    assert any(
        v.startswith("core/base.py:2: core.base -> data.store (in a function)") and "higher layer" in v
        for v in violations
    )
    assert any(
        v.startswith("ml/model.py:1: ml.model -> trading.book") and "same layer" in v for v in violations
    )
    assert any(v.startswith("pipeline/__init__.py:1: pipeline -> celery.app") for v in violations)
    assert any(
        v.startswith("pipeline/__init__.py:3:") and "celeryconfig is for worker only" in v for v in violations
    )

    [cycle] = package_cycles(found, _packages(layers))
    assert cycle.startswith("cycle between core, data:")
    assert "core/base.py:2" in cycle
    assert "data/store.py:1" in cycle
    [parts] = part_cycles(found, "data")
    assert parts.startswith("cycle between data.exchange, data.stream:")
    assert "data/stream/feed.py:3" in parts
    assert part_cycles(found, "trading") == []
