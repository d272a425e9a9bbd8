"""Checkpoint format: a state dict plus the model contract, as plain data only.

Loaded with ``torch.load(weights_only=True)`` so that a checkpoint downloaded from
anywhere can never run code. Everything besides tensors is str/int/float/list/dict.
This module writes and reads payloads only; turning one into a model is
``edgecxr.models.factory.load_model``, so the checkpoint format does not depend on the registry.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from edgecxr.device.atomic import atomic_path
from edgecxr.device.contract import Contract, ContractError, TensorSpec
from edgecxr.device.digest import file_sha256  # noqa: F401  (re-exported: convert and the tests name it here)
from edgecxr.device.preprocess import PreprocessSpec
from edgecxr.device.runtimes.pytorch_checkpoint import PAYLOAD_FORMAT
from edgecxr.errors import EdgecxrError
from edgecxr.versions import TRAINING, tool_versions

FORMAT = PAYLOAD_FORMAT
FORMAT_VERSION = 1


def make_contract(arch: str, classes: list[str], spec: PreprocessSpec, method: str = "supervised", source: dict | None = None) -> Contract:
    return Contract(
        arch=arch,
        classes=tuple(classes),
        preprocess=spec,
        input=TensorSpec("input", (1, spec.channels, spec.size, spec.size), "float32", "NCHW"),  # = Contract.model_input_shape()
        output=TensorSpec("logits", (1, len(classes)), "float32"),
        format="pytorch",
        precision="fp32",
        method=method,
        source=dict(source or {}),
        versions=tool_versions(TRAINING),
    )


def save_checkpoint(path: str, model: nn.Module, contract: Contract, **extra: Any) -> None:
    """``extra`` holds plain data only: train config, epoch, metrics, optimizer state."""
    model = model.module if hasattr(model, "module") else model  # unwrap DDP
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "state_dict": state, "contract": contract.to_dict(), **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_payload(path: str, fmt: str, what: str, hint: str) -> dict[str, Any]:
    """An edgecxr payload whose ``format`` is ``fmt``, read by the checkpoint's row of the device's
    formats table (``torch.load(weights_only=True)``); one-line errors."""
    from edgecxr.device.runtimes.pytorch_checkpoint import read_payload as row_read_payload

    if not os.path.exists(path):
        raise EdgecxrError(f"{path}: {what} not found")
    try:
        return row_read_payload(path, fmt, what, hint)
    except ContractError as exc:
        raise EdgecxrError(f"{path}: {exc}") from exc


def load_checkpoint(path: str) -> dict[str, Any]:
    return read_payload(path, FORMAT, "checkpoint", " (no contract); use --weights to load plain state dicts")


def contract_from_payload(payload: dict[str, Any], path: str = "checkpoint") -> Contract:
    """The contract of a payload already read (with its weights), parsed by the checkpoint's row."""
    from edgecxr.device.runtimes.pytorch_checkpoint import contract_of_payload

    try:
        return contract_of_payload(payload)
    except ContractError as exc:
        raise EdgecxrError(f"{path}: broken contract ({exc})") from exc
