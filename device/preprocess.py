"""The one preprocessing pipeline, shared by training, conversion, eval and the Pi.

It lives in ``device/`` because the Raspberry Pi runner must apply exactly what the
model saw in training, without torch. Training imports it from here, so there is no
second implementation that could drift. Only numpy and OpenCV are used; without
OpenCV the same steps run in numpy (``_npimage``), matching OpenCV's pixels.

The pipeline follows the published CXR recipe: grayscale, resize, histogram
equalisation (global or CLAHE), Gaussian then median denoising, replicate to three
channels, ImageNet mean/std normalisation. Every step is a field of
:class:`PreprocessSpec`, which is stored in each model's contract.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

try:  # OpenCV is optional on the device; the numpy fallbacks below cover the gap.
    import cv2
except ImportError:  # pragma: no cover - exercised on bare Pi installs
    cv2 = None
from . import _npimage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EQUALIZE_MODES = ("none", "global", "clahe")


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn a grayscale image into a model input.

    Stored as plain data in checkpoints and exported models so that a device never
    has to guess how its model was trained.
    """

    size: int = 224
    equalize: str = "clahe"
    clahe_clip: float = 2.0
    clahe_grid: int = 8
    gaussian_ksize: int = 3
    median_ksize: int = 3
    channels: int = 3
    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"preprocess size must be at least 8 pixels, got {self.size}")
        if self.equalize not in EQUALIZE_MODES:
            raise ValueError(f"equalize must be one of {EQUALIZE_MODES}, got {self.equalize!r}")
        for name in ("gaussian_ksize", "median_ksize"):
            k = getattr(self, name)
            if k != 0 and (k < 3 or k % 2 == 0):
                raise ValueError(f"{name} must be 0 (off) or an odd number >= 3, got {k}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing fields {sorted(unknown)}; was the model made by a newer edgecxr?")
        kw = dict(d)
        for key in ("mean", "std"):
            if key in kw:
                kw[key] = tuple(float(v) for v in kw[key])
        return cls(**kw)


def resize_gray(img: np.ndarray, size: int) -> np.ndarray:
    """Area interpolation when shrinking (no aliasing), bilinear when enlarging."""
    if img.shape == (size, size):
        return img
    if cv2 is not None:
        shrinking = img.shape[0] > size or img.shape[1] > size
        interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        return cv2.resize(img, (size, size), interpolation=interp)
    return _npimage.resize(img, size)


def _equalize(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    if spec.equalize == "none":
        return img
    if cv2 is None:
        if spec.equalize == "global":
            return _npimage.equalize_hist(img)
        return _npimage.clahe(img, spec.clahe_clip, spec.clahe_grid)
    if spec.equalize == "global":
        return cv2.equalizeHist(img)
    clahe = cv2.createCLAHE(clipLimit=spec.clahe_clip, tileGridSize=(spec.clahe_grid, spec.clahe_grid))
    return clahe.apply(img)


def _denoise(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    if cv2 is None:
        if spec.gaussian_ksize:
            img = _npimage.gaussian_blur(img, spec.gaussian_ksize)
        if spec.median_ksize:
            img = _npimage.median_blur(img, spec.median_ksize)
        return img
    if spec.gaussian_ksize:
        img = cv2.GaussianBlur(img, (spec.gaussian_ksize, spec.gaussian_ksize), 0)
    if spec.median_ksize:
        img = cv2.medianBlur(img, spec.median_ksize)
    return img


def prepare_gray(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The uint8 stage: resize, equalise, denoise.

    Split from :func:`normalize` so training can cache this deterministic part and
    apply augmentation between the two stages.
    """
    if img.dtype != np.uint8 or img.ndim != 2:
        raise ValueError(f"prepare_gray expects a 2-D uint8 image, got {img.dtype} {img.shape}")
    return finish_gray(resize_gray(img, spec.size), spec)


def finish_gray(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Equalise and denoise an image already at the input size: :func:`prepare_gray` after its resize.

    Split out so training can change an image the way another site would (before
    equalisation, where site differences enter) and still run this very code after.
    """
    return _denoise(_equalize(img, spec), spec)


def normalize(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 HxW -> float32 CxHxW, replicated to ``spec.channels`` and standardised."""
    x = img.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    x = np.broadcast_to(x, (spec.channels,) + x.shape)
    return ((x - mean) / std).astype(np.float32)


def preprocess(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Full pipeline on a decoded grayscale uint8 image: returns float32 CxHxW."""
    return normalize(prepare_gray(img, spec), spec)


def preprocess_file(path: str, spec: PreprocessSpec) -> np.ndarray:
    """Decode and preprocess one file; raises ``ImageError`` with a one-line reason."""
    from .image_io import load_gray

    return preprocess(load_gray(path), spec)
