"""Which training images an epoch draws: every image once, or balanced by class and source.

Where one source supplies most images of a class (800 RSNA normals beside 240 from
the TB database), plain shuffling lets the big source define the class. ``source``
balance gives every class the same share of draws and, within a class, every
source the same share, so a small second source weighs as much as the first; draws
are with replacement, ``len(dataset)`` per epoch, seeded by (seed, epoch) and
sharded by rank under DDP (each process takes every world_size-th draw).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

BALANCE_MODES = ("none", "class", "source")


def balance_weights(labels: Sequence[int], sources: Sequence[str], mode: str) -> np.ndarray:
    """Per-image draw probabilities: equal mass per class (``class``), then per source within a class (``source``)."""
    if mode not in BALANCE_MODES[1:]:
        raise ValueError(f"balance mode {mode!r}: choose one of {BALANCE_MODES[1:]}")
    keys = list(zip(labels, sources)) if mode == "source" else [(y, "") for y in labels]
    per_key = Counter(keys)
    per_class = Counter(y for y, _s in per_key)  # strata per class
    n_classes = len(per_class)
    w = np.array([1.0 / (n_classes * per_class[k[0]] * per_key[k]) for k in keys])
    return w / w.sum()


class BalancedSampler(Sampler[int]):
    def __init__(self, labels: Sequence[int], sources: Sequence[str], mode: str, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.p = balance_weights(labels, sources, mode)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(range(self.rank, len(self.p), self.world_size))

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch, 0xBA1))
        draws = rng.choice(len(self.p), size=len(self.p), replace=True, p=self.p)
        return iter(int(i) for i in draws[self.rank :: self.world_size])
