"""Dataset folders and the one split every stage shares.

A dataset is a folder with one subfolder per class; a run may combine several such
folders, one per **source** (hospital, public database), because a model trained on
one source per class learns the source instead of the disease (README "Training
for a new site"). The split is stratified by (source, class), deterministic for a
seed, keeps images with identical pixels in the same split (so a duplicate can
never leak from train into test), can hold a whole source (or one class of it) out
of training for a leave-one-source-out evaluation (split ``holdout``), and is
written as ``split.csv`` beside the run, where convert, bench and eval read it back.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, replace

import numpy as np

from edgecxr.device.atomic import write_text
from edgecxr.device.image_io import ImageError, is_image_file, load_gray
from edgecxr.errors import EdgecxrError

SPLIT_COLUMNS = ["file", "label", "split", "pixel_sha256"]
OPTIONAL_COLUMNS = ["source"]  # split files written before sources existed lack it
HOLDOUT = "holdout"  # the split of images held out of train/val/test (leave-one-source-out)


@dataclass(frozen=True)
class Sample:
    file: str  # relative to the dataset root, with forward slashes
    label: str
    split: str = ""
    pixel_sha256: str = ""
    source: str = ""  # the dataset folder the image came from ("" in split files older than sources)


@dataclass
class DatasetIndex:
    root: str
    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[str, str]]  # (file, reason) for unreadable images

    def of_split(self, split: str) -> list[Sample]:
        if split == "all":
            return list(self.samples)
        return [s for s in self.samples if s.split == split]

    @property
    def sources(self) -> list[str]:
        return sorted({s.source for s in self.samples})


def find_classes(root: str, min_classes: int = 2) -> list[str]:
    """Sorted class folders; refuse what would silently train a broken model.

    ``min_classes`` is 1 for a folder that is one source among several: a clinic's
    own labelled normals are one class folder, and the classifier's other classes
    come from the other sources (:func:`list_sources` checks the union).
    """
    if not os.path.isdir(root):
        raise EdgecxrError(f"{root}: dataset folder not found; pass --data DIR with one subfolder per class")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise EdgecxrError(f"{root}: no class folders; expected e.g. {root}/COVID/*.png and {root}/Normal/*.png")
    empty = [c for c in classes if not any(is_image_file(f) for f in _walk(os.path.join(root, c)))]
    if empty:
        raise EdgecxrError(f"{root}: class folder(s) {', '.join(empty)} hold no images; add images or remove the folder")
    if len(classes) < min_classes:
        raise EdgecxrError(f"{root}: only one class folder ({classes[0]}); a classifier needs at least two "
                           "(or give it as one --data source beside others that hold the other classes)")
    return classes


def _walk(folder: str) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(folder):
        out.extend(os.path.join(dirpath, f) for f in files)
    return sorted(out)


def list_images(root: str, min_classes: int = 2) -> tuple[list[str], list[Sample]]:
    classes = find_classes(root, min_classes)
    samples = []
    for c in classes:
        for path in _walk(os.path.join(root, c)):
            if is_image_file(path):
                samples.append(Sample(os.path.relpath(path, root).replace(os.sep, "/"), c, source=source_name(root)))
    return classes, samples


def source_name(root: str) -> str:
    return os.path.basename(os.path.abspath(root).rstrip(os.sep))


def dataset_root(roots: list[str]) -> str:
    """The folder a multi-source split's file names are relative to (the folder itself for one source)."""
    roots = [os.path.abspath(r) for r in roots]
    return roots[0] if len(roots) == 1 else os.path.commonpath(roots)


def list_sources(roots: list[str], keep_classes: list[str] | None = None) -> tuple[str, list[str], list[Sample]]:
    """Several dataset folders as one: ``(common root, classes, samples)``.

    Each folder is a source named after it; files are relative to the folders'
    common parent, so every stage that joins ``root`` and ``file`` works unchanged.
    ``keep_classes`` selects classes (e.g. the TB database's Normal images beside
    a COVID database, without its Tuberculosis class).
    """
    roots = [os.path.abspath(r) for r in roots]
    names = [source_name(r) for r in roots]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EdgecxrError(f"--data: two folders named {dupes[0]!r}; each source needs its own folder name")
    for a in roots:
        for b in roots:
            if a != b and os.path.commonpath([a, b]) == a:
                raise EdgecxrError(f"--data: {b} lies inside {a}; give sibling folders, one per source")
    per_root = [list_images(r, min_classes=2 if len(roots) == 1 else 1) for r in roots]
    found = sorted({c for classes, _ in per_root for c in classes})
    classes = found
    if len(found) < 2:
        raise EdgecxrError(f"--data: every folder holds only class {found[0]}; a classifier needs at least two classes")
    if keep_classes:
        unknown = [c for c in keep_classes if c not in found]
        if unknown:
            raise EdgecxrError(f"--classes {','.join(unknown)}: no such class folder; the data has {', '.join(found)}")
        classes = sorted(set(keep_classes))
        if len(classes) < 2:
            raise EdgecxrError("--classes: a classifier needs at least two classes")
    if len(roots) == 1:
        root = roots[0]
        samples = [s for s in per_root[0][1] if s.label in classes]
        return root, classes, samples
    common = dataset_root(roots)
    samples = []
    for r, (_classes, found_samples) in zip(roots, per_root):
        prefix = os.path.relpath(r, common).replace(os.sep, "/")
        samples += [replace(s, file=f"{prefix}/{s.file}") for s in found_samples if s.label in classes]
    return common, classes, samples


def pixel_hash(img: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(img).tobytes() + str(img.shape).encode()).hexdigest()


def hash_images(root: str, samples: list[Sample], progress: bool = True) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Decode every image once: yields pixel hashes and finds the unreadable files."""
    from edgecxr.progress import progress as progress_bar

    good, skipped = [], []
    for s in progress_bar(samples, desc="indexing images", unit="img", enabled=progress):
        try:
            img = load_gray(os.path.join(root, s.file))
        except ImageError as exc:
            skipped.append((s.file, str(exc)))
            continue
        good.append(replace(s, pixel_sha256=pixel_hash(img)))
    return good, skipped


def parse_ratios(text: str) -> tuple[float, float, float]:
    """'80/10/10' or '0.96,0.02,0.02' -> fractions that sum to 1."""
    parts = [p for p in text.replace(",", "/").split("/") if p.strip()]
    try:
        vals = [float(p) for p in parts]
    except ValueError as exc:
        raise EdgecxrError(f"--split {text!r}: expected three numbers like 80/10/10") from exc
    if len(vals) != 3 or any(v < 0 for v in vals) or sum(vals) <= 0:
        raise EdgecxrError(f"--split {text!r}: expected three non-negative numbers like 80/10/10")
    total = sum(vals)
    return vals[0] / total, vals[1] / total, vals[2] / total


def holdout_matcher(holdout: list[str] | tuple[str, ...], samples: list[Sample]):
    """``SOURCE`` or ``SOURCE/CLASS`` patterns -> a predicate on samples; unknown patterns are an error."""
    pairs = []
    known = {(s.source, s.label) for s in samples}
    for pattern in holdout:
        source, _, label = pattern.partition("/")
        if not any(src == source and (not label or lab == label) for src, lab in known):
            names = ", ".join(sorted({f"{src}/{lab}" for src, lab in known}))
            raise EdgecxrError(f"--holdout {pattern}: matches no image; give SOURCE or SOURCE/CLASS among {names}")
        pairs.append((source, label))
    return lambda s: any(s.source == src and (not lab or s.label == lab) for src, lab in pairs)


def assign_splits(samples: list[Sample], ratios: tuple[float, float, float], seed: int,
                  holdout: list[str] | tuple[str, ...] = ()) -> list[Sample]:
    """Stratified by (source, class), grouped by pixel hash, deterministic for ``seed``.

    Groups of identical images are placed as one unit. Each (source, class) stratum
    is shuffled with a generator seeded from (seed, class name) only, so adding a
    source or a class never reshuffles the others: a run on two sources splits the
    first source's images exactly as a run on that source alone (the same test
    images, so variants compare paired). ``holdout`` patterns (``SOURCE`` or
    ``SOURCE/CLASS``) send every matching image to split ``holdout``.
    """
    held = holdout_matcher(holdout, samples) if holdout else (lambda _s: False)
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.pixel_sha256 or s.file].append(s)
    assigned: dict[str, str] = {}
    by_stratum: dict[tuple[str, str], list[str]] = defaultdict(list)
    for key in sorted(groups):
        if any(held(s) for s in groups[key]):
            assigned[key] = HOLDOUT
        else:
            by_stratum[(groups[key][0].source, groups[key][0].label)].append(key)
    for source, label in sorted(by_stratum):
        keys = by_stratum[(source, label)]
        seed_bytes = hashlib.sha256(f"{seed}:{label}".encode()).digest()[:8]
        rng = np.random.default_rng(int.from_bytes(seed_bytes, "little"))
        order = [keys[i] for i in rng.permutation(len(keys))]
        n = len(order)
        n_test = int(round(n * ratios[2]))
        n_val = int(round(n * ratios[1]))
        if ratios[2] > 0 and n >= 3:
            n_test = max(n_test, 1)
        if ratios[1] > 0 and n >= 3:
            n_val = max(n_val, 1)
        for i, key in enumerate(order):
            assigned[key] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return [replace(s, split=assigned[s.pixel_sha256 or s.file]) for s in samples]


def build_index(root: str | list[str], ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0, progress: bool = True,
                classes: list[str] | None = None, holdout: list[str] | tuple[str, ...] = ()) -> DatasetIndex:
    """Index one dataset folder or several (one per source) and split them; see :func:`list_sources`."""
    common, found, samples = list_sources([root] if isinstance(root, str) else list(root), classes)
    samples, skipped = hash_images(common, samples, progress)
    present = {s.label for s in samples}
    missing = [c for c in found if c not in present]
    if missing:
        raise EdgecxrError(f"{common}: no readable image in class folder(s) {', '.join(missing)}")
    split = assign_splits(samples, ratios, seed, holdout)
    trained = {s.label for s in split if s.split == "train"}
    if holdout and set(found) - trained:
        raise EdgecxrError(f"--holdout {' '.join(holdout)} leaves no training image of {', '.join(sorted(set(found) - trained))}; "
                           "hold out fewer sources")
    return DatasetIndex(common, found, split, skipped)


def index_unsplit(root: str, progress: bool = True) -> DatasetIndex:
    """A foreign test set: every readable image, all in split ``all``."""
    classes, samples = list_images(root)
    samples, skipped = hash_images(root, samples, progress)
    return DatasetIndex(os.path.abspath(root), classes, [replace(s, split="all") for s in samples], skipped)


def write_split_csv(path: str, index: DatasetIndex) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SPLIT_COLUMNS + OPTIONAL_COLUMNS)
    for s in index.samples:
        w.writerow([s.file, s.label, s.split, s.pixel_sha256, s.source])
    write_text(path, buf.getvalue())


def read_split_csv(path: str, root: str, classes: list[str] | None = None) -> DatasetIndex:
    """Read a split back; ``classes`` (from a model's contract) fixes the label order."""
    if not os.path.exists(path):
        raise EdgecxrError(f"{path}: split file not found; was the run written by `edgecxr train`?")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or set(SPLIT_COLUMNS) - set(rows[0]):
        raise EdgecxrError(f"{path}: not an edgecxr split file (columns {', '.join(SPLIT_COLUMNS)})")
    samples = [Sample(r["file"], r["label"], r["split"], r["pixel_sha256"], r.get("source") or "") for r in rows]
    found = sorted({s.label for s in samples})
    classes = list(classes) if classes else found
    unknown = set(found) - set(classes)
    if unknown:
        raise EdgecxrError(f"{path}: labels {sorted(unknown)} are not among the model's classes {classes}")
    return DatasetIndex(os.path.abspath(root), classes, samples, [])


def class_counts(samples: list[Sample]) -> dict[str, int]:
    return dict(sorted(Counter(s.label for s in samples).items()))


def stratified_subset(samples: list[Sample], n: int, seed: int = 0) -> list[Sample]:
    """Up to ``n`` samples with class proportions kept; used to pick calibration images."""
    if n >= len(samples):
        return list(samples)
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    out: list[Sample] = []
    for label in sorted(by_class):
        group = by_class[label]
        k = max(1, int(round(n * len(group) / len(samples))))
        out.extend(group[i] for i in sorted(rng.choice(len(group), size=min(k, len(group)), replace=False)))
    return out[:n] if len(out) > n else out
