"""The workspace's shape: parts in folders that tools read as they are, and imports without circles."""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PARTS = sorted(path.parent for path in ROOT.glob("*/pyproject.toml"))


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Every set of modules that import each other round a circle (Tarjan), largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            members = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.add(member)
                if member == module:
                    break
            if len(members) > 1:
                circles.append(members)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return sorted(circles, key=len, reverse=True)


def test_no_module_of_the_namespace_imports_itself_round_a_circle() -> None:
    # Every import counts: at module level, inside functions, and under TYPE_CHECKING.
    graph = grimp.build_graph("fashionbox")
    assert len(graph.modules) > 60, "the namespace's portions were not all found"
    assert strongly_connected(graph) == []


def test_the_circle_finder_finds_a_circle() -> None:
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(module)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert strongly_connected(graph) == [{"pkg.a", "pkg.b"}]


@pytest.mark.parametrize("part", PARTS, ids=lambda path: path.name)
def test_each_part_is_one_distribution_and_one_portion_of_the_namespace(part: Path) -> None:
    project = tomllib.loads((part / "pyproject.toml").read_text())
    namespace = next(part.glob("**/fashionbox"))
    assert not (namespace / "__init__.py").exists(), "fashionbox is a PEP 420 namespace: no __init__.py"
    assert project["project"]["name"].startswith("fashionbox")
    packages = [child for child in namespace.iterdir() if (child / "__init__.py").is_file()]
    assert packages, f"{part.name} holds no package of the namespace"


def test_every_part_is_installed_by_setup_and_checked_by_mypy() -> None:
    workspace = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = (ROOT / "requirements-dev.txt").read_text()
    checked = {Path(folder).parts[0] for folder in workspace["tool"]["mypy"]["files"]}
    for part in PARTS:
        assert f"-e ./{part.name}" in requirements
        assert part.name in checked
