"""The house's size limits: no module over ~400 lines, no function
over ~80, in every package and module under src/beamvec/.

"~400" is held as 400 with a tolerance of ten lines (``MODULE_LINES``): a
module a few lines over (backends/genai.py at 404, quota/limiter.py at 401
when this was written) passes; one that grows past 410 is split along a
seam, not squeezed. A declarative table (the run's flags, one
``add_argument`` per flag) is the one function exception, named here."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

SRC = ROOT / "src" / "beamvec"
MODULE_LINES = 410  # ~400, with the tolerance the docstring states
FUNCTION_LINES = 80
DECLARATIVE = {("driver/flags.py", "add_beamvec_flags")}  # one add_argument per flag


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_package_is_checked() -> None:
    packages = {p.parent.relative_to(SRC).as_posix() for p in _modules()}
    # the top level and the packages of the flow, the driver and the Batch API (published layout)
    assert {".", "sources", "route", "embed", "write", "pipeline", "driver", "batchapi",
            "commands", "backends", "quota", "contract", "emulator"} <= packages


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
