"""The package keeps its functions short enough to read in one screen (issue: no function over 60 lines).

A long function is split into named steps, each with a docstring saying why it exists;
this scan keeps it that way. Length is ``end_lineno - lineno + 1`` of the ``def``
(decorators excluded, docstring included), nested functions counted on their own.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE_DIRS = ("edgecxr", "train", "convert", "bench", "device")
MAX_LINES = 60


def long_functions(limit: int) -> list[str]:
    """``file:line name length`` of every function in the package longer than ``limit`` lines."""
    found = []
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > limit:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {length}")
    return found


def test_the_scan_sees_the_package():
    """A wrong root or folder list would make the real test pass on nothing."""
    assert all((ROOT / d / "__init__.py").exists() for d in PACKAGE_DIRS)
    assert long_functions(1), "the scan found no function at all"


def test_no_function_in_the_package_is_longer_than_60_lines():
    offenders = long_functions(MAX_LINES)
    assert not offenders, f"{len(offenders)} function(s) over {MAX_LINES} lines; split them into named steps:\n" + "\n".join(offenders)
