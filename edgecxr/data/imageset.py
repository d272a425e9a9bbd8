"""One labelled-image-set type for every stage: evaluation, verification, calibration, bench.

Images are kept at the uint8 stage of the shared preprocessing (``prepare_gray``:
resize, equalisation, denoising; 50 KB per 224 px image) and normalised on demand
by the same ``device/preprocess.py`` code the device runs, so every consumer (ONNX
Runtime's calibrator, TFLite's representative dataset, a runtime under test, the
golden-vector picker) sees the model's own input tensors and nothing re-derived.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecxr.data.folders import DatasetIndex, Sample
from edgecxr.device.image_io import ImageError, load_gray
from edgecxr.device.preprocess import PreprocessSpec, normalize, prepare_gray
from edgecxr.errors import EdgecxrError


@dataclass
class LabelledImages:
    gray: np.ndarray  # N x H x W uint8 after prepare_gray
    y: np.ndarray  # N label indices into ``classes``
    files: list[str]  # relative to ``root``, one per image
    classes: list[str]
    root: str
    spec: PreprocessSpec
    origin: str = ""  # where they came from, for reports ("the test split of ...")
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) of unreadable images
    _x: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(len(self.y))

    @property
    def x(self) -> np.ndarray:
        """Normalised float32 N x C x H x W: exactly what the model sees (computed once)."""
        if self._x is None:
            self._x = self.nchw(self.spec)
        return self._x

    def nchw(self, spec: PreprocessSpec | None = None) -> np.ndarray:
        spec = spec or self.spec
        return np.stack([normalize(g, spec) for g in self.gray]).astype(np.float32)

    @property
    def image_paths(self) -> list[str]:
        return [os.path.join(self.root, f) for f in self.files]

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(self.classes[int(i)] for i in self.y)
        return {k: c[k] for k in self.classes if c[k]}

    def describe(self) -> str:
        per_class = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        return f"{len(self)} real images from {self.origin} ({per_class})"

    def to_dict(self) -> dict[str, Any]:
        return {"images": len(self), "origin": self.origin, "class_counts": dict(sorted(self.counts.items())), "skipped": len(self.skipped)}


def load_images(index: DatasetIndex, samples: list[Sample], spec: PreprocessSpec, origin: str = "", progress: bool = True,
                desc: str = "preprocessing") -> LabelledImages:
    """Decode and preprocess ``samples``; unreadable files are skipped with their reason."""
    from edgecxr.progress import progress as progress_bar

    grays, ys, files, skipped = [], [], [], list(index.skipped)
    for s in progress_bar(samples, desc=desc, unit="img", enabled=progress):
        try:
            grays.append(prepare_gray(load_gray(os.path.join(index.root, s.file)), spec))
        except ImageError as exc:
            skipped.append((s.file, str(exc)))
            continue
        ys.append(index.classes.index(s.label))
        files.append(s.file)
    if not grays:
        raise EdgecxrError(f"{index.root}: no readable images in this split")
    return LabelledImages(np.stack(grays), np.asarray(ys, dtype=int), files, list(index.classes), index.root, spec, origin, skipped)
