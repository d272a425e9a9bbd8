"""Drawn images that are not chest X-rays, to teach the not-a-CXR score what "not" looks like.

A distance to the training CXRs cannot tell a photo from an odd radiograph: measured on the
README's MobileNetV2 (docs/results/decision.md "Two questions"), a quarter of photos and other
medical images lie closer to the CXRs than the farthest validation CXR. A discriminative score
(outlier exposure, Hendrycks et al. 2019) needs examples of the other side. They are drawn
here, from a seed, with numpy and OpenCV alone, so ``edgecxr calibrate`` needs no download,
no image file, and never sees the non-CXR evaluation set (``scripts/reproduce/build_ood_set.py``
takes its photos, documents and medical images from installed packages' sample files; none
of those is used here, so that set stays a held-out check).

Families, each a kind of image a camera, scanner or PACS may hand the device:

- ``dead_leaves``: occluding discs and boxes with power-law sizes, the classic model of
  natural-image statistics (Lee, Mumford & Huang 2001; "learning to see by looking at noise",
  Baradad et al. 2021): the stand-in for photographs;
- ``spectral``: 1/f^a noise (clouds, textures, skin, foliage at a distance);
- ``page``: rendered text lines, rules and tables on paper or on a screen;
- ``pattern``: gradients, gratings at any angle, checkerboards, rings;
- ``section``: a cross-section scanner's frame (bright textured ellipse, a rim, black outside:
  CT and MRI) and a sector of speckle (ultrasound);
- ``shapes``: line drawings, icons and diagrams;
- ``limb``: a radiograph of something else: bright cortical bones meeting at a joint inside a
  soft-tissue shadow, on black (knee, elbow, forearm, fingers).

Every image is greyscale uint8 (the device decodes everything to greyscale), then cropped,
blurred, noised, re-contrasted or JPEG-compressed at random, because a phone photo of anything
is all of those; ``degraded_copies`` does the same to training CXRs for the other side.
"""
from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np

FAMILIES = ("dead_leaves", "spectral", "page", "pattern", "section", "shapes", "limb")
SEED = 20261207


def _dead_leaves(rng: np.random.Generator, side: int) -> np.ndarray:
    img = np.full((side, side), rng.integers(0, 256), np.uint8)
    rmin, rmax = side / 200.0, side / 3.0
    for _ in range(int(rng.integers(200, 1200))):
        u = rng.random()  # radius density ~ r^-3 between rmin and rmax (inverse CDF)
        r = 1.0 / math.sqrt(1.0 / rmin**2 - u * (1.0 / rmin**2 - 1.0 / rmax**2))
        cx, cy = (int(v) for v in rng.integers(0, side, 2))
        grey = int(rng.integers(0, 256))
        if rng.random() < 0.6:
            cv2.circle(img, (cx, cy), max(1, int(r)), grey, -1)
        else:
            w, h = (max(1, int(r * s)) for s in rng.uniform(0.3, 2.0, 2))
            cv2.rectangle(img, (cx - w, cy - h), (cx + w, cy + h), grey, -1)
    if rng.random() < 0.5:  # sky above, clutter below: a scene's layout
        cut = int(rng.integers(side // 5, side // 2))
        sky = np.linspace(rng.integers(120, 256), rng.integers(60, 200), cut)[:, None]
        img[:cut] = np.broadcast_to(sky, (cut, side)).astype(np.uint8)
    return img


def _spectral(rng: np.random.Generator, side: int) -> np.ndarray:
    a = rng.uniform(0.8, 3.0)
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.rfftfreq(side)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / side) ** a
    spec = amp * np.exp(2j * np.pi * rng.random(amp.shape))
    img = np.fft.irfft2(spec, s=(side, side))
    return _stretch(img, rng)


def _page(rng: np.random.Generator, side: int) -> np.ndarray:
    paper, ink = (int(rng.integers(200, 256)), int(rng.integers(0, 90)))
    if rng.random() < 0.25:  # a screen: light text on dark
        paper, ink = ink, paper
    img = np.full((side, side), paper, np.uint8)
    fonts = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX,
             cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)
    scale = rng.uniform(0.3, 1.2) * side / 400.0
    step = max(6, int(30 * scale))
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-/()%"
    margin = int(rng.integers(2, side // 8))
    for y in range(margin + step, side - margin, step):
        if rng.random() < 0.12:
            continue  # paragraph break
        text = "".join(rng.choice(list(chars), int(rng.integers(10, 80))))
        cv2.putText(img, text, (margin, y), fonts[int(rng.integers(len(fonts)))], scale, ink, max(1, int(scale * 1.5)), cv2.LINE_AA)
    if rng.random() < 0.4:  # a table's rules
        for x in np.linspace(margin, side - margin, int(rng.integers(3, 7))):
            cv2.line(img, (int(x), margin), (int(x), side - margin), ink, 1)
        for y in range(margin, side - margin, step):
            cv2.line(img, (margin, y + step // 4), (side - margin, y + step // 4), ink, 1)
    return img


def _pattern(rng: np.random.Generator, side: int) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    t = xx * math.cos(angle) + yy * math.sin(angle)
    period = rng.uniform(4, side / 2)
    kind = int(rng.integers(4))
    if kind == 0:
        img = t
    elif kind == 1:
        img = np.sin(2 * np.pi * t / period)
        if rng.random() < 0.5:
            img = np.sign(img)
    elif kind == 2:
        u = -xx * math.sin(angle) + yy * math.cos(angle)
        img = ((np.floor(t / period) + np.floor(u / period)) % 2).astype(np.float64)
    else:
        cx, cy = rng.uniform(0, side, 2)
        img = np.sin(2 * np.pi * np.hypot(yy - cy, xx - cx) / period)
    return _stretch(img, rng)


def _section(rng: np.random.Generator, side: int) -> np.ndarray:
    img = np.zeros((side, side), np.uint8)
    texture = _spectral(rng, side)
    c = (side // 2 + int(rng.integers(-side // 10, side // 10 + 1)), side // 2 + int(rng.integers(-side // 10, side // 10 + 1)))
    if rng.random() < 0.7:  # CT / MRI: a textured body or head in an ellipse, often with a bright rim
        axes = (int(side * rng.uniform(0.25, 0.45)), int(side * rng.uniform(0.25, 0.45)))
        mask = np.zeros_like(img)
        cv2.ellipse(mask, c, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        img = np.where(mask > 0, (texture.astype(np.float64) * rng.uniform(0.4, 1.0)).astype(np.uint8), img)
        if rng.random() < 0.6:
            cv2.ellipse(img, c, axes, 0, 0, 360, int(rng.integers(150, 256)), int(rng.integers(2, max(3, side // 25))))
        for _ in range(int(rng.integers(0, 6))):  # organs, ventricles
            p = tuple(int(v) for v in rng.integers(side // 4, 3 * side // 4, 2))
            cv2.ellipse(img, p, tuple(int(v) for v in rng.integers(4, side // 8, 2)), float(rng.uniform(0, 180)), 0, 360,
                        int(rng.integers(0, 256)), -1)
    else:  # ultrasound: speckle in a fan
        speckle = rng.rayleigh(1.0, (side, side))
        speckle = cv2.GaussianBlur(speckle, (0, 0), rng.uniform(0.5, 2.0))
        mask = np.zeros_like(img)
        spread = float(rng.uniform(25, 50))
        cv2.ellipse(mask, (side // 2, int(side * 0.05)), (int(side * 0.9), int(side * 0.9)), 90, -spread, spread, 255, -1)
        img = np.where(mask > 0, _stretch(speckle * (texture / 255.0 + 0.3), rng), img).astype(np.uint8)
    return img


def _shapes(rng: np.random.Generator, side: int) -> np.ndarray:
    img = np.full((side, side), rng.integers(0, 256), np.uint8)
    for _ in range(int(rng.integers(3, 40))):
        grey = int(rng.integers(0, 256))
        width = -1 if rng.random() < 0.4 else int(rng.integers(1, max(2, side // 40)))
        p = rng.integers(0, side, (int(rng.integers(2, 7)), 2)).astype(np.int32)
        if rng.random() < 0.5:
            cv2.polylines(img, [p], bool(rng.random() < 0.5), grey, max(1, width)) if width > 0 else cv2.fillPoly(img, [p], grey)
        else:
            cv2.ellipse(img, tuple(int(v) for v in p[0]), tuple(int(v) for v in rng.integers(2, side // 4, 2)),
                        float(rng.uniform(0, 180)), 0, 360, grey, width)
    return img


def _bone(img: np.ndarray, a: tuple[float, float], b: tuple[float, float], width: float, grey: int) -> None:
    """A long bone from ``a`` to ``b``: a bright cortex, a darker marrow line, rounded ends (condyles)."""
    pa, pb = (int(a[0]), int(a[1])), (int(b[0]), int(b[1]))
    cv2.line(img, pa, pb, grey, max(2, int(width)), cv2.LINE_AA)
    cv2.line(img, pa, pb, int(grey * 0.75), max(1, int(width * 0.45)), cv2.LINE_AA)
    cv2.circle(img, pb, max(2, int(width * 0.8)), grey, -1, cv2.LINE_AA)


def _limb(rng: np.random.Generator, side: int) -> np.ndarray:
    tissue = np.zeros((side, side), np.float64)
    angle = rng.uniform(-0.4, 0.4) + (np.pi / 2 if rng.random() < 0.5 else 0.0)
    d = np.array([math.sin(angle), math.cos(angle)])  # along the limb (x, y)
    c = np.array([side / 2, side / 2]) + rng.uniform(-side / 10, side / 10, 2)
    bones = np.zeros((side, side), np.uint8)
    width = side * rng.uniform(0.05, 0.12)
    joint = c + d * rng.uniform(-side / 8, side / 8)
    gap = width * rng.uniform(0.2, 0.6)
    bend = rng.uniform(-0.5, 0.5)
    d2 = np.array([math.sin(angle + bend), math.cos(angle + bend)])
    _bone(bones, tuple(joint - d * side), tuple(joint - d * gap), width, int(rng.integers(170, 256)))
    _bone(bones, tuple(joint + d2 * side), tuple(joint + d2 * gap), width * rng.uniform(0.6, 1.0), int(rng.integers(170, 256)))
    if rng.random() < 0.4:  # a second, thinner bone alongside (forearm, lower leg)
        off = np.array([d[1], -d[0]]) * width * 1.6
        _bone(bones, tuple(joint + d2 * side + off), tuple(joint + d2 * gap + off), width * 0.5, int(rng.integers(150, 230)))
    cv2.line(tissue, tuple(int(v) for v in joint - d * side), tuple(int(v) for v in joint + d * side), 1.0,
             int(width * rng.uniform(3, 6)))  # soft tissue around the bones
    tissue = cv2.GaussianBlur(tissue, (0, 0), width * 0.6) * rng.uniform(60, 130)
    img = np.maximum(tissue, cv2.GaussianBlur(bones.astype(np.float64), (0, 0), rng.uniform(0.5, 2.0)))
    return np.clip(img + rng.normal(0, rng.uniform(1, 8), img.shape), 0, 255).astype(np.uint8)


_DRAW: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "dead_leaves": _dead_leaves, "spectral": _spectral, "page": _page, "pattern": _pattern, "section": _section, "shapes": _shapes,
    "limb": _limb}


def _stretch(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    lo, hi = float(img.min()), float(img.max())
    a, b = sorted(rng.uniform(0, 255, 2))
    if b - a < 60:
        a, b = 0.0, 255.0
    return (a + (img - lo) / max(hi - lo, 1e-9) * (b - a)).astype(np.uint8)


def _camera(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a phone, a scanner or a PACS does to anything: a crop, blur, noise, a tone curve,
    local contrast equalisation, JPEG, each at random."""
    side = min(img.shape)
    if rng.random() < 0.5:
        s = int(side * rng.uniform(0.5, 0.9))
        y, x = (int(rng.integers(0, n - s + 1)) for n in img.shape)
        img = img[y : y + s, x : x + s]
    out = img.astype(np.float64)
    if rng.random() < 0.4:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 3.0))
    if rng.random() < 0.4:
        out = out + rng.normal(0, rng.uniform(2, 20), out.shape)
    if rng.random() < 0.3:
        out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** rng.uniform(0.5, 2.0)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.2:
        out = cv2.createCLAHE(clipLimit=float(rng.uniform(1.0, 8.0)), tileGridSize=(8, 8)).apply(out)
    if rng.random() < 0.3:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 80))])
        out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if ok else out
    return out


def degraded_copies(grays: list[np.ndarray], seed: int = SEED) -> list[np.ndarray]:
    """The same camera and scanner degradations applied to real CXRs, for the CXR side. The drawn
    side gets them too, so a blurred, noisy, cropped or re-compressed image is not what the
    discriminator learns to call "not a chest X-ray": a degraded radiograph is a radiograph, to be
    referred as unfamiliar, not refused."""
    rng = np.random.default_rng(seed + 1)
    return [_camera(np.asarray(g, np.uint8), rng) for g in grays]


def family_order(count: int, names: tuple[str, ...] = FAMILIES) -> list[str]:
    """The family of each of ``count`` drawn images, in the order :func:`drawn_negatives` draws them."""
    return [names[i % len(names)] for i in range(count)]


def drawn_negatives(count: int, seed: int = SEED, families: tuple[str, ...] = FAMILIES) -> list[np.ndarray]:
    """``count`` greyscale uint8 images, the families in turn, drawn from ``seed`` (the same images for the same seed)."""
    unknown = [f for f in families if f not in _DRAW]
    if unknown:
        raise ValueError(f"unknown negative families {unknown}: choose from {', '.join(FAMILIES)}")
    rng = np.random.default_rng(seed)
    out = []
    for family in family_order(count, families):
        side = int(rng.integers(224, 513))
        out.append(_camera(_DRAW[family](rng, side), rng))
    return out

