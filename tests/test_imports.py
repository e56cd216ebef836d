"""The import graph (issue 11): no cycle among beamvec's modules, counting the
imports hidden inside functions too, and errors.py at the bottom."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "beamvec"


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


def test_errors_is_the_bottom_and_backends_stay_below_the_core() -> None:
    graph = _graph()
    assert graph["beamvec.errors"] == set()
    core = {"beamvec.pipeline.worker", "beamvec.pipeline.transforms", "beamvec.driver.job", "beamvec.embed.embedder", "beamvec.route.router",
            "beamvec.contract", "beamvec.embed.collector", "beamvec.driver.resolve"}  # retry.py sits below backends
    for name, targets in graph.items():
        if name.startswith("beamvec.backends"):
            assert not targets & core, f"{name} imports {targets & core}"
    assert not graph["beamvec.retry"] & {m for m in graph if m.startswith("beamvec.backends")}


def test_the_emulator_imports_nothing_of_the_client() -> None:
    """Issue 30: the emulator is Google's stand-in, written from Google's docs;
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
