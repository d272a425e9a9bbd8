"""Reading and writing a model file's decision block, whatever the file.

A checkpoint keeps it in its payload's contract (so every later ``convert`` carries
it into each export through ``Contract.with_io``); an export keeps it where its
format keeps the contract (ONNX metadata, TFLite sidecar), through the format
table's ``write_contract``. Every write is atomic.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from edgecxr.device.contract import Contract
from edgecxr.errors import EdgecxrError


def resolve_model(path: str) -> str:
    """A run folder means its ``best.pt``; a file is itself."""
    if os.path.isdir(path):
        ckpt = os.path.join(path, "best.pt")
        if not os.path.exists(ckpt):
            raise EdgecxrError(f"{path}: no best.pt in this folder; pass a checkpoint, .onnx or .tflite file")
        return ckpt
    if not os.path.exists(path):
        raise EdgecxrError(f"{path}: no such file or folder")
    return path


def read_contract(path: str) -> Contract:
    """The contract of any model file, checkpoint or export, through its row of the formats table."""
    from edgecxr.convert.formats import format_of

    fmt = format_of(path)
    contract = fmt.read_contract(path) if fmt else None
    if contract is None:
        raise EdgecxrError(f"{path}: no edgecxr contract in or beside this file; convert it with `edgecxr convert`")
    return contract


def write_decision(path: str, block: dict[str, Any]) -> None:
    """Replace the decision block in ``path``'s contract (atomically), nothing else."""
    from edgecxr.convert.formats import format_of

    fmt = format_of(path)
    if fmt is None:
        raise EdgecxrError(f"{path}: not a model file edgecxr can write a contract into")
    fmt.write_contract(path, replace(read_contract(path), decision=block))
