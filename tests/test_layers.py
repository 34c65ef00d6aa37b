"""Layering rules, checked on the source with ``ast`` (nothing is imported).

- No import cycles between prunetune's modules. Every import counts, at module level or inside a
  function (a lazy import only hides a cycle until someone moves it), except under
  ``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` (a script entry point). Importing
  ``prunetune.a.b`` also runs ``prunetune/a/__init__.py``, so it
  adds an edge to that package too, except to the root package and to the importer's own
  ancestor packages (which are always initialised before their submodules run).
- ``prunetune/cli.py`` and ``benchmarks/*.py`` use the public API only: no private module path
  (``prunetune._x``, ``prunetune.x._y``) and no imported name starting with ``_`` (dunders such
  as ``__version__`` are public).
- The checkers flag a synthetic cycle and synthetic private imports, so they cannot silently
  pass.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "prunetune"

#: ``importer -> imported -> ["path:line" of each import statement]``
Graph = dict[str, dict[str, list[str]]]


# --- reading the source ----------------------------------------------------------------------


def find_modules(src: Path, package: str) -> dict[str, Path]:
    """``module name -> file`` for every module of ``package`` under ``src``."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` (never runs) or ``if __name__ == "__main__":`` (runs only as a
    script's entry point, after every module it needs is loaded: not a module dependency)."""
    if (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
    ):
        return any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST, skip_type_checking: bool = True) -> Iterator[ast.stmt]:
    """Every ``import``/``from ... import`` statement, at any depth, in source order."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif skip_type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(reversed(node.orelse))
        else:
            stack.extend(reversed(list(ast.iter_child_nodes(node))))


def from_base(node: ast.ImportFrom, module: str | None, is_package: bool) -> str:
    """The absolute module a ``from X import ...`` reads from (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    if module is None:
        raise ValueError(f"relative import on line {node.lineno} outside a package")
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def imported_modules(
    node: ast.stmt, module: str | None, is_package: bool, known: set[str]
) -> list[str]:
    """The modules an import statement names: ``from X import name`` is ``X.name`` when that
    is a module, else ``X``."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = from_base(node, module, is_package)
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


# --- rule 1: no import cycles ----------------------------------------------------------------


def import_graph(src: Path, package: str) -> Graph:
    """``importer -> imported -> [path:line, ...]`` over the modules of ``package``."""
    modules = find_modules(src, package)
    known = set(modules)
    graph: Graph = {m: {} for m in modules}
    for mod, path in modules.items():
        is_package = path.name == "__init__.py"
        own = set(_ancestors(mod)) | ({mod} if is_package else set())
        tree = ast.parse(path.read_text(), str(path))
        for node in import_nodes(tree):
            for target in imported_modules(node, mod, is_package, known):
                if not _within(target, package):
                    continue
                while target not in known and "." in target:  # ``import pkg.missing``
                    target = target.rsplit(".", 1)[0]
                steps = [a for a in _ancestors(target) if a != package and a not in own]
                for dst in [*steps, target]:
                    if dst != mod:
                        loc = f"{path.relative_to(src)}:{node.lineno}"
                        graph[mod].setdefault(dst, []).append(loc)
    return graph


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
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
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, {})))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def simple_cycles(graph: Graph, component: list[str], limit: int = 50) -> list[list[str]]:
    """The elementary cycles inside one component (each from its smallest module), at most
    ``limit``."""
    members = set(component)
    cycles: list[list[str]] = []
    for start in sorted(component):
        allowed = {m for m in members if m >= start}
        path = [start]

        def walk(
            v: str, allowed: set[str] = allowed, start: str = start, path: list[str] = path
        ) -> None:
            for w in sorted(graph[v]):
                if len(cycles) >= limit or w not in allowed:
                    continue
                if w == start:
                    cycles.append([*path, start])
                elif w not in path:
                    path.append(w)
                    walk(w)
                    path.pop()

        walk(start)
    return cycles


def describe_cycles(graph: Graph, components: list[list[str]]) -> str:
    lines = []
    for comp in components:
        lines.append(f"import cycle among {', '.join(comp)}:")
        for cyc in simple_cycles(graph, comp):
            hops = [f"{a} -> {b} ({graph[a][b][0]})" for a, b in zip(cyc, cyc[1:])]
            lines.append("  " + "; ".join(hops))
    return "\n".join(lines)


# --- rule 2: the CLI and the benchmarks use public names only ---------------------------------


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_imports(
    path: Path, module: str | None, package: str = PACKAGE, known: set[str] | None = None
) -> list[str]:
    """``path:line: ...`` for each import of a private prunetune module or name in ``path``.

    ``module`` is the file's own module name (relative imports resolve against it), None for a
    script.
    """
    known = known if known is not None else set(find_modules(SRC, package))
    tree = ast.parse(path.read_text(), str(path))
    found = []
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for node in import_nodes(tree, skip_type_checking=False):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
            names: list[str] = []
        else:
            mods = [from_base(node, module, is_package=False)]
            names = [a.name for a in node.names]
        for mod in mods:
            if not _within(mod, package):
                continue
            if any(_private(p) for p in mod.split(".")):
                found.append(f"{where}:{node.lineno}: imports the private module {mod}")
            for name in names:
                if _private(name):
                    what = "module" if f"{mod}.{name}" in known else "name"
                    found.append(
                        f"{where}:{node.lineno}: imports the private {what} {name} from {mod}"
                    )
    return found


# --- the rules on prunetune ------------------------------------------------------------------


def test_no_import_cycles():
    graph = import_graph(SRC, PACKAGE)
    assert len(graph) > 20 and graph[f"{PACKAGE}.cli"], "no modules found: is SRC right?"
    components = strongly_connected(graph)
    assert not components, "\n" + describe_cycles(graph, components)


def test_cli_and_benchmarks_import_public_names_only():
    known = set(find_modules(SRC, PACKAGE))
    files = [(SRC / PACKAGE / "cli.py", f"{PACKAGE}.cli")]
    files += [(p, None) for p in sorted((ROOT / "benchmarks").glob("*.py"))]
    found = [v for path, mod in files for v in private_imports(path, mod, PACKAGE, known)]
    assert not found, "private prunetune imports:\n" + "\n".join(found)


# --- the checkers catch what they should -----------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_checker_flags_synthetic_cycles(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from . import a\n",
            "pkg/a.py": "from .b import f\n",
            # a lazy import still closes the cycle a -> b -> a
            "pkg/b.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from .c import X\n"
            "def f():\n    from pkg.a import g\n",
            # only a TYPE_CHECKING import points back at c: no cycle
            "pkg/c.py": "from .b import f\nX = 1\n",
            # e imports sub._impl, which runs sub/__init__, which imports e: a cycle e -> sub -> e
            "pkg/e.py": "from .sub._impl import z\ny = 1\n",
            "pkg/sub/__init__.py": "from ._impl import z\nfrom ..e import y\n",
            # a submodule importing a sibling does not depend on its own package's __init__
            "pkg/sub/_impl.py": "from . import _other\nimport pkg.sub._other\nz = 1\n",
            "pkg/sub/_other.py": "import os\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert strongly_connected(graph) == [["pkg.a", "pkg.b"], ["pkg.e", "pkg.sub"]]
    assert "pkg.c" not in graph["pkg.b"] and "pkg" not in graph["pkg.a"]
    assert set(graph["pkg.e"]) == {"pkg.sub", "pkg.sub._impl"}
    assert set(graph["pkg.sub._impl"]) == {"pkg.sub._other"}
    text = describe_cycles(graph, strongly_connected(graph))
    assert "pkg.a -> pkg.b (pkg/a.py:1); pkg.b -> pkg.a (pkg/b.py:5)" in text
    assert "pkg.e -> pkg.sub (pkg/e.py:1); pkg.sub -> pkg.e (pkg/sub/__init__.py:2)" in text


def test_checker_flags_synthetic_private_imports(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text(
        "\n".join(
            [
                "from prunetune import prune, __version__",  # 1: public
                "from prunetune._session import load_base",  # 2
                "from prunetune.search import _private",  # 3
                "import prunetune.search._budget as b",  # 4
                "from prunetune.models import ModelSpec",  # 5: public
                "import _common, os",  # 6: not prunetune
                "def f():",
                "    from prunetune.pruners._tokens import X",  # 8
                "from typing import TYPE_CHECKING",
                "if TYPE_CHECKING:",
                "    from prunetune import _pruned",  # 11
            ]
        )
        + "\n"
    )
    known = {"prunetune", "prunetune._session", "prunetune.search", "prunetune.search._budget"}
    lines = [v.split(":")[1] for v in private_imports(script, None, PACKAGE, known)]
    assert sorted(lines, key=int) == ["2", "3", "4", "8", "11"]

    cli = tmp_path / "cli.py"
    cli.write_text(
        "from . import _session\nfrom .search._budget import parse_budget\n"
        "from .config import PruningConfig\nfrom .search import search\n"
    )
    found = private_imports(cli, f"{PACKAGE}.cli", PACKAGE, known)
    assert len(found) == 2, found
    assert "private module _session from prunetune" in found[0]
    assert "private module prunetune.search._budget" in found[1]
