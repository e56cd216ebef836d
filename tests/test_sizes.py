"""The house's size limits (issue 34): no module over ~400 lines, no function
over ~80, in the packages split along their seams so far. A declarative
table (the run's flags) is the one exception, named here."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "beamvec"
CHECKED = ("commands", "driver", "sources")
MODULE_LINES = 400
FUNCTION_LINES = 80
DECLARATIVE = {("driver/flags.py", "add_beamvec_flags")}  # one add_argument per flag


def _modules() -> list[Path]:
    return sorted(p for package in CHECKED for p in (SRC / package).rglob("*.py"))


def test_the_packages_checked_hold_modules() -> None:
    assert len(_modules()) > 20  # the glob found the packages


def test_no_module_over_the_limit() -> None:
    over = [f"{p.relative_to(SRC)}: {n}" for p in _modules()
            if (n := len(p.read_text().splitlines())) > MODULE_LINES]
    assert over == []


def test_no_function_over_the_limit() -> None:
    over = []
    for path in _modules():
        where = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > FUNCTION_LINES and (where, node.name) not in DECLARATIVE:
                    over.append(f"{where} {node.name}: {lines}")
    assert over == []
