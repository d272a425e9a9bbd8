"""Simulated acquisition sites: deterministic changes a hospital's export pipeline makes to a CXR.

A model validated on one site meets images that another site's scanner, PACS and
export settings have already changed before the runner sees them. These shifts
reproduce the common ones on a grayscale uint8 image, so ``edgecxr sitecheck`` can
be tested against sites whose difference is known and the README can show what each
does to a model (``scripts/dev/simulate_site.py`` writes a shifted copy of a split).
Every shift is a pure function of the image and its parameter (the noise is seeded
from the pixels), so a shifted copy is reproducible byte for byte.

Specs (``NAME[:PARAM]``):

- ``gamma:G``: intensity curve ``255 * (x / 255) ** G`` (G < 1 brightens, as a
  site exporting with another window/LUT; default 0.5);
- ``jpeg:Q``: JPEG re-encoding at quality Q (default 30), as a PACS that stores
  lossy copies;
- ``clahe:CLIP``: strong CLAHE (8x8 tiles, clip limit CLIP, default 8) before
  saving, as a site that equalises its exports;
- ``crop:F``: crop a fraction F of each border and resize back (default 0.15), as
  a tighter collimation or a zoomed export;
- ``pad:F``: shrink and add a black border of F of each side (default 0.15), as a
  detector larger than the chest;
- ``invert``: bone dark (a MONOCHROME1 image exported without its flip);
- ``blur_noise:S``: Gaussian blur (sigma S, default 1.5) plus noise of standard
  deviation 4 * S grey levels, as a low-dose or older detector;
- ``unsharp:A``: edge enhancement, ``x + A * (x - blur(x))`` with a blur of 2% of
  the image width (default A = 1.5), as a vendor's sharpening post-processing.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

from edgecxr.errors import EdgecxrError

DEFAULTS: dict[str, float | None] = {"gamma": 0.5, "jpeg": 30, "clahe": 8.0, "crop": 0.15, "pad": 0.15, "invert": None,
                                      "blur_noise": 1.5, "unsharp": 1.5}


def _cv2():
    import cv2

    return cv2


def gamma(img: np.ndarray, g: float) -> np.ndarray:
    lut = np.clip(np.round(255.0 * (np.arange(256) / 255.0) ** g), 0, 255).astype(np.uint8)
    return lut[img]


def jpeg(img: np.ndarray, quality: float) -> np.ndarray:
    cv2 = _cv2()
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise EdgecxrError("OpenCV could not JPEG-encode the image")
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def clahe(img: np.ndarray, clip: float, tiles: int = 8) -> np.ndarray:
    return _cv2().createCLAHE(clipLimit=float(clip), tileGridSize=(int(tiles), int(tiles))).apply(img)


def unsharp(img: np.ndarray, amount: float, sigma_fraction: float = 0.02) -> np.ndarray:
    sigma = max(0.5, sigma_fraction * img.shape[1])
    blurred = _cv2().GaussianBlur(img, (0, 0), sigma).astype(np.float32)
    return np.clip(np.round(img + float(amount) * (img.astype(np.float32) - blurred)), 0, 255).astype(np.uint8)


def crop(img: np.ndarray, fraction: float) -> np.ndarray:
    h, w = img.shape
    dy, dx = int(round(h * fraction)), int(round(w * fraction))
    inner = img[dy : h - dy, dx : w - dx]
    return _cv2().resize(inner, (w, h), interpolation=_cv2().INTER_LINEAR)


def pad(img: np.ndarray, fraction: float) -> np.ndarray:
    h, w = img.shape
    dy, dx = int(round(h * fraction)), int(round(w * fraction))
    out = np.zeros_like(img)
    out[dy : h - dy, dx : w - dx] = _cv2().resize(img, (w - 2 * dx, h - 2 * dy), interpolation=_cv2().INTER_AREA)
    return out


def invert(img: np.ndarray, _param: float | None = None) -> np.ndarray:
    return (255 - img).astype(np.uint8)


def blur_noise(img: np.ndarray, sigma: float) -> np.ndarray:
    blurred = _cv2().GaussianBlur(img, (0, 0), float(sigma)).astype(np.float64)
    rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(img).tobytes()))  # the same image always gets the same noise
    return np.clip(np.round(blurred + rng.normal(0.0, 4.0 * sigma, img.shape)), 0, 255).astype(np.uint8)


SHIFTS: dict[str, Callable[..., np.ndarray]] = {"gamma": gamma, "jpeg": jpeg, "clahe": clahe, "crop": crop, "pad": pad,
                                                 "invert": invert, "blur_noise": blur_noise, "unsharp": unsharp}


def parse_shift(spec: str) -> tuple[str, float | None]:
    """``"gamma:0.5"`` -> ("gamma", 0.5); a name alone takes its default parameter."""
    name, _, param = spec.partition(":")
    if name not in SHIFTS:
        raise EdgecxrError(f"--shift {spec!r}: unknown shift; choose one of {', '.join(SHIFTS)} (e.g. gamma:0.5, jpeg:30)")
    if not param:
        return name, DEFAULTS[name]
    try:
        value = float(param)
    except ValueError as exc:
        raise EdgecxrError(f"--shift {spec!r}: the parameter after ':' must be a number") from exc
    if name == "jpeg" and not 1 <= value <= 100:
        raise EdgecxrError(f"--shift {spec!r}: JPEG quality must be between 1 and 100")
    if name in ("crop", "pad") and not 0 <= value < 0.5:
        raise EdgecxrError(f"--shift {spec!r}: the border fraction must be in [0, 0.5)")
    if name in ("gamma", "clahe", "blur_noise", "unsharp") and value <= 0:
        raise EdgecxrError(f"--shift {spec!r}: the parameter must be positive")
    return name, value


def apply_shift(img: np.ndarray, spec: str) -> np.ndarray:
    """The shifted copy of a grayscale uint8 image (same shape, uint8)."""
    g = np.asarray(img)
    if g.dtype != np.uint8 or g.ndim != 2:
        raise EdgecxrError(f"a site shift needs a 2-D uint8 image, got {g.dtype} {g.shape}")
    name, param = parse_shift(spec)
    return np.ascontiguousarray(SHIFTS[name](g, param))


def apply_shifts(img: np.ndarray, specs: list[str] | tuple[str, ...]) -> np.ndarray:
    """Several shifts in the order given (e.g. ``["crop:0.1", "jpeg:30"]``)."""
    for spec in specs:
        img = apply_shift(img, spec)
    return img
