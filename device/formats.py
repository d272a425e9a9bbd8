"""The one door to a model file: which format it is, what travels with it, and its contract.

Everything that asks "what is this file?" or reads or writes a contract (the runner,
``open_model``, convert, calibrate, sitecheck, bench, the card) comes here, and this asks
the format rows of the runtime table (``runtimes/``), which know each format's suffixes,
companions and where it keeps its contract. Nothing else tests a suffix.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TypeVar

from .contract import Contract, ContractError
from .runtimes import DEVICE_FORMATS, RUNTIMES, register_format
from .runtimes.spec import DeviceFormat, Runtime

__all__ = ["DEVICE_FORMATS", "RUNTIMES", "DeviceFormat", "Runtime", "artifact_files", "by_suffix", "device_format_of",
           "format_of", "model_bytes", "model_suffixes", "read_contract", "register_format", "write_contract"]

Row = TypeVar("Row")


def by_suffix(path: str, rows: Iterable[Row], suffixes: Callable[[Row], Iterable[str]] = lambda r: (r.suffix,)) -> Row | None:
    """The row one of whose ``suffixes`` ends ``path`` (case-insensitive), the longest match winning,
    so two-part suffixes (``.ncnn.param``) beat their tails; ``None`` when none does. Both format
    tables (this device's and the workstation's) look files up through it."""
    name = path.lower()
    pairs = sorted(((s, r) for r in rows for s in suffixes(r)), key=lambda p: -len(p[0]))
    return next((r for s, r in pairs if name.endswith(s)), None)


def format_of(path: str) -> DeviceFormat | None:
    """The row of a model file, checkpoint included, from its suffix; ``None`` for a foreign file."""
    return by_suffix(path, DEVICE_FORMATS.values(), lambda f: f.suffixes)


def device_format_of(path: str) -> DeviceFormat | None:
    """The format of a model file a runtime of the table opens; ``None`` for a foreign file or
    a checkpoint (no runtime on the device runs one)."""
    fmt = format_of(path)
    return fmt if fmt is not None and fmt.runtimes else None


def read_contract(path: str) -> Contract | None:
    """The contract kept in or beside ``path`` (``None`` where it has none); a foreign file is
    refused, a broken contract raises :class:`ContractError`. Like the rows' own errors, the
    message does not name the file: the caller says which file it was reading."""
    fmt = format_of(path)
    if fmt is None:
        raise ContractError(f"not a model file of a known format ({', '.join(model_suffixes(all_rows=True))})")
    return fmt.read_contract(path)


def write_contract(path: str, contract: Contract) -> None:
    """Store ``contract`` where ``path``'s format keeps it, atomically; it must read back the same."""
    fmt = format_of(path)
    if fmt is None:
        raise ContractError("not a model file of a known format; cannot store a contract in it")
    Contract.from_dict(contract.to_dict())  # never write what would not read back
    fmt.write_contract(path, contract)


def artifact_files(path: str) -> list[str]:
    """The primary file and those of its companions that exist: what travels with it."""
    fmt = format_of(path)
    extra = [p for p in fmt.companion_paths(path) if os.path.exists(p)] if fmt else []
    return [path, *extra]


def model_bytes(path: str) -> int:
    """The model's size: the primary file and its companions, not the contract sidecar."""
    fmt = format_of(path)
    extra = fmt.companion_paths(path)[: len(fmt.companions)] if fmt else []
    return sum(os.path.getsize(p) for p in [path, *extra] if os.path.exists(p))


def model_suffixes(all_rows: bool = False) -> tuple[str, ...]:
    """Suffixes of the files a runtime here opens (``all_rows``: the checkpoint's too)."""
    return tuple(s for f in DEVICE_FORMATS.values() if all_rows or f.runtimes for s in f.suffixes)
