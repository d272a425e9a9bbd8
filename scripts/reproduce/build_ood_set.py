#!/usr/bin/env python3
"""Build the out-of-distribution evaluation set: images that are not chest X-rays.

Everything comes from what installed packages ship offline (scikit-image's
``skimage.data`` files, matplotlib's sample data, scikit-learn's sample images)
plus images drawn here (noise, gradients, rendered text, document pages, constant
frames), so the set is rebuilt bit for bit on any machine with the pinned
requirements and never needs a download. Each source becomes several variants
(crops, rotations, flips, grayscale conversion, down-scaling), because a camera
or a scanner hands the runner exactly that kind of image.

    python scripts/reproduce/build_ood_set.py --out runs/ood_set

Writes ``<out>/<group>/<name>.png`` and ``<out>/MANIFEST.csv`` (file, group,
source, transform, sha256). Groups:

- ``photos``: natural photographs (people, animals, objects, scenes, sky);
- ``documents``: scanned text and rendered document pages, forms and tables;
- ``synthetic``: noise, gradients, checkerboards, blobs, textures;
- ``blank``: constant, near-constant and saturated frames (the image-quality checks'
  job, reported apart so they do not flatter the model-based score);
- ``medical_other``: non-CXR medical images (CT phantom, MRI slice, retina,
  microscopy): not the goal's groups, reported to show where the score stands.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import os
import sys

import numpy as np

SEED = 20261201
MAX_SIDE = 768  # keeps the set small; the runner resizes to the model input anyway


# --- sources ----------------------------------------------------------------------------
def _skimage(name: str) -> np.ndarray:
    import skimage.data
    from skimage import io

    return io.imread(os.path.join(os.path.dirname(skimage.data.__file__), name))


def _mpl(name: str) -> np.ndarray:
    import matplotlib
    from PIL import Image

    return np.asarray(Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", name)))


def _mpl_mri() -> np.ndarray:
    """matplotlib's s1045.ima.gz: a 256x256 16-bit MRI slice (as in its image demo)."""
    import matplotlib

    with gzip.open(os.path.join(matplotlib.get_data_path(), "sample_data", "s1045.ima.gz")) as fh:
        raw = np.frombuffer(fh.read(), np.uint16).reshape(256, 256)
    return _u8(raw.astype(np.float64))


def _sklearn(index: int) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    return np.asarray(load_sample_images().images[index])


PHOTOS = {
    "astronaut": lambda: _skimage("astronaut.png"), "camera": lambda: _skimage("camera.png"),
    "chelsea": lambda: _skimage("chelsea.png"), "coffee": lambda: _skimage("coffee.png"),
    "rocket": lambda: _skimage("rocket.jpg"), "motorcycle_left": lambda: _skimage("motorcycle_left.png"),
    "motorcycle_right": lambda: _skimage("motorcycle_right.png"), "hubble": lambda: _skimage("hubble_deep_field.jpg"),
    "moon": lambda: _skimage("moon.png"), "coins": lambda: _skimage("coins.png"),
    "grace_hopper": lambda: _mpl("grace_hopper.jpg"), "china": lambda: _sklearn(0), "flower": lambda: _sklearn(1),
}
SCANS = {"page": lambda: _skimage("page.png"), "text": lambda: _skimage("text.png")}
TEXTURES = {"brick": lambda: _skimage("brick.png"), "grass": lambda: _skimage("grass.png"),
            "gravel": lambda: _skimage("gravel.png"), "horse": lambda: _skimage("horse.png"),
            "logo": lambda: _skimage("logo.png"), "chessboard": lambda: _skimage("chessboard_GRAY.png")}
MEDICAL = {"phantom": lambda: _skimage("phantom.png"), "mri": _mpl_mri, "retina": lambda: _skimage("retina.jpg"),
           "cell": lambda: _skimage("cell.png"), "ihc": lambda: _skimage("ihc.png"),
           "microaneurysms": lambda: _skimage("microaneurysms.png")}


# --- helpers ----------------------------------------------------------------------------
def _u8(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    return np.zeros(x.shape, np.uint8) if hi <= lo else np.round((x - lo) * 255.0 / (hi - lo)).astype(np.uint8)


def _as_uint8(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        return _u8(img)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img)


def _gray(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img
    r, g, b = (img[:, :, i].astype(np.float64) for i in range(3))
    return np.clip(np.round(0.299 * r + 0.587 * g + 0.114 * b), 0, 255).astype(np.uint8)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def _cap(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = max(h, w)
    return img if s <= MAX_SIDE else _resize(img, round(h * MAX_SIDE / s), round(w * MAX_SIDE / s))


def _rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).rotate(degrees, resample=Image.BILINEAR, expand=True, fillcolor=0 if img.ndim == 2 else (0, 0, 0)))


def _crop(img: np.ndarray, rng: np.random.Generator, frac: float) -> np.ndarray:
    h, w = img.shape[:2]
    ch, cw = max(16, int(h * frac)), max(16, int(w * frac))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return img[y : y + ch, x : x + cw]


def variants(img: np.ndarray, rng: np.random.Generator, full: bool = True) -> list[tuple[str, np.ndarray]]:
    """The image as a camera or scanner might hand it over: whole, grey, cropped, turned, flipped, small."""
    img = _cap(_as_uint8(img))
    out = [("orig", img), ("gray", _gray(img)), ("crop60", _crop(img, rng, 0.6)), ("crop35", _crop(img, rng, 0.35)),
           ("rot90", np.rot90(img).copy()), ("rot15", _rotate(img, 15)), ("flip", img[:, ::-1].copy())]
    if full:
        h, w = img.shape[:2]
        out += [("rot180", np.rot90(img, 2).copy()), ("rot-30", _rotate(_gray(img), -30)),
                ("half", _resize(img, max(2, h // 2), max(2, w // 2))), ("crop50gray", _gray(_crop(img, rng, 0.5))),
                ("square", _square(img))]
    return out


def _square(img: np.ndarray) -> np.ndarray:
    """Centre crop to a square, as a CXR-sized input would be."""
    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return img[y : y + s, x : x + s]


# --- drawn images -----------------------------------------------------------------------
WORDS = ("patient report date name signature form total page section result clinic address phone invoice "
         "amount number the of and to in for with on by from this that summary table figure note review "
         "sample order account reference street city code value item description quantity price").split()


def _font(size: int, mono: bool = False):
    import matplotlib
    from PIL import ImageFont

    name = "DejaVuSansMono.ttf" if mono else "DejaVuSans.ttf"
    return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name), size)


def document(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A page of black text lines on white (A4-ish proportions), optionally a form or table."""
    from PIL import Image, ImageDraw

    w = int(rng.integers(480, 720))
    h = int(w * 1.414)
    page = Image.new("L", (w, h), int(rng.integers(225, 256)))
    d = ImageDraw.Draw(page)
    size = int(rng.integers(11, 20))
    font, y, margin = _font(size, mono=rng.random() < 0.3), int(rng.integers(20, 60)), int(rng.integers(20, 60))
    d.text((margin, y), " ".join(rng.choice(WORDS, 3)).upper(), fill=0, font=_font(size + 8))
    y += size * 3
    while y < h - margin - size:
        if kind == "form" and rng.random() < 0.3:
            d.rectangle([margin, y, w - margin, y + size * 2], outline=0, width=1)
            d.text((margin + 4, y + 2), str(rng.choice(WORDS)).capitalize() + ":", fill=0, font=font)
            y += size * 3
            continue
        if kind == "table" and rng.random() < 0.5:
            cols = int(rng.integers(3, 6))
            for c in range(cols + 1):
                x = margin + c * (w - 2 * margin) // cols
                d.line([x, y, x, y + size * 2], fill=0)
            d.line([margin, y, w - margin, y], fill=0)
            for c in range(cols):
                d.text((margin + c * (w - 2 * margin) // cols + 3, y + 2), f"{rng.integers(0, 9999)}", fill=0, font=font)
            y += size * 2
            continue
        line = " ".join(rng.choice(WORDS, int(rng.integers(4, 14))))
        d.text((margin, y), line.capitalize(), fill=int(rng.integers(0, 60)), font=font)
        y += int(size * rng.uniform(1.3, 2.0))
    arr = np.asarray(page).astype(np.float64)
    if rng.random() < 0.5:  # a scanner's grain
        arr += rng.normal(0, rng.uniform(3, 12), arr.shape)
    out = np.clip(arr, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        out = _rotate(out, float(rng.uniform(-4, 4)))
    return out


def synthetic(rng: np.random.Generator, kind: str, size: int = 256) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    if kind == "gauss_noise":
        return np.clip(rng.normal(rng.uniform(60, 190), rng.uniform(10, 70), (size, size)), 0, 255).astype(np.uint8)
    if kind == "uniform_noise":
        return rng.integers(0, 256, (size, size), dtype=np.uint8)
    if kind == "salt_pepper":
        img = np.full((size, size), int(rng.integers(60, 200)), np.uint8)
        m = rng.random((size, size))
        img[m < 0.05], img[m > 0.95] = 0, 255
        return img
    if kind == "linear_gradient":
        a = rng.uniform(0, 2 * np.pi)
        return _u8(np.cos(a) * xx + np.sin(a) * yy)
    if kind == "radial_gradient":
        cy, cx = rng.uniform(0.2, 0.8, 2)
        return _u8(-np.hypot(yy - cy, xx - cx))
    if kind == "checkerboard":
        n = int(rng.integers(4, 32))
        return (((np.floor(xx * n) + np.floor(yy * n)) % 2) * 255).astype(np.uint8)
    if kind == "stripes":
        f = rng.uniform(3, 40)
        return _u8(np.sin(2 * np.pi * f * (xx if rng.random() < 0.5 else yy)))
    if kind == "smooth_noise":
        from PIL import Image

        small = rng.normal(0, 1, (8, 8))
        return _u8(np.asarray(Image.fromarray(small.astype(np.float32)).resize((size, size), Image.BICUBIC)))
    if kind == "blobs":
        from skimage.data import binary_blobs

        return binary_blobs(size, blob_size_fraction=rng.uniform(0.05, 0.2), volume_fraction=rng.uniform(0.2, 0.6),
                            rng=int(rng.integers(0, 2**31))).astype(np.uint8) * 255
    if kind == "text_on_dark":
        from PIL import Image, ImageDraw

        img = Image.new("L", (size, size), int(rng.integers(0, 40)))
        d = ImageDraw.Draw(img)
        for i in range(int(rng.integers(3, 12))):
            d.text((int(rng.integers(0, size // 2)), 10 + i * 20), " ".join(rng.choice(WORDS, 3)),
                   fill=int(rng.integers(180, 256)), font=_font(int(rng.integers(10, 18))))
        return np.asarray(img)
    raise ValueError(kind)


SYNTHETIC_KINDS = ("gauss_noise", "uniform_noise", "salt_pepper", "linear_gradient", "radial_gradient", "checkerboard",
                   "stripes", "smooth_noise", "blobs", "text_on_dark")


def blank(rng: np.random.Generator, kind: str) -> np.ndarray:
    size = int(rng.choice([224, 256, 480, 640]))
    if kind == "constant":
        return np.full((size, size), int(rng.integers(0, 256)), np.uint8)
    if kind == "near_constant":
        return np.clip(rng.normal(rng.uniform(10, 245), rng.uniform(0.2, 1.5), (size, size)), 0, 255).astype(np.uint8)
    if kind == "saturated_white":
        img = np.full((size, size), 255, np.uint8)  # an over-exposed frame: 93-99% clipped white
        img[rng.random((size, size)) < rng.uniform(0.01, 0.07)] = int(rng.integers(100, 250))
        return img
    if kind == "saturated_black":
        img = np.zeros((size, size), np.uint8)  # a lens cap / dark frame: 93-99% clipped black
        img[rng.random((size, size)) < rng.uniform(0.01, 0.07)] = int(rng.integers(6, 150))
        return img
    raise ValueError(kind)


BLANK_KINDS = ("constant", "near_constant", "saturated_white", "saturated_black")


# --- the set ----------------------------------------------------------------------------
def build(out: str) -> list[dict[str, str]]:
    from PIL import Image

    rng = np.random.default_rng(SEED)
    rows: list[dict[str, str]] = []

    def put(group: str, source: str, transform: str, img: np.ndarray) -> None:
        name = f"{source}_{transform}.png"
        path = os.path.join(out, group, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img)).save(path, optimize=False)
        with open(path, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        rows.append({"file": f"{group}/{name}", "group": group, "source": source, "transform": transform, "sha256": digest})

    for name, load in PHOTOS.items():
        for t, img in variants(load(), rng):
            put("photos", name, t, img)
    for name, load in SCANS.items():
        for t, img in variants(load(), rng):
            put("documents", name, t, img)
    for i in range(60):
        kind = ("page", "form", "table")[i % 3]
        img = document(rng, kind)
        put("documents", f"drawn_{kind}{i:02d}", "orig", img)
        if i % 4 == 0:
            put("documents", f"drawn_{kind}{i:02d}", "crop50", _crop(img, rng, 0.5))
        if i % 6 == 0:
            put("documents", f"drawn_{kind}{i:02d}", "rot90", np.rot90(img).copy())
    for name, load in TEXTURES.items():
        for t, img in variants(load(), rng, full=False):
            put("synthetic", name, t, img)
    for kind in SYNTHETIC_KINDS:
        for i in range(8):
            put("synthetic", f"{kind}{i}", "orig", synthetic(rng, kind, int(rng.choice([224, 256, 320]))))
    for kind in BLANK_KINDS:
        for i in range(6):
            put("blank", f"{kind}{i}", "orig", blank(rng, kind))
    for name, load in MEDICAL.items():
        for t, img in variants(load(), rng, full=False):
            put("medical_other", name, t, img)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/ood_set", help="folder to write (default runs/ood_set)")
    a = p.parse_args(argv)
    rows = build(a.out)
    with open(os.path.join(a.out, "MANIFEST.csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "group", "source", "transform", "sha256"])
        w.writeheader()
        w.writerows(rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["group"]] = counts.get(r["group"], 0) + 1
    print(f"wrote {len(rows)} images to {a.out}: " + ", ".join(f"{g} {n}" for g, n in counts.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
