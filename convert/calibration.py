"""Real calibration images for INT8, and nothing else.

INT8 ranges fitted on random data or a handful of images give a model that loads,
runs and is quietly wrong, so there is no fallback here: either the training split
recorded in the checkpoint (``split.csv``) or a folder given with ``--calib-data``
supplies real X-rays, or INT8 is refused with a message saying what to pass.

Images are kept at the uint8 stage of the shared preprocessing (resize, CLAHE,
denoise: ``prepare_gray``, small in memory) and normalised on demand by the same
``device/preprocess.py`` code the device runs; each quantizer gets the model's own
input tensors (TFLite in its NHWC layout), never a re-derived normalisation.
"""
from __future__ import annotations

import os

import numpy as np

from edgecxr.data.folders import DatasetIndex, Sample, list_images, read_split_csv, stratified_subset
from edgecxr.data.imageset import LabelledImages, load_images
from edgecxr.device.contract import Contract
from edgecxr.errors import EdgecxrError

MIN_CALIB_IMAGES = 16
DEFAULT_CALIB_N = 300


def _no_data_error(reason: str) -> EdgecxrError:
    return EdgecxrError(
        f"INT8 needs real calibration images and {reason}; pass --calib-data DIR (a folder with one subfolder "
        "per class, e.g. the training images), or convert without --int8. Random or placeholder data is never used."
    )


def choose_samples(contract: Contract, calib_data: str | None, n: int, seed: int = 0) -> tuple[str, list[Sample], str]:
    """(dataset root, stratified samples, description of where they come from)."""
    if n < MIN_CALIB_IMAGES:
        raise EdgecxrError(f"--calib-n must be at least {MIN_CALIB_IMAGES} (300 is the default), got {n}")
    if calib_data:
        if not os.path.isdir(calib_data):
            raise _no_data_error(f"--calib-data {calib_data} is not a folder")
        _classes, samples = list_images(calib_data)
        return os.path.abspath(calib_data), _stratified(samples, n, seed), f"--calib-data {calib_data}"
    split_csv = contract.source.get("split_csv")
    root = contract.source.get("data_root")
    if not split_csv or not root:
        raise _no_data_error("the checkpoint does not record its training data (no split_csv/data_root in its contract)")
    if not os.path.exists(split_csv):
        raise _no_data_error(f"the training split it records ({split_csv}) is missing")
    if not os.path.isdir(root):
        raise _no_data_error(f"the training data it records ({root}) is missing")
    index = read_split_csv(split_csv, root, list(contract.classes))
    train = index.of_split("train")
    if not train:
        raise _no_data_error(f"{split_csv} has no train images")
    return index.root, _stratified(train, n, seed), f"the train split of {split_csv}"


def _stratified(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """``stratified_subset`` topped up to exactly ``n`` (per-class rounding can leave it short)."""
    chosen = stratified_subset(samples, n, seed)
    if len(chosen) < min(n, len(samples)):
        taken = set(chosen)
        rest = [s for s in samples if s not in taken]
        rng = np.random.default_rng(seed + 1)
        extra = [rest[i] for i in sorted(rng.choice(len(rest), size=min(n, len(samples)) - len(chosen), replace=False))]
        chosen = sorted(chosen + extra, key=samples.index)
    return chosen


def load_calibration(contract: Contract, calib_data: str | None = None, n: int = DEFAULT_CALIB_N, seed: int = 0,
                     progress: bool = True) -> LabelledImages:
    """Pick and preprocess the calibration images; refuse fewer than ``MIN_CALIB_IMAGES``."""
    root, samples, origin = choose_samples(contract, calib_data, n, seed)
    index = DatasetIndex(root, sorted({s.label for s in samples}), samples, [])  # labels only count images here
    try:
        calib = load_images(index, samples, contract.preprocess, origin, progress=progress, desc="calibration images")
    except EdgecxrError:
        calib = None
    if calib is None or len(calib) < MIN_CALIB_IMAGES:
        raise _no_data_error(f"only {0 if calib is None else len(calib)} readable images were found in {origin} (at least {MIN_CALIB_IMAGES} needed)")
    return calib
