"""The output's column names live in ``contract.columns`` alone:
no module names a vector, dead-letter or checkpoint column with a string
literal when it reads or writes one, so renaming a column is one edit."""

from __future__ import annotations

import ast
from pathlib import Path

import beamvec
from beamvec.contract import DEAD_LETTER_SCHEMA, columns, vector_schema

SRC = Path(beamvec.__file__).parent
NAMES = set(vector_schema(1).names) | set(DEAD_LETTER_SCHEMA.names)
#: Calls whose string arguments are column names when they are one.
COLUMN_CALLS = {"column", "field", "iter_batches", "read_row_group", "merge_insert", "create_index",
                "read_table", "ParquetFile"}
#: Not the output's files: the emulator speaks the API's JSON, contract/ is the home.
SKIP = {"contract", "emulator"}


def _strings(node: ast.AST) -> list[ast.Constant]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node]
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [c for e in node.elts for c in _strings(e)]
    return []


def _literals(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = [*node.args, *(k.value for k in node.keywords if k.arg == "columns")]
            if name in COLUMN_CALLS:
                found += [(c.lineno, c.value) for a in args for c in _strings(a) if c.value in NAMES]
            elif name in ("table", "from_pylist", "from_pydict"):  # pa.table({...}) and friends
                dicts = [d for a in node.args for d in ast.walk(a) if isinstance(d, ast.Dict)]
                found += [(k.lineno, k.value) for d in dicts for k in d.keys
                          if isinstance(k, ast.Constant) and k.value in NAMES]
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id.endswith("COLUMNS") for t in node.targets
        ):
            found += [(c.lineno, c.value) for c in _strings(node.value) if c.value in NAMES]
    return sorted(found)


def test_no_module_names_an_output_column_with_a_literal():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if SKIP & set(path.relative_to(SRC).parts[:-1]):
            continue
        for line, value in _literals(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(SRC)}:{line}: {value!r}")
    assert not offenders, "use beamvec.contract.columns:\n" + "\n".join(offenders)


def test_the_schemas_are_named_from_columns():
    names = {v for k, v in vars(columns).items() if k.isupper()}
    assert set(vector_schema(4).names) | set(DEAD_LETTER_SCHEMA.names) == names
    assert vector_schema(4).field(columns.VECTOR).type.list_size == 4
    assert DEAD_LETTER_SCHEMA.field(columns.REASON).nullable is False


def test_the_scan_finds_a_literal():
    tree = ast.parse('batch.column("vector")\nCOLUMNS = ["id", "x"]\npa.table({"content_hash": a})\n')
    assert _literals(tree) == [(1, "vector"), (2, "id"), (3, "content_hash")]
