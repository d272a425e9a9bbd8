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
    from edgecxr.convert.formats import format_of
    from edgecxr.runtime import is_checkpoint

    if is_checkpoint(path):
        from edgecxr.checkpoint import contract_from_payload, load_checkpoint

        return contract_from_payload(load_checkpoint(path), path)
    fmt = format_of(path)
    contract = fmt.read_contract(path) if fmt else None
    if contract is None:
        raise EdgecxrError(f"{path}: no edgecxr contract in or beside this file; convert it with `edgecxr convert`")
    return contract


def write_decision(path: str, block: dict[str, Any]) -> None:
    """Replace the decision block in ``path``'s contract (atomically), nothing else."""
    from edgecxr.convert.formats import format_of
    from edgecxr.runtime import is_checkpoint

    if is_checkpoint(path):
        import torch

        from edgecxr.atomic import atomic_path
        from edgecxr.checkpoint import load_checkpoint

        payload = load_checkpoint(path)
        payload["contract"] = {**payload["contract"], "decision": block}
        Contract.from_dict(payload["contract"])  # never write a contract that would not read back
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return
    fmt = format_of(path)
    if fmt is None:
        raise EdgecxrError(f"{path}: not a model file edgecxr can write a contract into")
    fmt.write_contract(path, replace(read_contract(path), decision=block))
