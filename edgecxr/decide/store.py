"""Reading and writing a model file's decision block, whatever the file.

A checkpoint keeps it in its payload's contract (so every later ``convert`` carries
it into each export through ``Contract.with_io``); an export keeps it where its
format keeps the contract (ONNX metadata, TFLite sidecar). Both go through the
device's one door to a model file (``device/formats.py``); every write is atomic.
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
    from edgecxr.device.contract import ContractError
    from edgecxr.device.formats import read_contract as stored_contract

    try:
        contract = stored_contract(path)
    except ContractError as exc:
        raise EdgecxrError(f"{path}: {exc}") from exc
    if contract is None:
        raise EdgecxrError(f"{path}: no edgecxr contract in or beside this file; convert it with `edgecxr convert`")
    return contract


def write_decision(path: str, block: dict[str, Any]) -> None:
    """Replace the decision block in ``path``'s contract (atomically), nothing else."""
    from edgecxr.device.contract import ContractError
    from edgecxr.device.formats import write_contract

    contract = replace(read_contract(path), decision=block)
    try:
        write_contract(path, contract)
    except ContractError as exc:
        raise EdgecxrError(f"{path}: {exc}") from exc
