"""Deterministic synthetic X-ray-like images, for the demo and for tests.

Not real anatomy and not for any clinical conclusion: a bright body silhouette with
two dark lung fields, a spine and faint ribs, and class-specific opacities. They
exist so that a fresh clone can run the whole pipeline (and tests can train a
model that learns something) without any downloaded data.
"""
from __future__ import annotations

import os

import numpy as np

SYNTHETIC_CLASSES = ("Normal", "Opacity_Diffuse", "Opacity_Focal")


def _base(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.full((size, size), 20.0, np.float32)
    body = ((xx - 0.5) / 0.46) ** 2 + ((yy - 0.55) / 0.55) ** 2 < 1
    img[body] = 170 + rng.normal(0, 4)
    for side in (-1, 1):
        cx = 0.5 + side * (0.2 + rng.normal(0, 0.01))
        lung = ((xx - cx) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
        img[lung] = 60 + rng.normal(0, 4)
    img[np.abs(xx - 0.5) < 0.035] += 60  # spine
    for k in range(6):  # ribs: faint arcs across the lung fields
        y0 = 0.3 + 0.08 * k + rng.normal(0, 0.004)
        arc = np.abs(yy - (y0 + 0.12 * (xx - 0.5) ** 2)) < 0.008
        img[arc & body] += 25
    return img


def _blob(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))


def make_image(label: str, index: int, size: int = 96, seed: int = 0) -> np.ndarray:
    """One uint8 image; the same (label, index, size, seed) always gives the same pixels."""
    if label not in SYNTHETIC_CLASSES:
        raise ValueError(f"unknown synthetic class {label!r}")
    rng = np.random.default_rng([seed, SYNTHETIC_CLASSES.index(label), index])
    img = _base(rng, size)
    if label == "Opacity_Diffuse":  # bilateral, peripheral, hazy
        for side in (-1, 1):
            img += 75 * _blob(size, 0.5 + side * rng.uniform(0.22, 0.3), rng.uniform(0.45, 0.65), rng.uniform(0.1, 0.14))
    elif label == "Opacity_Focal":  # one dense consolidation
        side = rng.choice([-1, 1])
        img += 120 * _blob(size, 0.5 + side * rng.uniform(0.15, 0.25), rng.uniform(0.4, 0.7), rng.uniform(0.05, 0.07))
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_dataset(root: str, n_per_class: int = 40, size: int = 96, seed: int = 0) -> str:
    """Write ``root/<class>/<class>-<i>.png``; skips files that already exist with the same content."""
    import cv2

    for label in SYNTHETIC_CLASSES:
        os.makedirs(os.path.join(root, label), exist_ok=True)
        for i in range(n_per_class):
            path = os.path.join(root, label, f"{label}-{i:04d}.png")
            if not os.path.exists(path):
                cv2.imwrite(path, make_image(label, i, size, seed))
    return root
