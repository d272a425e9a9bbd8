"""Print import cycles and upward arrows between the modules of the edgecxr package; exit 1 if there is any.

Arrows go downhill only: the device (``edgecxr.device``, what a Pi runs) imports nothing
above it; the core (``edgecxr.*``: data, models, decide, site, card, eval, explain) imports
the device and itself, never a stage; a stage (``train``, ``convert``, ``bench``) imports
the core and the device, and a sibling stage only through the format table
(``edgecxr.convert.formats``); the command line (``edgecxr.cli``, ``__main__``) sits on top.

By default only module-level imports count (an import inside a function runs when
the function does, so it cannot break package initialisation); ``--lazy`` adds the
imports inside functions too, which shows the modules that still lean on each other.
Only imports of edgecxr's own modules count. The package maps subpackages onto top-level folders (pyproject.toml's
``package-dir``); that mapping is repeated here so the check needs no install.

    python scripts/dev/import_cycles.py          # from the repository root
    python scripts/dev/import_cycles.py --lazy   # function-level imports as well
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # scripts/dev/ -> repo
PACKAGES = {"edgecxr": "edgecxr", "edgecxr.train": "train", "edgecxr.convert": "convert",
            "edgecxr.bench": "bench", "edgecxr.device": "device"}


def modules() -> dict[str, Path]:
    """Every module of the package, subpackages at any depth included (``edgecxr.convert.formats.*``:
    a flat glob missed them, and with them a 9-module circle through the format table)."""
    out: dict[str, Path] = {}
    for pkg, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join((pkg, *parts))] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The known module ``name`` refers to, or its longest known parent (``pkg.func`` -> ``pkg``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def module_imports(mod: str, path: Path, known: dict[str, Path], lazy: bool = False) -> set[str]:
    """edgecxr modules imported at module level (top-level statements, ``if``/``try`` bodies
    included), or anywhere in the file with ``lazy``."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.stem == "__init__"
    found: set[str] = set()
    stack = list(ast.walk(tree)) if lazy else list(tree.body)
    while stack:
        node = stack.pop()
        if not lazy and isinstance(node, (ast.If, ast.Try)):
            stack.extend(ast.iter_child_nodes(node))
            continue
        if not lazy and isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = mod if is_pkg else mod.rpartition(".")[0]
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}" if base else parent
            # "from pkg import name" imports pkg, and pkg.name when that is a module
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name, known)
            # an importer's own ancestor packages are imported before it runs, so naming one
            # ("from pkg import sibling" inside pkg) closes no circle; the sibling still counts
            if target and target != mod and not mod.startswith(target + "."):
                found.add(target)
    # importing a.b.c first imports its parent packages a and a.b, except the importer's own
    # ancestors: Python imports those before the importer itself, so they close no circle
    for target in list(found):
        parent = target.rpartition(".")[0]
        while parent:
            if parent in known and parent != mod and not mod.startswith(parent + "."):
                found.add(parent)
            parent = parent.rpartition(".")[0]
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted: every
    module in one can reach every other, so each is a knot to cut, however long its cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _cycle_in(comp: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, for the report."""
    members, start = set(comp), comp[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return comp


STAGES = ("train", "convert", "bench")
# What a stage may import from a sibling stage: the format table, read by convert and bench alike.
FORMAT_TABLE = ("edgecxr.convert", "edgecxr.convert.formats", "edgecxr.convert.formats.base")


def layer(mod: str) -> tuple[int, str]:
    """(height, group): 0 device, 1 core, 2 a stage (the group is its name), 3 the command line."""
    part = (mod.split(".") + [""])[1]
    if part == "device":
        return 0, "device"
    if part in STAGES:
        return 2, part
    if part in ("cli", "__main__"):
        return 3, "cli"
    return 1, "core"


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    """``importer -> imported`` for every import that goes up a layer, or sideways between two
    stages other than into the format table."""
    found = []
    for mod in sorted(graph):
        (h, g) = layer(mod)
        for target in sorted(graph[mod]):
            (th, tg) = layer(target)
            if th > h or (th == h == 2 and tg != g and target not in FORMAT_TABLE):
                found.append(f"{mod} -> {target}")
    return found


def main(argv: list[str]) -> int:
    lazy = "--lazy" in argv
    known = modules()
    graph = {mod: module_imports(mod, path, known, lazy) for mod, path in known.items()}
    knots = find_cycles(graph)
    arrows = upward_arrows(graph)
    for arrow in arrows:
        print(f"upward arrow: {arrow}")
    for comp in knots:
        print(f"{len(comp)} modules import each other: " + ", ".join(comp))
        print("  e.g. " + " -> ".join(_cycle_in(comp, graph)))
    edges = sum(len(v) for v in graph.values())
    kind = "module- and function-level" if lazy else "module-level"
    print(f"{len(known)} modules, {edges} {kind} imports within edgecxr, {len(knots)} import circle(s), "
          f"{len(arrows)} upward arrow(s)")
    return 1 if knots or arrows else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
