"""Torch dataset over a split: decoded and preprocessed once, augmented per epoch.

The deterministic part of preprocessing (resize, equalise, denoise) runs once per
image and is kept in memory as uint8 (3000 images at 224 px are 150 MB), so an
epoch costs only augmentation and the network. Augmentation sits between the
uint8 stage and normalisation, and only in training.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from edgecxr.data.folders import Sample
from edgecxr.device.image_io import ImageError, load_gray
from edgecxr.device.preprocess import PreprocessSpec, finish_gray, normalize, prepare_gray, resize_gray
from edgecxr.train.site_augment import SiteAugmentSpec, image_cdf, site_augment


@dataclass(frozen=True)
class AugmentSpec:
    hflip: float = 0.5
    rotate_deg: float = 7.0
    brightness: float = 0.1
    contrast: float = 0.1

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def augment(img: np.ndarray, spec: AugmentSpec, rng: np.random.Generator) -> np.ndarray:
    import cv2

    if spec.hflip and rng.random() < spec.hflip:
        img = img[:, ::-1]
    if spec.rotate_deg:
        angle = float(rng.uniform(-spec.rotate_deg, spec.rotate_deg))
        h, w = img.shape
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        img = cv2.warpAffine(np.ascontiguousarray(img), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if spec.brightness or spec.contrast:
        a = 1.0 + rng.uniform(-spec.contrast, spec.contrast)
        b = 255.0 * rng.uniform(-spec.brightness, spec.brightness)
        mean = float(img.mean())
        img = np.clip((img.astype(np.float32) - mean) * a + mean + b, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


class CXRDataset(Dataset):
    """Returns ``(float32 CxHxW tensor, label index)``; unreadable files are dropped and listed in ``skipped``.

    With ``site_spec`` the cache holds the resized raw images instead, and each item
    is changed as another site would have made it (:mod:`edgecxr.train.site_augment`)
    before equalisation and denoising run on it.
    """

    def __init__(self, root: str, samples: list[Sample], classes: list[str], spec: PreprocessSpec,
                 augment_spec: AugmentSpec | None = None, seed: int = 0, progress: bool = True, desc: str = "loading",
                 site_spec: SiteAugmentSpec | None = None) -> None:
        from edgecxr.progress import progress as progress_bar

        self.spec = spec
        self.augment_spec = augment_spec
        self.site_spec = site_spec
        self.seed = seed
        self.epoch = 0
        self.images: list[np.ndarray] = []
        self.labels: list[int] = []
        self.files: list[str] = []
        self.sources: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        stage = (lambda g: resize_gray(g, spec.size)) if site_spec is not None else (lambda g: prepare_gray(g, spec))
        for s in progress_bar(samples, desc=desc, unit="img", enabled=progress):
            try:
                img = stage(load_gray(os.path.join(root, s.file)))
            except ImageError as exc:
                self.skipped.append((s.file, str(exc)))
                continue
            self.images.append(img)
            self.labels.append(classes.index(s.label))
            self.files.append(s.file)
            self.sources.append(s.source)
        self._cdfs, self._pool = None, {}
        if site_spec is not None and self.images:
            self._cdfs = np.stack([image_cdf(g) for g in self.images])
            src = np.asarray(self.sources)
            multi = len(set(self.sources)) > 1
            # where histogram matching draws from: another source's images, or any image when there is one source
            self._pool = {s: np.flatnonzero(src != s) if multi else np.arange(len(src)) for s in set(self.sources)}

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _other_source_cdf(self, i: int, rng: np.random.Generator) -> np.ndarray | None:
        """The histogram of a random image from another source (any image when there is one source)."""
        pool = self._pool[self.sources[i]]
        return self._cdfs[pool[int(rng.integers(len(pool)))]] if len(pool) else None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        # seeded per (seed, epoch, index): reproducible whatever the worker layout
        rng = np.random.default_rng((self.seed, self.epoch, i))
        if self.site_spec is not None:
            img = finish_gray(site_augment(img, self.site_spec, rng, self._other_source_cdf(i, rng)), self.spec)
        if self.augment_spec is not None:
            img = augment(img, self.augment_spec, rng)
        return torch.from_numpy(normalize(img, self.spec)), self.labels[i]
