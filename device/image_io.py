"""Decode any CXR file into one 8-bit grayscale array.

X-rays arrive as 8- and 16-bit PNG, JPEG, BMP and DICOM. Everything downstream works
on uint8 HxW, so this module is the only place that knows about file formats and bit
depths. Errors are :class:`ImageError` with a message that fits on one line, because
both the CLI and the Pi runner show them to people as they are.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

try:
    import cv2
except ImportError:  # pragma: no cover - bare device install
    cv2 = None
from . import _npimage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".dcm", ".dicom")
MAX_PIXELS = 50_000_000  # refuse decompression bombs before they eat a Pi's memory


class ImageError(ValueError):
    """An image that cannot be used, with a reason a person can act on."""


def is_image_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Scale any integer or float image to the full 0-255 range of uint8.

    16-bit X-rays usually use 10-14 of their bits, so a fixed divide by 257 would
    leave them dark; min-max scaling keeps the contrast the detector recorded.
    """
    if img.dtype == np.uint8:
        return img
    x = img.astype(np.float64)
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        return np.zeros(img.shape, dtype=np.uint8)
    return np.round((x - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _to_gray(img: np.ndarray, path: str) -> np.ndarray:
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] == 1:
        return img[:, :, 0]
    if img.ndim == 3 and img.shape[2] in (3, 4):
        if cv2 is None:
            return _npimage.bgr_to_gray(img)
        code = cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        return cv2.cvtColor(img, code)
    raise ImageError(f"{path}: unsupported image shape {img.shape}")


def _load_dicom(path: str) -> np.ndarray:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - optional on the device
        raise ImageError(f"{path}: reading DICOM needs pydicom: pip install pydicom") from exc
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types for broken files
        raise ImageError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    return dicom_gray(ds, path)


def dicom_gray(ds: Any, path: str) -> np.ndarray:
    """The uint8 grayscale image of a DICOM dataset already read (the service's gate read its
    header; decoding from it spares a second parse of the file)."""
    from pydicom.pixels import apply_voi_lut

    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for broken files
        raise ImageError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 2:
        raise ImageError(f"{path}: DICOM with shape {arr.shape}; only single-frame grayscale is supported")
    arr = apply_voi_lut(arr, ds)
    img = to_uint8(arr)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        img = 255 - img  # MONOCHROME1 stores bone dark; flip so every image has bone bright
    return img


def load_gray(path: str) -> np.ndarray:
    """Read ``path`` as uint8 HxW grayscale or raise :class:`ImageError`."""
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a folder, expected an image file")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".dcm", ".dicom"):
        return _load_dicom(path)
    if ext not in IMAGE_SUFFIXES:
        raise ImageError(f"{path}: not an image ({ext or 'no extension'}); expected one of {', '.join(IMAGE_SUFFIXES)}")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageError(f"{path}: empty file")
    if data[:8].tobytes() == _npimage.PNG_SIGNATURE:  # refuse decompression bombs before any decoder allocates
        try:
            w, h = _npimage.png_header(data[:64].tobytes())[:2]
        except _npimage.PNGError as exc:
            raise ImageError(f"{path}: {exc}") from exc
        if w * h > MAX_PIXELS:
            raise ImageError(f"{path}: {w}x{h} is larger than {MAX_PIXELS} pixels; downscale it first")
    if cv2 is None:
        if ext != ".png":
            raise ImageError(f"{path}: decoding {ext} needs OpenCV (without it only PNG and DICOM are read): "
                             "pip install opencv-python-headless")
        try:
            img = _npimage.decode_png(data.tobytes(), MAX_PIXELS)
        except _npimage.PNGError as exc:
            raise ImageError(f"{path}: {exc}") from exc
        return to_uint8(_to_gray(img, path))
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{path}: corrupt or truncated {ext[1:].upper()} (OpenCV could not decode it)")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise ImageError(f"{path}: {img.shape[1]}x{img.shape[0]} is larger than {MAX_PIXELS} pixels; downscale it first")
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: unsupported pixel type {img.dtype}")
    return to_uint8(_to_gray(img, path))
