"""The PyTorch checkpoint's row: a format with a contract (in its payload) and no runtime here.

Training writes it and ``convert`` reads it; the device never runs one (torch is not part
of the Pi's stack), but the checkpoint is still a row of this table so that every reader
and writer of a contract, checkpoint or export, goes through the same door
(``formats.read_contract``/``write_contract``) instead of testing for ``.pt``. The core
adds the runtime that opens it (``torch``, ``edgecxr.models.runtime``). torch is imported
only when a checkpoint's contract is read or written.
"""
from __future__ import annotations

import os
from typing import Any

from ..contract import Contract, ContractError
from .spec import DeviceFormat

PAYLOAD_FORMAT = "edgecxr-checkpoint"


def read_payload(path: str, fmt: str = PAYLOAD_FORMAT, what: str = "checkpoint",
                 hint: str = " (no contract); use --weights to load plain state dicts") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of an edgecxr file whose ``format`` is ``fmt``: a file
    from anywhere can never run code. Training's own payloads (protonet files) are read here too."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for bad files
        raise ContractError(f"not a readable {what}: corrupt, truncated or not a torch file ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ContractError(f"not an edgecxr {what}{hint}")
    return payload


def contract_of_payload(payload: dict[str, Any]) -> Contract:
    try:
        return Contract.from_dict(payload["contract"])
    except KeyError as exc:
        raise ContractError(f"broken contract (missing {exc})") from exc


def read_checkpoint_contract(path: str) -> Contract:
    return contract_of_payload(read_payload(path))


def write_checkpoint_contract(path: str, contract: Contract) -> None:
    """Replace the payload's contract, weights untouched, atomically."""
    import torch

    from ..atomic import atomic_path

    payload = read_payload(path)
    payload["contract"] = contract.to_dict()  # formats.write_contract checked that it reads back
    with atomic_path(os.fspath(path)) as tmp:
        torch.save(payload, tmp)


FORMATS = (DeviceFormat("pytorch", ".pt", extra_suffixes=(".pth",), read=read_checkpoint_contract, write=write_checkpoint_contract),)
RUNTIMES = ()
