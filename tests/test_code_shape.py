"""The package keeps its shape: functions short enough to read in one screen (no function over
60 lines, in the package and in scripts/), no import circle and no import that goes uphill,
function-level imports included.

A long function is split into named steps, each with a docstring saying why it exists;
this scan keeps it that way. Length is ``end_lineno - lineno + 1`` of the ``def``
(decorators excluded, docstring included), nested functions counted on their own.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE_DIRS = ("edgecxr", "train", "convert", "bench", "device")
SCANNED_DIRS = (*PACKAGE_DIRS, "scripts")  # the scripts behind the README's numbers are read too
MAX_LINES = 60


def long_functions(limit: int) -> list[str]:
    """``file:line name length`` of every function in the package and scripts/ longer than ``limit`` lines."""
    found = []
    for folder in SCANNED_DIRS:
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


def test_no_function_in_the_package_or_scripts_is_longer_than_60_lines():
    offenders = long_functions(MAX_LINES)
    assert not offenders, f"{len(offenders)} function(s) over {MAX_LINES} lines; split them into named steps:\n" + "\n".join(offenders)


def _import_cycles_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "scripts" / "dev" / "import_cycles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_circle_even_through_function_level_imports():
    checker = _import_cycles_script()
    known = checker.modules()
    graph = {m: checker.module_imports(m, p, known, lazy=True) for m, p in known.items()}
    assert len(known) > 100  # the package was found, subpackages included
    assert checker.find_cycles(graph) == []


def test_every_import_goes_downhill_device_core_stages_cli():
    """The device imports nothing above it, the core no stage, a stage no sibling except through
    the format table: the layering that lets a Pi run device/ alone and each stage be read alone."""
    checker = _import_cycles_script()
    known = checker.modules()
    graph = {m: checker.module_imports(m, p, known, lazy=True) for m, p in known.items()}
    assert checker.upward_arrows(graph) == []


def test_the_arrow_checker_sees_an_uphill_import_and_allows_the_format_table():
    checker = _import_cycles_script()
    graph = {"edgecxr.decide.store": {"edgecxr.convert.formats"}, "edgecxr.device.formats": {"edgecxr.errors"},
             "edgecxr.train.supervised": {"edgecxr.convert.formats.onnx.int8_target", "edgecxr.models.registry"},
             "edgecxr.bench.report": {"edgecxr.convert.formats"}, "edgecxr.cli.main": {"edgecxr.bench.command"}}
    assert checker.upward_arrows(graph) == ["edgecxr.decide.store -> edgecxr.convert.formats", "edgecxr.device.formats -> edgecxr.errors",
                                            "edgecxr.train.supervised -> edgecxr.convert.formats.onnx.int8_target"]


def test_the_import_checker_sees_a_circle_through_a_function_level_import(tmp_path):
    checker = _import_cycles_script()
    (tmp_path / "a.py").write_text("import x.b\n")
    (tmp_path / "b.py").write_text("def f():\n    from x import a\n")
    known = {"x.a": tmp_path / "a.py", "x.b": tmp_path / "b.py"}
    graph = {m: checker.module_imports(m, p, known, lazy=True) for m, p in known.items()}
    assert checker.find_cycles(graph) == [["x.a", "x.b"]]
    eager = {m: checker.module_imports(m, p, known, lazy=False) for m, p in known.items()}
    assert checker.find_cycles(eager) == []


def test_every_package_folder_is_listed_in_pyproject_so_a_wheel_carries_it():
    """The package-dir mapping needs an explicit package list; a subpackage left out installs
    fine in editable mode and is missing from the wheel."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {"edgecxr": "edgecxr", **config["package-dir"]}
    folders = set()
    for pkg, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            folders.add(".".join((pkg, *rel)))
    assert folders - set(config["packages"]) == set()
