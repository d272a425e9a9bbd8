"""A trained prototypical network: the encoder, its distance logits, and its file.

Training (``edgecxr.train.protonet``) writes ``protonet.pt`` and ``eval`` reads it
back for episode accuracy, so the file format and the encoder live here, in the
core package, not under ``train/``. ``protonet.pt`` holds the encoder weights and
the class prototypes as plain data (``torch.load(weights_only=True)`` safe).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgecxr.device.atomic import atomic_path
from edgecxr.errors import EdgecxrError
from edgecxr.models.checkpoint import read_payload
from edgecxr.models.registry import get_config

PROTONET_FORMAT = "edgecxr-protonet"


class ProtoEncoder(nn.Module):
    """Registered backbone + ``Linear(feature_dim, embed_dim)``: image -> embedding."""

    def __init__(self, backbone: nn.Module, feature_dim: int, embed_dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.embed = nn.Linear(feature_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.backbone(x))


def squared_distances(query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """``[Q, C]`` squared Euclidean distances; protonet logits are their negation."""
    return (query.unsqueeze(1) - protos.unsqueeze(0)).pow(2).sum(-1)


def support_prototypes(support_emb: torch.Tensor, n_way: int, k_shot: int) -> torch.Tensor:
    """Mean embedding per class of a class-major support set."""
    return support_emb.reshape(n_way, k_shot, -1).mean(1)


def save_protonet(path: str, encoder: ProtoEncoder, prototypes: torch.Tensor | None, contract: dict, **extra: Any) -> None:
    """Encoder weights and prototypes as plain data (``torch.load(weights_only=True)`` safe)."""
    encoder = encoder.module if hasattr(encoder, "module") else encoder
    payload = {
        "format": PROTONET_FORMAT, "format_version": 1,
        "encoder_state": {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()},
        "embed_dim": int(encoder.embed.out_features), "feature_dim": int(encoder.feature_dim),
        "prototypes": None if prototypes is None else prototypes.detach().cpu().contiguous(),
        "contract": contract, **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_protonet(path: str) -> tuple[ProtoEncoder, torch.Tensor | None, dict]:
    """``(encoder in eval mode, prototypes or None, payload)``; errors are one line."""
    payload = read_payload(path, PROTONET_FORMAT, "protonet file", "; it is written by `edgecxr train --method protonet`")
    contract = payload["contract"]
    arch = contract["arch"]
    backbone, dim = get_config(arch).builder(False)
    encoder = ProtoEncoder(backbone, dim, int(payload["embed_dim"]))
    try:
        encoder.load_state_dict(payload["encoder_state"])
    except RuntimeError as exc:
        raise EdgecxrError(f"{path}: encoder weights do not fit {arch} ({str(exc).splitlines()[0][:160]})") from exc
    return encoder.eval(), payload.get("prototypes"), payload
