"""What a new site is compared with: the model's validation split, or the compact copy of it a model stores.

The OOD threshold, temperature and conformal threshold were all fitted on the
validation split, so that is the reference for the site's OOD scores (KS test) and
for BBSE's confusion matrix; the training split gives the class mix the model
learned. ``--reference-data``/``--split-csv`` name them; otherwise the dataset and
split.csv the model's contract records, when they are here; otherwise the compact
``reference`` an earlier ``edgecxr sitecheck --stamp`` stored in the model's decision
block (validation OOD scores to 4 significant digits, confusion counts, training
counts: a few KB), so a bare artifact on a clinic's workstation can be checked.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecxr.device.ood import ood_scores
from edgecxr.device.site_rules import score_spec
from edgecxr.errors import EdgecxrError
from edgecxr.site.check import decode_images, logits_of

REFERENCE_SCHEMA = "edgecxr.reference/1"


@dataclass
class Reference:
    """What the site is compared with: the model's validation outputs and its training class mix."""

    ood_scores: np.ndarray  # validation images that pass the quality checks
    y: np.ndarray  # validation labels (indices into the model's classes)
    pred: np.ndarray  # validation top-1 predictions
    train_counts: dict[str, int]
    origin: str

    @property
    def train_mix(self) -> np.ndarray:
        total = sum(self.train_counts.values())
        return np.array([c / total for c in self.train_counts.values()], dtype=np.float64)

    def compact(self, fitted_with: str, block: dict[str, Any] | None) -> dict[str, Any]:
        """The decision block's ``reference`` entry: a bare artifact carrying it needs no dataset
        for the next sitecheck (validation scores to 4 significant digits, confusion counts). It names
        the OOD score it was computed with, so a later recalibration makes it stale, not wrong."""
        k = len(self.train_counts)
        counts = np.bincount(self.pred * k + self.y, minlength=k * k).reshape(k, k)
        return {"schema": REFERENCE_SCHEMA, "origin": self.origin, "fitted_with": fitted_with, "score": _score_key(block),
                "ood_scores": [float(f"{s:.4g}") for s in self.ood_scores], "confusion_counts": counts.tolist(),
                "train_counts": dict(self.train_counts)}


def _reference_from_split(backend: Any, data: str | None, split_csv: str | None, progress: bool) -> Reference:
    from edgecxr.eval.evaluate import resolve_samples

    contract = backend.contract
    index = resolve_samples(contract, data, "val", split_csv, progress=False)
    val = index.of_split("val")
    if not val:
        raise EdgecxrError(f"{split_csv or contract.source.get('split_csv')}: no validation images in this split; "
                           "pass --split-csv of the run the model was trained on")
    site = decode_images(index.root, [(s.file, s.label) for s in val], contract, progress, "validation images")
    z = logits_of(backend, site.gray, contract.preprocess)
    ok = np.array([q == "" for q in site.quality], dtype=bool)
    y = np.array([list(contract.classes).index(c) for c in site.labels or []], dtype=int)
    train = Counter(s.label for s in index.of_split("train"))
    if not train:
        raise EdgecxrError(f"{split_csv or contract.source.get('split_csv')}: no training rows; the training class mix is unknown")
    return Reference(ood_scores(z[ok], score_spec(contract.decision)), y, z.argmax(1), {c: int(train[c]) for c in contract.classes},
                     f"{len(y)} validation images of {index.root} ({split_csv or contract.source.get('split_csv')})")


def _reference_from_block(block: dict[str, Any] | None, classes: tuple[str, ...]) -> Reference | None:
    ref = (block or {}).get("reference")
    if not ref or ref.get("schema") != REFERENCE_SCHEMA or ref.get("score") != _score_key(block):
        return None  # none, or computed before the model's OOD score was refitted
    counts = np.asarray(ref["confusion_counts"], dtype=int)  # [pred][y]
    k = len(classes)
    pred, y = np.divmod(np.repeat(np.arange(k * k), counts.ravel()), k)
    return Reference(np.asarray(ref["ood_scores"], dtype=np.float64), y, pred, {c: int(ref["train_counts"].get(c, 0)) for c in classes},
                     f"{ref.get('origin', 'the validation split')} (stored in the model by an earlier sitecheck --stamp)")


def _score_key(block: dict[str, Any] | None) -> dict[str, Any]:
    """What the validation scores depend on: the OOD method and threshold in force."""
    spec = score_spec(block)
    return {"method": spec.get("method"), "threshold": spec.get("threshold")}


def resolve_reference(backend: Any, data: str | None, split_csv: str | None, progress: bool = False) -> Reference:
    """The model's validation split: ``--reference-data``/``--split-csv`` if given, else the data its
    contract records when it is here, else the reference stored in the model; otherwise one clear error."""
    contract = backend.contract
    if data or split_csv:
        return _reference_from_split(backend, data, split_csv, progress)
    root, csv_path = contract.source.get("data_root"), contract.source.get("split_csv")
    if root and csv_path and os.path.isdir(root) and os.path.exists(csv_path):
        return _reference_from_split(backend, None, None, progress)
    stored = _reference_from_block(contract.decision, tuple(contract.classes))
    if stored is not None:
        return stored
    raise EdgecxrError(f"no reference: the model's validation split ({csv_path or 'no split.csv recorded'} over "
                       f"{root or 'no dataset recorded'}) is not here and the model stores none; pass --reference-data DIR "
                       "--split-csv RUN/split.csv (the dataset and split it was trained with)")
