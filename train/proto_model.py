"""Prototypical-network training pieces: the starting encoder, BatchNorm statistics,
whole-set prototypes, and folding them into an ordinary classifier.

Why folding works: with embedding ``e = W_e f + b_e`` of backbone features ``f`` and
prototypes ``p_c``, the protonet logit is ``-||e - p_c||^2 = 2 p_c.e - ||p_c||^2 - ||e||^2``.
The last term is the same for every class, so it cancels in softmax and argmax; the
rest is linear in ``f``: ``W = 2 P W_e`` and ``b = 2 P b_e - ||p_c||^2``. The result is
a plain :class:`CXRClassifier`, which ``eval``, ``convert``, ``bench`` and the device
runner use with no special case. ``protonet.pt`` keeps the encoder and prototypes
for episode evaluation; the encoder and that file are ``edgecxr.models.proto_encoder``,
because ``eval`` reads them too.
"""
from __future__ import annotations

import copy
from typing import Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgecxr.errors import EdgecxrError
from edgecxr.models.factory import build_model
from edgecxr.models.proto_encoder import ProtoEncoder
from edgecxr.models.registry import CXRClassifier, get_config


def build_encoder(arch: str, num_classes: int, embed_dim: int = 128, pretrained: bool = False, weights: str | None = None) -> ProtoEncoder:
    """Any registered backbone, with ImageNet or local starting weights as for supervised runs."""
    clf = build_model(arch, max(num_classes, 2), pretrained=pretrained, weights=weights)
    return ProtoEncoder(clf.backbone, clf.feature_dim, embed_dim)


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
    from edgecxr.progress import progress as progress_bar

    encoder.eval()
    embs, ys = [], []
    loader = DataLoader(dataset, batch_size, shuffle=False)
    for x, y in progress_bar(loader, desc=desc, unit="batch", enabled=progress):
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
