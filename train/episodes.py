"""N-way K-shot Q-query episodes drawn reproducibly from one split.

An episode is a small classification task: ``n_way`` classes, ``k_shot`` support
images per class (they define the prototypes) and ``q_query`` query images per class
(they are classified and give the loss). Episodes are a torch ``Dataset`` of
episodes, so a ``DataLoader(batch_size=None)`` can load them with workers; each
episode's draw depends only on ``(seed, epoch, episode index)``, which makes the
validation and test episodes identical across runs and processes.
"""
from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from edgecxr.data import Sample
from edgecxr.errors import EdgecxrError


@dataclass(frozen=True)
class EpisodeSpec:
    n_way: int = 3
    k_shot: int = 5
    q_query: int = 5
    episodes: int = 20

    @property
    def per_class(self) -> int:
        return self.k_shot + self.q_query


def check_episode_fit(labels: list[int] | np.ndarray, spec: EpisodeSpec, what: str) -> None:
    """Refuse splits that cannot fill one episode, with the numbers that would fix it."""
    counts = np.bincount(np.asarray(labels, dtype=int)) if len(labels) else np.zeros(0, int)
    usable = int((counts >= spec.per_class).sum())
    if usable < spec.n_way:
        raise EdgecxrError(
            f"{what}: an episode needs {spec.n_way} classes with at least k_shot + q_query = {spec.per_class} images each, "
            f"but the class sizes are {counts.tolist()}; lower --n-way, --k-shot or --q-query (or raise --train-shots)"
        )


def draw_episode(by_class: dict[int, np.ndarray], spec: EpisodeSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of support (class-major), query (class-major) and the episode's class ids."""
    eligible = sorted(c for c, idx in by_class.items() if len(idx) >= spec.per_class)
    classes = np.sort(rng.choice(eligible, size=spec.n_way, replace=False))
    support, query = [], []
    for c in classes:
        pick = rng.choice(by_class[int(c)], size=spec.per_class, replace=False)
        support.append(pick[: spec.k_shot])
        query.append(pick[spec.k_shot:])
    return np.concatenate(support), np.concatenate(query), classes


class EpisodeDataset(Dataset):
    """Item ``e`` is one episode: ``(support_x, query_x, query_y, class_ids)``.

    ``query_y`` indexes the episode's own classes (0..n_way-1); ``class_ids`` maps
    them back to the dataset's classes. ``base`` is any dataset returning
    ``(tensor, label)`` (``CXRDataset``), so augmentation and caching are reused.
    ``set_epoch`` redraws training episodes; evaluation episodes keep epoch 0.
    """

    def __init__(self, base: Dataset, labels: list[int] | np.ndarray, spec: EpisodeSpec, seed: int = 0, what: str = "split",
                 rank: int = 0, world_size: int = 1) -> None:
        check_episode_fit(labels, spec, what)
        self.base = base
        self.spec = spec
        self.seed = seed
        self.epoch = 0
        groups: dict[int, list[int]] = defaultdict(list)
        for i, y in enumerate(labels):
            groups[int(y)].append(i)
        self.by_class = {c: np.asarray(v) for c, v in groups.items()}
        # DDP: each process takes every world_size-th episode, so together they cover them once
        self.episode_ids = list(range(rank, spec.episodes, world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.episode_ids)

    def indices(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, self.epoch, self.episode_ids[i]))
        return draw_episode(self.by_class, self.spec, rng)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        support, query, classes = self.indices(i)
        sx = torch.stack([self.base[int(j)][0] for j in support])
        qx = torch.stack([self.base[int(j)][0] for j in query])
        qy = torch.arange(self.spec.n_way).repeat_interleave(self.spec.q_query)
        return sx, qx, qy, torch.as_tensor(classes, dtype=torch.long)


def per_class_subset(samples: list[Sample], k: int, seed: int = 0) -> list[Sample]:
    """Exactly ``k`` samples of each class (all of a smaller class), the same for a seed.

    The few-shot regime of ``--train-shots``: the model never sees the other images.
    """
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    out: list[Sample] = []
    for label in sorted(by_class):
        group = sorted(by_class[label], key=lambda s: s.file)
        rng = np.random.default_rng((seed, zlib.crc32(label.encode())))
        take = sorted(rng.permutation(len(group))[: min(k, len(group))])
        out.extend(group[i] for i in take)
    return out


def mean_ci95(values: list[float] | np.ndarray) -> tuple[float, float, float]:
    """Mean and normal-approximation 95% CI (1.96 standard errors), as in few-shot papers."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    half = 1.96 * float(v.std(ddof=1)) / np.sqrt(v.size) if v.size > 1 else 0.0
    return m, float(m - half), float(m + half)
