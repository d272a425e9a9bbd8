"""Augmentations that take away what tells one source from another.

A CXR model trained where each class comes from its own hospitals learns the
hospital: exposure and gamma, detector noise and sharpness, JPEG history, the
collimation border, burnt-in markers. On the README's data the plain recipe called
most normal CXRs of an unseen source COVID (issue 20). These transforms make each
of those cues random for every class, so none of them predicts the label:

* **tone**: a random gamma (log-uniform) and a random intensity window, as
  different detectors, exposures and export LUTs give;
* **histogram matching** to a random training image of *another source*, so the
  grey-level signature of a source is seen on every class;
* **blur / noise**: detector sharpness and quantum noise;
* **JPEG** re-compression at a random quality (PACS exports, screenshots);
* **border**: a random crop of the edges (collimation, field of view) or a black
  frame (scanned films);
* **markers**: burnt-in text ("L", "R", "AP", "PORTABLE") drawn on images of
  every class, and marker-sized corner patches blanked, so a marker no longer
  means COVID;
* **local contrast** (off by default, ``--site-augment-p local_contrast=P``): a
  vendor's post-processing, CLAHE at a random clip limit and tile grid or an unsharp
  mask of random strength. Off by default so the measured default recipe stays
  reproducible (a transform that draws nothing leaves every other draw as it was).

They act on the resized raw image, *before* histogram equalisation, because a
site's differences enter there: the model's own CLAHE then sees them exactly as it
will at the new site. Each transform has its probability in :class:`SiteAugmentSpec`
(stored in the checkpoint's train config); the README table measures what the set
buys on a source the model never saw.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from edgecxr.errors import EdgecxrError
from edgecxr.site import sim as site_sim  # the simulated sites' transforms, here with random parameters

MARKER_TEXTS = ("L", "R", "AP", "PA", "PORTABLE", "SUPINE", "ERECT")


@dataclass(frozen=True)
class SiteAugmentSpec:
    gamma: float = 0.8  # probability of a random gamma
    gamma_range: tuple[float, float] = (0.5, 2.0)
    window: float = 0.5  # probability of a random intensity window
    match_histogram: float = 0.3  # probability of matching another source's histogram
    blur: float = 0.25
    noise: float = 0.25
    jpeg: float = 0.4
    jpeg_quality: tuple[int, int] = (25, 90)
    crop: float = 0.5  # probability of cropping the edges (up to crop_max of each side) and resizing back
    crop_max: float = 0.12
    frame: float = 0.15  # probability of a black frame
    marker: float = 0.4  # probability of burnt-in text
    erase: float = 0.3  # probability of blanking one or two marker-sized corner patches
    local_contrast: float = 0.0  # probability of random CLAHE or unsharp masking (vendor post-processing)
    local_contrast_clip: tuple[float, float] = (1.5, 8.0)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_probabilities(self, text: str | None) -> SiteAugmentSpec:
        """``"local_contrast=0.3,jpeg=0.6"`` -> this spec with those probabilities (``--site-augment-p``)."""
        if not text:
            return self
        names = [f for f, v in asdict(self).items() if isinstance(v, float)]
        changes: dict[str, float] = {}
        for item in (t.strip() for t in text.split(",") if t.strip()):
            name, _, value = item.partition("=")
            name = name.strip()
            if name not in names:
                raise EdgecxrError(f"--site-augment-p {item!r}: unknown transform; choose from {', '.join(names)}")
            try:
                p = float(value)
            except ValueError as exc:
                raise EdgecxrError(f"--site-augment-p {item!r}: give NAME=PROBABILITY, e.g. local_contrast=0.3") from exc
            if not 0.0 <= p <= 1.0:
                raise EdgecxrError(f"--site-augment-p {item!r}: a probability is between 0 and 1")
            changes[name] = p
        return replace(self, **changes)


def image_cdf(img: np.ndarray) -> np.ndarray:
    """The normalised cumulative histogram (256 floats) that histogram matching maps onto."""
    hist = np.bincount(img.ravel(), minlength=256).astype(np.float64)
    cdf = np.cumsum(hist)
    return cdf / cdf[-1]


def match_cdf(img: np.ndarray, target_cdf: np.ndarray) -> np.ndarray:
    """Remap grey levels so ``img``'s histogram follows ``target_cdf`` (classic histogram specification)."""
    lut = np.searchsorted(target_cdf, image_cdf(img), side="left").clip(0, 255).astype(np.uint8)
    return lut[img]


def _gamma(img: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    return site_sim.gamma(img, float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))


def _window(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stretch a random window [lo, hi] to a random output range: clipped highlights, lifted blacks."""
    lo, hi = rng.uniform(0, 40), rng.uniform(215, 255)
    out_lo, out_hi = rng.uniform(0, 30), rng.uniform(225, 255)
    x = (img.astype(np.float32) - lo) / (hi - lo)
    return (out_lo + np.clip(x, 0, 1) * (out_hi - out_lo)).round().astype(np.uint8)


def _local_contrast(img: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """Half the time CLAHE (random clip limit, 4/8/16 tiles), else an unsharp mask (random strength and radius)."""
    if rng.random() < 0.5:
        return site_sim.clahe(img, float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), int(rng.choice([4, 8, 16])))
    return site_sim.unsharp(img, float(rng.uniform(0.5, 2.0)), float(rng.uniform(0.005, 0.04)))


def _blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.4, 1.5)))


def _noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    std = float(rng.uniform(2.0, 10.0))
    return np.clip(img.astype(np.float32) + rng.normal(0.0, std, img.shape), 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, rng: np.random.Generator, lo: int, hi: int) -> np.ndarray:
    return site_sim.jpeg(img, int(rng.integers(lo, hi + 1)))


def _crop(img: np.ndarray, rng: np.random.Generator, most: float) -> np.ndarray:
    import cv2

    h, w = img.shape
    t, b, left, r = (int(rng.uniform(0, most) * n) for n in (h, h, w, w))
    inner = img[t : h - b, left : w - r]
    return cv2.resize(inner, (w, h), interpolation=cv2.INTER_LINEAR) if inner.size else img


def _frame(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = img.copy()
    h, w = img.shape
    t, b, left, r = (int(rng.uniform(0, 0.08) * n) for n in (h, h, w, w))
    img[:t], img[h - b :], img[:, :left], img[:, w - r :] = 0, 0, 0, 0
    return img


def _corner_box(h: int, w: int, rng: np.random.Generator, frac: tuple[float, float]) -> tuple[int, int, int, int]:
    """A box of ``frac`` of the side, in a random corner band (where markers sit)."""
    bh, bw = int(h * rng.uniform(*frac)), int(w * rng.uniform(*frac))
    y = int(rng.uniform(0, 0.12) * h) if rng.random() < 0.5 else h - bh - int(rng.uniform(0, 0.12) * h)
    x = int(rng.uniform(0, 0.12) * w) if rng.random() < 0.5 else w - bw - int(rng.uniform(0, 0.12) * w)
    return max(y, 0), max(x, 0), bh, bw


def _marker(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import cv2

    img = np.ascontiguousarray(img.copy())
    h, w = img.shape
    text = MARKER_TEXTS[int(rng.integers(len(MARKER_TEXTS)))]
    scale = h / 256 * float(rng.uniform(0.4, 1.1))
    y, x, _bh, _bw = _corner_box(h, w, rng, (0.08, 0.12))
    value = 255 if rng.random() < 0.8 else 0
    cv2.putText(img, text, (x, min(y + int(24 * scale), h - 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, value,
                max(1, int(round(2 * scale))), cv2.LINE_AA)
    return img


def _erase(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = img.copy()
    h, w = img.shape
    for _ in range(int(rng.integers(1, 3))):
        y, x, bh, bw = _corner_box(h, w, rng, (0.05, 0.15))
        patch = img[y : y + bh, x : x + bw]
        if patch.size:
            img[y : y + bh, x : x + bw] = np.uint8(patch.mean()) if rng.random() < 0.5 else 0
    return img


def site_augment(img: np.ndarray, spec: SiteAugmentSpec, rng: np.random.Generator,
                 other_cdf: np.ndarray | None = None) -> np.ndarray:
    """One random site for a 2-D uint8 image; ``other_cdf`` is a histogram of another source to match."""
    if other_cdf is not None and rng.random() < spec.match_histogram:
        img = match_cdf(img, other_cdf)
    if rng.random() < spec.gamma:
        img = _gamma(img, rng, *spec.gamma_range)
    if rng.random() < spec.window:
        img = _window(img, rng)
    if rng.random() < spec.crop:
        img = _crop(img, rng, spec.crop_max)
    if rng.random() < spec.frame:
        img = _frame(img, rng)
    if rng.random() < spec.marker:
        img = _marker(img, rng)
    if rng.random() < spec.erase:
        img = _erase(img, rng)
    if spec.local_contrast and rng.random() < spec.local_contrast:  # no draw when off: the default recipe's draws stay as measured
        img = _local_contrast(img, rng, *spec.local_contrast_clip)
    if rng.random() < spec.blur:
        img = _blur(img, rng)
    if rng.random() < spec.noise:
        img = _noise(img, rng)
    if rng.random() < spec.jpeg:
        img = _jpeg(img, rng, *spec.jpeg_quality)
    return np.ascontiguousarray(img)
