"""Which formats this install can produce: one whose packages are missing is skipped with
the pip command that installs them, never a traceback, and the other formats still run.

Generic for every format of the table: what a format needs is its default runtime's
module (``device/runtimes/``, ``Runtime.module``: convert verifies every artifact by
running it) plus its ``ExportFormat.requires`` (packages only the workstation uses to
produce it, per precision, e.g. NNCF for OpenVINO INT8). Nothing is imported to find
out (``importlib.util.find_spec``), so checking costs no start-up time.
"""
from __future__ import annotations

from typing import Any

from edgecxr.convert.formats.base import ExportFormat
from edgecxr.device.formats import RUNTIMES
from edgecxr.device.runtime_help import importable


def missing_package(fmt: ExportFormat, precision: str) -> str | None:
    """Why ``fmt`` cannot be produced at ``precision`` here (one line with the pip command), or ``None``."""
    runtime = RUNTIMES.get(fmt.runtimes[0]) if fmt.runtimes else None
    if runtime is not None and not any(importable(m) for m in runtime.modules):  # its fallbacks open the file too
        return f"{runtime.module} is not installed: {runtime.install}"
    for r in fmt.requires:
        if precision in r.precisions and not importable(r.module):
            return f"{r.module} is not installed: {r.install}"
    return None


def producible(run: Any, fmt: ExportFormat, steps: dict[str, Any]) -> dict[str, Any]:
    """The steps of ``fmt`` this install can produce; the others are recorded as skipped, with why."""
    ready = {}
    for precision, step in steps.items():
        why = missing_package(fmt, precision)
        if why:
            run.skip(step, why)
        else:
            ready[precision] = step
    return ready
