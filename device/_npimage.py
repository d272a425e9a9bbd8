"""numpy-only stand-ins for the few OpenCV calls the device pipeline makes.

A Pi install should need nothing beyond numpy and a TFLite interpreter, and OpenCV
wheels are the heaviest and most fragile part of a Pi setup. Each function here
follows OpenCV's own algorithm (same borders, same rounding, same CLAHE tiling
quirks) so that a model sees the same pixels with or without OpenCV. Measured
against OpenCV 4.14 in ``tests/test_device_runner.py``: PNG decoding, shrinking,
global equalisation, CLAHE, 3/5/7 Gaussian and median filters are bit-exact on real
CXRs; bilinear enlarging and Gaussian kernels above 7 differ by at most one grey
level on some pixels (OpenCV's fixed-point arithmetic there).

Only PNG is decoded here (it is what CXR datasets ship); JPEG and BMP still need
OpenCV, and the error says so.
"""
from __future__ import annotations

import struct
import zlib
from functools import lru_cache

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


class PNGError(ValueError):
    """A PNG this decoder cannot read; the message says why in a few words."""


# ----------------------------------------------------------------------------- PNG
def png_header(data: bytes) -> tuple[int, int, int, int, int]:
    """(width, height, bit depth, colour type, interlace) from the IHDR chunk, without decoding."""
    if data[:8] != PNG_SIGNATURE:
        raise PNGError("not a PNG file (bad signature)")
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise PNGError("truncated PNG (no IHDR header)")
    width, height, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if ctype not in _CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise PNGError(f"invalid PNG header (colour type {ctype}, bit depth {depth})")
    if width == 0 or height == 0:
        raise PNGError("PNG with zero width or height")
    return width, height, depth, ctype, interlace


def _chunks(data: bytes):
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise PNGError("truncated PNG (chunk runs past the end of the file)")
        if kind[0] < 97 and struct.unpack(">I", crc)[0] != zlib.crc32(kind + body):  # critical chunk
            raise PNGError(f"corrupt PNG (CRC mismatch in {kind.decode('latin-1')} chunk)")
        yield kind, body
        pos += 12 + length
        if kind == b"IEND":
            return
    raise PNGError("truncated PNG (no IEND chunk)")


def _unfilter(raw: np.ndarray, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo the per-row PNG filters (None, Sub, Up, Average, Paeth)."""
    rows = raw.reshape(height, stride + 1)
    kinds, out = rows[:, 0], rows[:, 1:].astype(np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        line, kind = out[y], int(kinds[y])
        if kind == 1:  # Sub: running sum per byte lane
            pad = (-stride) % bpp
            lanes = np.concatenate([line, np.zeros(pad, np.int32)]).reshape(-1, bpp)
            line[:] = (np.cumsum(lanes, axis=0) & 0xFF).reshape(-1)[:stride]
        elif kind == 2:
            line[:] = (line + prev) & 0xFF
        elif kind in (3, 4):
            cur, up = line.tolist(), prev.tolist()
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                if kind == 3:
                    cur[i] = (cur[i] + ((a + up[i]) >> 1)) & 0xFF
                else:
                    b, c = up[i], (up[i - bpp] if i >= bpp else 0)
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                    cur[i] = (cur[i] + pred) & 0xFF
            line[:] = cur
        elif kind != 0:
            raise PNGError(f"corrupt PNG (unknown row filter {kind})")
        prev = line
    return out.astype(np.uint8)


def decode_png(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """PNG bytes -> uint8/uint16 array shaped like ``cv2.imdecode(..., IMREAD_UNCHANGED)``.

    Colour comes back in OpenCV's BGR(A) order, grey with alpha as plain grey, low
    bit depths scaled to 0-255 as libpng does, so callers need no second code path.
    """
    width, height, depth, ctype, interlace = png_header(data)
    if max_pixels is not None and width * height > max_pixels:
        raise PNGError(f"{width}x{height} is larger than {max_pixels} pixels; downscale it first")
    if interlace:
        raise PNGError("interlaced PNG is not supported without OpenCV: pip install opencv-python-headless")
    idat, palette = [], None
    for kind, body in _chunks(data):
        if kind == b"IDAT":
            idat.append(body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
    channels = _CHANNELS[ctype]
    bits_per_pixel = channels * depth
    stride = (width * bits_per_pixel + 7) // 8
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise PNGError(f"corrupt or truncated PNG (zlib: {exc})") from exc
    if len(raw) < height * (stride + 1):
        raise PNGError("truncated PNG (image data ends early)")
    rows = _unfilter(np.frombuffer(raw, dtype=np.uint8)[: height * (stride + 1)], height, stride, max(1, bits_per_pixel // 8))
    if depth == 16:
        img = rows.reshape(height, stride).view(">u2").astype(np.uint16).reshape(height, width, channels)
    elif depth == 8:
        img = rows.reshape(height, width, channels)
    else:
        bits = np.unpackbits(rows, axis=1).reshape(height, stride * 8 // depth, depth)[:, :width]
        img = (bits * (1 << np.arange(depth - 1, -1, -1, dtype=np.uint8))).sum(axis=2).astype(np.uint8)[:, :, None]
        if ctype == 0:
            img = img * np.uint8(255 // ((1 << depth) - 1))
    if ctype == 3:
        if palette is None:
            raise PNGError("corrupt PNG (palette image without PLTE chunk)")
        if int(img.max()) >= len(palette):
            raise PNGError("corrupt PNG (palette index out of range)")
        img = palette[img[:, :, 0]]
    if img.shape[2] in (1, 2):  # grey, grey+alpha: alpha never changes the grey value
        return np.ascontiguousarray(img[:, :, 0])
    order = [2, 1, 0, 3][: img.shape[2]]  # RGB(A) -> BGR(A)
    return np.ascontiguousarray(img[:, :, order])


def encode_png(img: np.ndarray) -> bytes:
    """Minimal PNG writer (grey/BGR/BGRA, 8 or 16 bit, filter None); for tests and tools."""
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"encode_png needs uint8 or uint16, got {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    h, w, c = img.shape
    ctype = {1: 0, 3: 2, 4: 6}[c]
    if c >= 3:
        img = img[:, :, [2, 1, 0, 3][:c]]
    body = img.astype(">u2" if img.dtype == np.uint16 else np.uint8).reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), body], axis=1).tobytes()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", w, h, 16 if img.dtype == np.uint16 else 8, ctype, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------- colour, resize
def bgr_to_gray(img: np.ndarray) -> np.ndarray:
    """OpenCV's fixed-point BGR(A)->grey: (1868 B + 9617 G + 4899 R + 2^13) >> 14."""
    x = img[:, :, :3].astype(np.int64)
    g = (x[:, :, 0] * 1868 + x[:, :, 1] * 9617 + x[:, :, 2] * 4899 + (1 << 13)) >> 14
    return g.astype(img.dtype)


@lru_cache(maxsize=16)
def _area_weights(src: int, dst: int) -> np.ndarray:
    """OpenCV INTER_AREA: each output pixel averages the input span it covers."""
    scale = src / dst
    w = np.zeros((dst, src), dtype=np.float64)
    for d in range(dst):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, src - f1)
        s2 = min(int(np.floor(f2)), src - 1)
        s1 = min(int(np.ceil(f1)), s2)
        if s1 - f1 > 1e-3:
            w[d, s1 - 1] = (s1 - f1) / cell
        w[d, s1:s2] = 1.0 / cell
        if f2 - s2 > 1e-3:
            w[d, s2] = min(min(f2 - s2, 1.0), cell) / cell
    return w


@lru_cache(maxsize=16)
def _linear_weights(src: int, dst: int, area_mode: bool = False) -> np.ndarray:
    """OpenCV INTER_LINEAR with half-pixel centres, clamped at the borders.

    ``area_mode``: the coefficients cv2 uses for INTER_AREA when some axis grows.
    """
    scale = src / dst
    w = np.zeros((dst, src), dtype=np.float64)
    for d in range(dst):
        if area_mode:
            s = int(np.floor(d * scale))
            a = float(np.float32((d + 1) - (s + 1) * (dst / src)))
            a = 0.0 if a <= 0 else a - np.floor(a)
        else:
            f = float(np.float32((d + 0.5) * scale - 0.5))
            s = int(np.floor(f))
            a = f - s
        if s < 0:
            s, a = 0, 0.0
        if s >= src - 1:
            s, a = src - 1, 0.0
        w[d, s] += 1.0 - a
        if a:
            w[d, s + 1] += a
    return w


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """cv2.resize to size x size: INTER_AREA when shrinking, INTER_LINEAR when enlarging.

    As in OpenCV, area is used only when neither axis grows; whole-number factors
    take its fast path (2x2 blocks round half up), the rest accumulate in float32.
    Bilinear enlarging is computed in float and may differ from OpenCV's fixed-point
    result by one grey level.
    """
    h, w = img.shape
    if h >= size and w >= size:
        if h % size == 0 and w % size == 0:
            ky, kx = h // size, w // size
            s = img.reshape(size, ky, size, kx).sum(axis=(1, 3), dtype=np.int64)
            if ky * kx == 4:
                return ((s + 2) >> 2).astype(np.uint8)
            return np.rint(s.astype(np.float32) * np.float32(1.0 / (ky * kx))).clip(0, 255).astype(np.uint8)
        wy, wx = _area_weights(h, size).astype(np.float32), _area_weights(w, size).astype(np.float32)
        out = wy @ (img.astype(np.float32) @ wx.T)
    else:
        area_mode = h > size or w > size  # preprocess asks for INTER_AREA whenever one axis shrinks
        wy, wx = _linear_weights(h, size, area_mode), _linear_weights(w, size, area_mode)
        out = wy @ img.astype(np.float64) @ wx.T
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------- equalisation
def equalize_hist(img: np.ndarray) -> np.ndarray:
    """cv2.equalizeHist: the lowest occupied level maps to 0, the CDF scaled to 255."""
    hist = np.bincount(img.ravel(), minlength=256)
    first = int(np.flatnonzero(hist)[0])
    total = img.size
    if hist[first] == total:
        return np.full_like(img, first)
    scale = np.float32(255.0) / np.float32(total - hist[first])
    cdf = np.cumsum(hist).astype(np.int64) - hist[first]
    lut = np.rint(cdf.astype(np.float32) * scale).clip(0, 255).astype(np.uint8)
    lut[: first + 1] = 0
    return lut[img]


def _reflect101(img: np.ndarray, bottom: int, right: int) -> np.ndarray:
    return np.pad(img, ((0, bottom), (0, right)), mode="reflect")


def clahe(img: np.ndarray, clip: float, grid: int) -> np.ndarray:
    """cv2.createCLAHE(clip, (grid, grid)).apply(img), including OpenCV's padding rule."""
    h, w = img.shape
    src = img
    if h % grid or w % grid:  # OpenCV pads both axes, by a whole tile where one already divides
        src = _reflect101(img, grid - h % grid, grid - w % grid)
    th, tw = src.shape[0] // grid, src.shape[1] // grid
    area = th * tw
    limit = max(int(clip * area / 256), 1) if clip > 0 else 0
    tiles = src[: th * grid, : tw * grid].reshape(grid, th, grid, tw).transpose(0, 2, 1, 3).reshape(grid * grid, area)
    luts = np.empty((grid * grid, 256), dtype=np.float32)
    lut_scale = np.float32(255.0) / np.float32(area)
    for t in range(grid * grid):
        hist = np.bincount(tiles[t], minlength=256).astype(np.int64)
        if limit > 0:
            clipped = int(np.maximum(hist - limit, 0).sum())
            hist = np.minimum(hist, limit) + clipped // 256
            residual = clipped - (clipped // 256) * 256
            if residual:
                step = max(256 // residual, 1)
                idx = np.arange(0, 256, step)[:residual]
                hist[idx] += 1
        luts[t] = np.rint(np.cumsum(hist).astype(np.float32) * lut_scale).clip(0, 255)
    luts = luts.reshape(grid, grid, 256)

    def axis(n: int, tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = np.arange(n, dtype=np.float32) * (np.float32(1.0) / np.float32(tile)) - np.float32(0.5)
        i1 = np.floor(f).astype(np.int64)
        a = (f - i1).astype(np.float32)
        return np.maximum(i1, 0), np.minimum(i1 + 1, grid - 1), a

    y1, y2, ya = axis(h, th)
    x1, x2, xa = axis(w, tw)
    v = img.astype(np.int64)
    xa_, xa1 = xa[None, :], np.float32(1.0) - xa[None, :]
    ya_, ya1 = ya[:, None], np.float32(1.0) - ya[:, None]
    top = luts[y1[:, None], x1[None, :], v] * xa1 + luts[y1[:, None], x2[None, :], v] * xa_
    bot = luts[y2[:, None], x1[None, :], v] * xa1 + luts[y2[:, None], x2[None, :], v] * xa_
    return np.rint(top * ya1 + bot * ya_).clip(0, 255).astype(np.uint8)


# ------------------------------------------------------------------------ denoising
_SMALL_GAUSS = {1: [1.0], 3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
                7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125]}


def _gauss_kernel(ksize: int) -> np.ndarray:
    """cv2.getGaussianKernel(ksize, 0): fixed tables up to 7, the sigma formula beyond."""
    if ksize in _SMALL_GAUSS:
        return np.asarray(_SMALL_GAUSS[ksize])
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize) - (ksize - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def gaussian_blur(img: np.ndarray, ksize: int) -> np.ndarray:
    """cv2.GaussianBlur(img, (k, k), 0) with its default BORDER_REFLECT_101."""
    k = _gauss_kernel(ksize)
    r = ksize // 2
    p = np.pad(img.astype(np.float64), r, mode="reflect")
    h, w = img.shape
    rows = sum(k[i] * p[:, i : i + w] for i in range(ksize))
    out = sum(k[i] * rows[i : i + h, :] for i in range(ksize))
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


# Paeth's 19-exchange network: after it, element 4 of 9 is their median
_MEDIAN9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7),
            (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def median_blur(img: np.ndarray, ksize: int) -> np.ndarray:
    """cv2.medianBlur: median of the k x k window, borders replicated.

    3x3 (the pipeline's default) uses a min/max network on whole shifted images,
    about 20x faster than a partition; larger kernels partition.
    """
    r = ksize // 2
    p = np.pad(img, r, mode="edge")
    h, w = img.shape
    views = [p[i : i + h, j : j + w] for i in range(ksize) for j in range(ksize)]
    if ksize == 3:
        v = list(views)
        for a, b in _MEDIAN9:
            v[a], v[b] = np.minimum(v[a], v[b]), np.maximum(v[a], v[b])
        return np.ascontiguousarray(v[4])
    return np.partition(np.stack(views), ksize * ksize // 2, axis=0)[ksize * ksize // 2]
