"""The house rules of issue #32 that a reader relies on, kept by a test rather than by review:
short functions in the library, stages that never import each other."""

from __future__ import annotations

import ast

from tests.helpers import REPO

LIBRARY = REPO / "dvt"
LONGEST = 80  # lines, decorators and docstring included


def parsed():
    for path in sorted(LIBRARY.rglob("*.py")):
        yield path.relative_to(REPO), ast.parse(path.read_text())


def test_no_function_in_the_library_is_longer_than_80_lines():
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, tree in parsed() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > LONGEST]
    assert long == []


def test_no_stage_imports_another():
    stages = {path.stem for path in (LIBRARY / "stages").glob("*.py")} - {"__init__"}
    assert {"train", "collect", "budget", "report"} <= stages
    found = []
    for path, tree in parsed():
        if path.parent.name != "stages":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [f"{path}:{node.lineno} {name}" for name in names
                      if name.startswith("dvt.stages.") and name.split(".")[2] != path.stem]
            # relative imports (from . import budget) count too
            if isinstance(node, ast.ImportFrom) and node.level:
                found.append(f"{path}:{node.lineno} relative import")
    assert found == []
