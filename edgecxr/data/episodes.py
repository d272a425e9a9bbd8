"""N-way K-shot Q-query episodes drawn reproducibly from one split.

An episode is a small classification task: ``n_way`` classes, ``k_shot`` support
images per class (they define the prototypes) and ``q_query`` query images per class
(they are classified and give the loss). Episodes are a torch ``Dataset`` of
episodes, so a ``DataLoader(batch_size=None)`` can load them with workers; each
episode's draw depends only on ``(seed, epoch, episode index)``, which makes the
validation and test episodes identical across runs and processes.

Training draws episodes (``edgecxr.train.protonet``) and ``eval`` scores a trained
encoder on them (:func:`episode_report`), so both live here, in the core package.
"""
from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgecxr.data.folders import Sample
from edgecxr.errors import EdgecxrError
from edgecxr.models.proto_encoder import load_protonet, squared_distances, support_prototypes

VAL_SEED_OFFSET, TEST_SEED_OFFSET = 10_000, 20_000  # evaluation episodes never coincide with training draws


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


@torch.no_grad()
def run_episodes(encoder: nn.Module, episodes: EpisodeDataset, num_classes: int, progress: bool = False,
                 desc: str = "episodes") -> dict[str, Any]:
    """Loss and accuracy per episode, plus the pooled query labels/predictions in dataset class ids."""
    from edgecxr.progress import progress as progress_bar

    encoder.eval()
    spec = episodes.spec
    losses, accs, ys, preds = [], [], [], []
    for sx, qx, qy, cls in progress_bar(DataLoader(episodes, batch_size=None), desc=desc, unit="episode", enabled=progress):
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


def episode_summary(accuracies: list[float], spec: EpisodeSpec, split: str) -> dict:
    """The ``test_episodes`` entry of metrics.json and the ``episodes`` entry of eval.json."""
    mean, lo, hi = mean_ci95(accuracies)
    return {"split": split, "n_way": spec.n_way, "k_shot": spec.k_shot, "q_query": spec.q_query, "episodes": len(accuracies),
            "mean_accuracy": mean, "accuracy_ci95": [lo, hi], "per_episode_accuracy": [round(a, 6) for a in accuracies]}


class _Images(Dataset):
    """``(tensor, label)`` items over preprocessed images, the base an :class:`EpisodeDataset` draws from."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.labels = x, [int(v) for v in y]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.x[i]), self.labels[i]


def episode_report(protonet_path: str, split: str = "test", data: str | None = None, split_csv: str | None = None,
                   episodes: int | None = None, seed: int = 0, progress: bool = False) -> dict:
    """Mean episode accuracy (95% CI) of a trained protonet on any split; what ``eval`` adds for protonet runs.

    The episodes are those training reports for its test split: the same spec, seed offset and images.
    """
    from edgecxr.data.imageset import load_images
    from edgecxr.device.contract import Contract
    from edgecxr.eval.evaluate import resolve_samples

    encoder, _protos, payload = load_protonet(protonet_path)
    contract = Contract.from_dict(payload["contract"])
    pc = dict(payload.get("proto_config") or {})
    ep_spec = EpisodeSpec(pc.get("n_way", 3), pc.get("k_shot", 5), pc.get("q_query", 5), episodes or pc.get("episodes", 20))
    index = resolve_samples(contract, data, split, split_csv)
    batch = load_images(index, index.of_split(split), contract.preprocess, f"the {split} split", progress=progress)
    images = _Images(batch.x, batch.y)
    eps = EpisodeDataset(images, images.labels, ep_spec, seed + TEST_SEED_OFFSET, f"{split} split")
    res = run_episodes(encoder, eps, contract.num_classes, progress=progress, desc=f"{split} episodes")
    return episode_summary(res["accuracies"], ep_spec, split)
