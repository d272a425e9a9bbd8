"""The evaluation images, preprocessed once per (dataset, split, preprocessing spec).

Every artifact of one training run shares the same test images and the same spec,
so they are decoded and preprocessed once here and handed to each measurement
process as a memory-mapped ``.npy``. Which images: exactly ``edgecxr eval``'s rule
(``evaluate.resolve_samples``): the split recorded in the model's contract, or every
image of a never-split folder with ``--split all``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from edgecxr.data.imageset import LabelledImages
from edgecxr.device.contract import Contract
from edgecxr.errors import EdgecxrError


@dataclass
class EvalSet:
    """One evaluation set, saved once as ``.npy`` for the measurement processes to memory-map."""

    key: str
    npy: str  # preprocessed N x C x H x W float32
    images: LabelledImages
    split: str

    @property
    def y(self) -> np.ndarray:
        return self.images.y

    @property
    def files(self) -> list[str]:
        return self.images.files

    @property
    def classes(self) -> list[str]:
        return self.images.classes

    @property
    def root(self) -> str:
        return self.images.root

    @property
    def image_paths(self) -> list[str]:
        return self.images.image_paths


def data_key(contract: Contract, data: str | None, split: str, split_csv: str | None = None) -> tuple[str, str | None, str]:
    root = os.path.abspath(data or contract.source.get("data_root") or "")
    csv = None if split == "all" else (split_csv or contract.source.get("split_csv"))
    spec = json.dumps(contract.preprocess.to_dict(), sort_keys=True)
    classes = json.dumps(list(contract.classes))
    digest = hashlib.sha256(f"{root}|{csv}|{split}|{spec}|{classes}".encode()).hexdigest()[:16]
    return digest, csv, root


class EvalCache:
    """Builds each distinct evaluation set once, in ``workdir``."""

    def __init__(self, workdir: str, data: str | None, split: str, progress: bool = True, split_csv: str | None = None) -> None:
        self.workdir, self.data, self.split, self.progress, self.split_csv = workdir, data, split, progress, split_csv
        self._sets: dict[str, EvalSet] = {}
        self._errors: dict[str, str] = {}

    def get(self, contract: Contract) -> EvalSet:
        """The set for ``contract``; raises :class:`EdgecxrError` (cached) when there are no images."""
        from edgecxr.data.imageset import load_images
        from edgecxr.eval.evaluate import resolve_samples

        key, _csv, _root = data_key(contract, self.data, self.split, self.split_csv)
        if key in self._errors:
            raise EdgecxrError(self._errors[key])
        if key not in self._sets:
            try:
                index = resolve_samples(contract, self.data, self.split, self.split_csv)
                batch = load_images(index, index.of_split(self.split), contract.preprocess, f"the {self.split} split", progress=self.progress)
            except EdgecxrError as exc:
                self._errors[key] = str(exc)
                raise
            npy = os.path.join(self.workdir, f"eval_{key}.npy")
            np.save(npy, batch.x.astype(np.float32))
            self._sets[key] = EvalSet(key, npy, batch, self.split)
        return self._sets[key]
