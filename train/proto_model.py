"""Prototypical-network pieces: the embedding encoder, prototypes, and folding them
into an ordinary classifier.

Why folding works: with embedding ``e = W_e f + b_e`` of backbone features ``f`` and
prototypes ``p_c``, the protonet logit is ``-||e - p_c||^2 = 2 p_c.e - ||p_c||^2 - ||e||^2``.
The last term is the same for every class, so it cancels in softmax and argmax; the
rest is linear in ``f``: ``W = 2 P W_e`` and ``b = 2 P b_e - ||p_c||^2``. The result is
a plain :class:`CXRClassifier`, which ``eval``, ``convert``, ``bench`` and the device
runner use with no special case. ``protonet.pt`` keeps the encoder and prototypes
(plain data, ``weights_only``-loadable) for episode evaluation.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgecxr.atomic import atomic_path
from edgecxr.errors import EdgecxrError
from edgecxr.models import build_model
from edgecxr.registry import CXRClassifier, get_config

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


def build_encoder(arch: str, num_classes: int, embed_dim: int = 128, pretrained: bool = False, weights: str | None = None) -> ProtoEncoder:
    """Any registered backbone, with ImageNet or local starting weights as for supervised runs."""
    clf = build_model(arch, max(num_classes, 2), pretrained=pretrained, weights=weights)
    return ProtoEncoder(clf.backbone, clf.feature_dim, embed_dim)


def squared_distances(query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """``[Q, C]`` squared Euclidean distances; protonet logits are their negation."""
    return (query.unsqueeze(1) - protos.unsqueeze(0)).pow(2).sum(-1)


def support_prototypes(support_emb: torch.Tensor, n_way: int, k_shot: int) -> torch.Tensor:
    """Mean embedding per class of a class-major support set."""
    return support_emb.reshape(n_way, k_shot, -1).mean(1)


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute every BatchNorm's running statistics for the current weights (PreciseBN).

    An epoch of protonet training is only ``episodes`` optimizer steps (20 by default),
    too few for BatchNorm's running averages (momentum 0.1) to forget their initial
    values: a network trained from scratch then gives almost the same embedding for
    every image in eval mode, and validation sees chance-level distances. Averaging the
    batch statistics of a few training episodes (no gradient) fixes the eval-mode
    network to what training actually sees. Returns the number of batches used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    n = 0
    for x in batches:
        model(x.contiguous(memory_format=torch.channels_last))
        n += 1
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)
    return n


@torch.no_grad()
def embed_dataset(encoder: nn.Module, dataset: Dataset, batch_size: int = 64, progress: bool = False, desc: str = "embedding") -> tuple[torch.Tensor, np.ndarray]:
    from tqdm import tqdm

    encoder.eval()
    embs, ys = [], []
    loader = DataLoader(dataset, batch_size, shuffle=False)
    for x, y in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        embs.append(encoder(x.contiguous(memory_format=torch.channels_last)))
        ys.append(np.asarray(y))
    return torch.cat(embs), np.concatenate(ys)


def class_prototypes(emb: torch.Tensor, labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Mean embedding of each class over all given images (whole-set classification)."""
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = [i for i, n in enumerate(counts) if n == 0]
        raise EdgecxrError(f"no training image for class index(es) {missing}: every class needs at least one image for its prototype")
    lab = torch.as_tensor(labels, dtype=torch.long)
    return torch.stack([emb[lab == c].mean(0) for c in range(num_classes)])


def fold_into_classifier(encoder: ProtoEncoder, prototypes: torch.Tensor, arch: str) -> CXRClassifier:
    """A :class:`CXRClassifier` whose softmax equals softmax(-squared distance); see module docstring."""
    P = prototypes.detach().double()
    W_e = encoder.embed.weight.detach().double()
    b_e = encoder.embed.bias.detach().double()
    model = CXRClassifier(copy.deepcopy(encoder.backbone), encoder.feature_dim, P.shape[0], get_config(arch).dropout)
    linear = model.head[1]
    with torch.no_grad():
        linear.weight.copy_((2.0 * P @ W_e).float())
        linear.bias.copy_((2.0 * P @ b_e - P.pow(2).sum(1)).float())
    return model.eval()


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
    from edgecxr.checkpoint import read_payload

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


@torch.no_grad()
def run_episodes(encoder: nn.Module, episodes: Dataset, num_classes: int, progress: bool = False, desc: str = "episodes") -> dict[str, Any]:
    """Loss and accuracy per episode, plus the pooled query labels/predictions in dataset class ids."""
    from tqdm import tqdm

    encoder.eval()
    spec = episodes.spec
    losses, accs, ys, preds = [], [], [], []
    for sx, qx, qy, cls in tqdm(DataLoader(episodes, batch_size=None), desc=desc, unit="episode", disable=not progress, leave=False):
        emb = encoder(torch.cat([sx, qx]).contiguous(memory_format=torch.channels_last))
        protos = support_prototypes(emb[: len(sx)], spec.n_way, spec.k_shot)
        logits = -squared_distances(emb[len(sx):], protos)
        losses.append(float(nn.functional.cross_entropy(logits, qy)))
        pred = logits.argmax(1)
        accs.append(float((pred == qy).float().mean()))
        ys.append(cls[qy].numpy())
        preds.append(cls[pred].numpy())
    return {"loss": float(np.mean(losses)), "accuracies": accs, "losses": losses,
            "y": np.concatenate(ys), "pred": np.concatenate(preds), "num_classes": num_classes}
