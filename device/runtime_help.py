"""What the runner says about runtimes, written from the runtime table so it cannot drift:
its ``--model``/``--runtime`` help and ``--list-runtimes`` (which runtimes this device has).
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache

from .runtimes import DEVICE_FORMATS, RUNTIMES
from .runtimes.spec import Runtime


def model_help() -> str:
    parts = []
    for f in (f for f in DEVICE_FORMATS.values() if f.runtimes):  # the checkpoint's row has no runtime here
        where = f"contract in MODEL{f.suffix}.json" if not f.contract_in_file else "contract inside"
        extra = "".join(f", with {c.format(path='MODEL' + f.suffix, stem='MODEL')}" for c in f.companions)
        parts.append(f"MODEL{f.suffix} ({f.name}{extra}; {where}; runtimes: {', '.join(f.runtimes)})")
    return "the model file: " + "; ".join(parts)


def runtime_help() -> str:
    defaults = ", ".join(f"{f.runtimes[0]} for {f.suffix}" for f in DEVICE_FORMATS.values() if f.runtimes)
    rows = "; ".join(f"{r.name}: {r.description}" for r in RUNTIMES.values())
    return f"which runtime opens the model (default: the first for its format: {defaults}). {rows}. See --list-runtimes"


def importable(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it (no start-up cost); also
    convert's check of which formats this install can produce (``formats/availability.py``)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, a module without a spec
        return False


@lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    """Top-level module -> the distributions providing it: one scan of the installed packages."""
    try:
        from importlib.metadata import packages_distributions  # Python 3.10+; install.sh accepts 3.9
    except ImportError:
        return {}
    return packages_distributions()


def _distribution(module: str) -> str:
    """``"ai-edge-litert 2.3.0"`` for ``ai_edge_litert``: the package a user would install."""
    from importlib.metadata import PackageNotFoundError, version  # only --list-runtimes needs it: off the runner's start-up

    top = module.split(".")[0]
    for dist in _distributions().get(top) or [top, top.replace("_", "-")]:
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return top


def installed(runtime: Runtime) -> str | None:
    """The package and version of the first of the runtime's modules importable here, else ``None``
    (found without importing it: checking costs no start-up time)."""
    module = next((m for m in runtime.modules if importable(m)), None)
    return None if module is None else _distribution(module)


def list_runtimes_lines() -> list[str]:
    """One line per runtime: the formats it opens, and whether it is installed or how to install it."""
    lines = []
    width = max(len(n) for n in RUNTIMES)
    for r in RUNTIMES.values():
        suffixes = ", ".join(DEVICE_FORMATS[f].suffix for f in r.opens if f in DEVICE_FORMATS)
        have = installed(r)
        how = f"install.sh {r.install_flag}" if r.install_flag else "install.sh"
        state = f"installed ({have})" if have else f"missing: {how}, or {r.install}"
        lines.append(f"{r.name:<{width}}  opens {suffixes:<20} {state}")
    return lines
