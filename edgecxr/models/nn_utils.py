"""Structural queries on torch modules that several stages share.

Kept apart from the registry (which knows architectures) and from the stages that
use them (QAT, the TFLite weight import), so none of those depends on another.
"""
from __future__ import annotations

from torch import nn


def conv_batch_norms(module: nn.Module) -> list[tuple[str, nn.Conv2d, str | None, nn.BatchNorm2d | None]]:
    """Every conv, in module order, with the batch norm that directly follows it (or
    None): the pairs an export folds into one convolution."""
    mods = list(module.named_modules())
    out: list[tuple[str, nn.Conv2d, str | None, nn.BatchNorm2d | None]] = []
    for i, (name, m) in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            bn_name, bn = mods[i + 1] if i + 1 < len(mods) else (None, None)
            out.append((name, m, bn_name, bn) if isinstance(bn, nn.BatchNorm2d) else (name, m, None, None))
    return out
