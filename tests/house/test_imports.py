"""The import graph: no cycle among beamvec's modules, counting
the imports hidden inside functions too; errors.py at the bottom; every package
on a floor, importing only its own floor and those below; the emulator apart."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

SRC = ROOT / "src" / "beamvec"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):  # every import, at any depth
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_itself_back_through_others() -> None:
    graph = _graph()
    # a package importing its own submodules is its re-export, not a layer: leave those edges out
    flat = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    assert _cycle(flat) is None, " -> ".join(_cycle(flat) or [])


# The floors of src/beamvec/, ground first. What is written here is the
# rule, one floor per package or top-level module; the edges are read from the
# code. A package or module may import its own floor or any floor below, never one
# above, and the packages together import one way (no cycle between them).
FLOORS: tuple[frozenset[str], ...] = (
    frozenset({"errors"}),
    frozenset({"records", "counters", "interrupt", "retry", "pricing", "progress"}),
    frozenset({"contract", "sources", "backends", "quota"}),
    frozenset({"route", "embed", "write"}),
    frozenset({"pipeline", "batchapi"}),
    frozenset({"driver"}),
    frozenset({"commands"}),
    frozenset({"cli"}),
)
APART = frozenset({"emulator"})  # Google's stand-in: only the command line starts it


def _unit(module: str) -> str:
    """A module's package or top-level module right under beamvec."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _unit_edges(graph: dict[str, set[str]]) -> set[tuple[str, str, str, str]]:
    """(unit, unit it imports, importing module, imported module); the package's
    face ``beamvec/__init__.py`` (the version) is no floor."""
    return {(_unit(a), _unit(b), a, b) for a, targets in graph.items() for b in targets
            if _unit(a) and _unit(b) and _unit(a) != _unit(b)}


def _floor_of(unit: str) -> int | None:
    return next((i for i, floor in enumerate(FLOORS) if unit in floor), None)


def _upward(edges: set[tuple[str, str, str, str]]) -> list[str]:
    """Every import from a floor to a higher one, or into or out of what stands apart
    (the command line alone may start the emulator)."""
    wrong = []
    for a, b, ma, mb in sorted(edges):
        if a in APART or (b in APART and a != "cli"):
            wrong.append(f"{ma} imports {mb}: the emulator stands apart")
        elif b not in APART and (_floor_of(a) or 0) < (_floor_of(b) or 0):
            wrong.append(f"{ma} (floor {_floor_of(a)}) imports {mb} (floor {_floor_of(b)})")
    return wrong


def test_every_package_and_top_level_module_has_a_floor() -> None:
    units = {_unit(m) for m in _graph()} - {""}
    placed = set().union(*FLOORS) | APART
    assert units - placed == set(), f"give these a floor in FLOORS (or a package): {sorted(units - placed)}"
    assert placed - units == set(), f"FLOORS names what is gone: {sorted(placed - units)}"


def test_imports_point_down_the_floors() -> None:
    graph = _graph()
    assert graph["beamvec.errors"] == set()
    edges = _unit_edges(graph)
    assert len({(a, b) for a, b, _, _ in edges}) >= 40  # the graph was read, not empty
    assert _upward(edges) == []


def test_the_packages_import_one_way() -> None:
    units: dict[str, set[str]] = {}
    for a, b, _, _ in _unit_edges(_graph()):
        units.setdefault(a, set()).add(b)
        units.setdefault(b, set())
    assert _cycle(units) is None, " -> ".join(_cycle(units) or [])


def test_the_floor_check_sees_an_import_that_runs_up() -> None:
    """The checks above would pass on an empty graph: here they must fail."""
    up = {("route", "driver", "beamvec.route.lookup", "beamvec.driver.job")}
    assert _upward(up) == ["beamvec.route.lookup (floor 3) imports beamvec.driver.job (floor 5)"]
    assert _upward({("driver", "emulator", "beamvec.driver.job", "beamvec.emulator.server")})
    assert _upward({("cli", "emulator", "beamvec.cli", "beamvec.emulator.cli")}) == []
    assert _cycle({"route": {"write"}, "write": {"route"}}) is not None


def test_the_emulator_imports_nothing_of_the_client() -> None:
    """The emulator is Google's stand-in, written from Google's docs;
    it may import itself, the stdlib and third-party packages, never beamvec's
    client (backends, records, …), so it cannot mirror the client's mistakes."""
    emulator = [p for p in SRC.joinpath("emulator").rglob("*.py")]
    assert len(emulator) >= 10
    for path in emulator:
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: inside beamvec; must stay in the emulator
                    depth = len(path.relative_to(SRC).parts) - 1
                    assert node.level <= depth, f"{path.name} reaches out of the emulator"
                    continue
                names = [node.module or ""]
            for name in names:
                if name == "beamvec" or name.startswith("beamvec."):
                    assert name.startswith("beamvec.emulator"), f"{path.name} imports {name}"
