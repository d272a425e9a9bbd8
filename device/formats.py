"""Which file is which device format, and what travels with it: the suffix helpers over
the runtime table (``runtimes/``), which defines the formats and the runtimes opening them.
"""
from __future__ import annotations

import os

from .runtimes import DEVICE_FORMATS, RUNTIMES, register_format
from .runtimes.spec import DeviceFormat, Runtime

__all__ = ["DEVICE_FORMATS", "RUNTIMES", "DeviceFormat", "Runtime", "artifact_files", "device_format_of", "model_bytes",
           "model_suffixes", "register_format"]


def device_format_of(path: str) -> DeviceFormat | None:
    """The format of a model file, from its suffix (the longest that matches: ``.ncnn.param``);
    ``None`` when no runtime here opens it."""
    name = path.lower()
    return next((f for f in sorted(DEVICE_FORMATS.values(), key=lambda f: -len(f.suffix)) if name.endswith(f.suffix)), None)


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
