"""No import circle anywhere in ``uwsgirouter/`` (issue 12): each module's imports, read with ``ast``.

Every import counts: at module level, inside functions (imported late only to save start-up time, still a
dependency) and under ``if TYPE_CHECKING:`` (no circle at run time, but still two modules that cannot be
understood one without the other). ``from package import name`` depends on ``package.name`` when that is a
module of the project, else on ``package`` itself. A package's ``__init__`` is not counted as imported by its
submodules' imports of each other (Python runs it first; re-exporting them is no circle of design).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "uwsgirouter"

#: Import edges (importer, imported) left out while a known circle is being taken apart. An entry whose import
#: no longer exists fails the test, so the list only shrinks. Empty: the last circles (the master's services
#: and the master, an app worker's thread pool and the worker) were cut with narrow Protocols declared on the
#: lower side (``services.registry.MasterView``, ``workers.cores.PoolWorker``).
ALLOWED: frozenset[tuple[str, str]] = frozenset()


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``root``, by dotted name."""
    return {module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}


def imports_of(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The project modules ``name`` imports, wherever the import statement is."""
    known = set(known)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                if not is_package:
                    anchor.pop()
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in known:
                    found.add(target)
                elif base in known:
                    found.add(base)
    found.discard(name)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    modules = modules_of(root, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def knots(graph: Mapping[str, Iterable[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (each module with those it reaches that reach
    it back), ordered by their first name."""

    def reach(start: str) -> set[str]:
        seen, queue = {start}, [start]
        for node in queue:
            for child in graph.get(node, ()):
                if child not in seen:
                    seen.add(child)
                    queue.append(child)
        return seen

    reached = {name: reach(name) for name in graph}
    found: dict[str, set[str]] = {}
    for name in graph:
        knot = {other for other in reached[name] if name in reached.get(other, ())}
        if len(knot) > 1:
            found[min(knot)] = knot
    return [found[first] for first in sorted(found)]


def circle_in(graph: Mapping[str, Iterable[str]], knot: set[str]) -> list[str]:
    """The shortest closed path from the knot's first module back to it (breadth first)."""
    start = min(knot)
    paths = {start: [start]}
    queue = [start]
    for node in queue:
        for child in sorted(graph.get(node, ())):
            if child == start:
                return [*paths[node], start]
            if child in knot and child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    raise AssertionError(f"no circle through {start}")  # every module of a knot reaches the others


def describe(graph: Mapping[str, Iterable[str]], knot: set[str]) -> str:
    """A circle of the knot as a path, and the other modules caught in it."""
    circle = circle_in(graph, knot)
    others = sorted(knot - set(circle))
    return " -> ".join(circle) + (f" (in the same knot: {', '.join(others)})" if others else "")


def problems(root: Path, allowed: frozenset[tuple[str, str]]) -> list[str]:
    """What is wrong with the imports of ``uwsgirouter`` under ``root``: stale allowed edges, circles."""
    graph = import_graph(root, PACKAGE)
    stale = sorted(edge for edge in allowed if edge[1] not in graph.get(edge[0], ()))
    if stale:
        return [f"allowed imports that no longer exist, remove them from ALLOWED: {stale}"]
    kept = {name: {target for target in targets if (name, target) not in allowed} for name, targets in graph.items()}
    return ["import circle: " + "; ".join(describe(kept, knot) for knot in knots(kept))] if knots(kept) else []


def test_no_import_circle_in_uwsgirouter() -> None:
    assert problems(ROOT, ALLOWED) == []


def test_subscription_and_router_stats_do_not_depend_on_each_other() -> None:
    """The subscription server runs in the master and the stats document is the router's: the router's mappers
    package is the one place that joins the router with the subscription table."""
    graph = import_graph(ROOT, PACKAGE)
    for name, targets in graph.items():
        if name.startswith("uwsgirouter.subscription"):
            assert not [t for t in targets if t.startswith("uwsgirouter.router")], name
    assert not [t for t in graph["uwsgirouter.router.stats"] if t.startswith("uwsgirouter.subscription")]
    mapper_classes = [t for t in graph["uwsgirouter.router.stats"] if t.startswith("uwsgirouter.router.mappers")]
    assert not mapper_classes, "router/stats.py asks the mapper's stats() hook, it knows no mapper class"


# --- the checker itself, on a made-up package ------------------------------------------------------


def write(root: Path, files: Mapping[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_every_kind_of_import_is_an_edge(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.sub import leaf\n",
            "pkg/a.py": "import pkg.b\nimport os\n",
            "pkg/b.py": "def late():\n    from pkg import c\n",
            "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub.leaf import X\n",
            "pkg/sub/__init__.py": "from .leaf import X\nfrom . import leaf as again\n",
            "pkg/sub/leaf.py": "from .. import a\nfrom ..c import name\nfrom pkg.sub import X\n",
        },
    )
    assert import_graph(tmp_path, "pkg") == {
        "pkg": {"pkg.sub.leaf"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.c"},
        "pkg.c": {"pkg.sub.leaf"},
        "pkg.sub": {"pkg.sub.leaf"},
        "pkg.sub.leaf": {"pkg.a", "pkg.c", "pkg.sub"},
    }


def test_knots_are_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set(), "e": {"f"}, "f": {"e", "g"}, "g": {"a"}}
    assert knots(graph) == [{"a", "b", "c"}, {"e", "f"}]
    assert [describe(graph, knot) for knot in knots(graph)] == ["a -> b -> c -> a", "e -> f -> e"]
    assert knots({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_check_names_a_circle_and_a_stale_allowance(tmp_path: Path) -> None:
    write(tmp_path, {"uwsgirouter/__init__.py": "", "uwsgirouter/x.py": "import uwsgirouter.y\n"})
    write(tmp_path, {"uwsgirouter/y.py": "def f():\n    from uwsgirouter import x, z\n", "uwsgirouter/z.py": ""})
    write(tmp_path, {"uwsgirouter/w.py": "import uwsgirouter.x\n", "uwsgirouter/v.py": "import uwsgirouter.w\n"})
    assert problems(tmp_path, frozenset()) == ["import circle: uwsgirouter.x -> uwsgirouter.y -> uwsgirouter.x"]
    allowed = frozenset({("uwsgirouter.y", "uwsgirouter.x")})
    assert problems(tmp_path, allowed) == []
    write(tmp_path, {"uwsgirouter/z.py": "from uwsgirouter import w\n"})  # x -> y -> z -> w -> x too
    assert problems(tmp_path, frozenset()) == [
        "import circle: uwsgirouter.w -> uwsgirouter.x -> uwsgirouter.y -> uwsgirouter.z -> uwsgirouter.w"
    ]
    write(tmp_path, {"uwsgirouter/z.py": "import uwsgirouter.x\n"})  # x -> y -> z -> x, beside x -> y -> x
    assert problems(tmp_path, frozenset()) == [
        "import circle: uwsgirouter.x -> uwsgirouter.y -> uwsgirouter.x (in the same knot: uwsgirouter.z)"
    ]
    write(tmp_path, {"uwsgirouter/y.py": ""})
    assert problems(tmp_path, allowed) == [
        "allowed imports that no longer exist, remove them from ALLOWED: [('uwsgirouter.y', 'uwsgirouter.x')]"
    ]
