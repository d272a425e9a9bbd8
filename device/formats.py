"""Which file is which device format, and what travels with it: the suffix helpers over
the runtime table (``runtimes/``), which defines the formats and the runtimes opening them.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TypeVar

from .runtimes import DEVICE_FORMATS, RUNTIMES, register_format
from .runtimes.spec import DeviceFormat, Runtime

__all__ = ["DEVICE_FORMATS", "RUNTIMES", "DeviceFormat", "Runtime", "artifact_files", "by_suffix", "device_format_of",
           "model_bytes", "model_suffixes", "register_format"]

Row = TypeVar("Row")


def by_suffix(path: str, rows: Iterable[Row], suffixes: Callable[[Row], Iterable[str]] = lambda r: (r.suffix,)) -> Row | None:
    """The row one of whose ``suffixes`` ends ``path`` (case-insensitive), the longest match winning,
    so two-part suffixes (``.ncnn.param``) beat their tails; ``None`` when none does. Both format
    tables (this device's and the workstation's) look files up through it."""
    name = path.lower()
    pairs = sorted(((s, r) for r in rows for s in suffixes(r)), key=lambda p: -len(p[0]))
    return next((r for s, r in pairs if name.endswith(s)), None)


def device_format_of(path: str) -> DeviceFormat | None:
    """The format of a model file, from its suffix; ``None`` when no runtime here opens it."""
    return by_suffix(path, DEVICE_FORMATS.values())


def artifact_files(path: str) -> list[str]:
    """The primary file and those of its companions that exist: what travels with it."""
    fmt = device_format_of(path)
    extra = [p for p in fmt.companion_paths(path) if os.path.exists(p)] if fmt else []
    return [path, *extra]


def model_bytes(path: str) -> int:
    """The model's size: the primary file and its companions, not the contract sidecar."""
    fmt = device_format_of(path)
    extra = fmt.companion_paths(path)[: len(fmt.companions)] if fmt else []
    return sum(os.path.getsize(p) for p in [path, *extra] if os.path.exists(p))


def model_suffixes() -> tuple[str, ...]:
    return tuple(f.suffix for f in DEVICE_FORMATS.values())
