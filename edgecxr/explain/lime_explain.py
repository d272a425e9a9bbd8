"""LIME for any model file (checkpoint, ONNX, TFLite), through the runtime interface of ``eval``.

LIME perturbs the image the user gave, before our preprocessing: superpixels are
switched off (filled with their own mean grey, LIME's default) on the raw X-ray, and
each perturbed image then goes through the contract's preprocessing and
``backend.predict``, exactly like a real input would.

The weighted linear fit is LIME's own (``LimeBase.explain_instance_with_data``, with
the same sampling, cosine distances and kernel as ``LimeImageExplainer``). The
sampling loop is ours because LIME's builds each mask with one full-image pass per
hidden superpixel and calls the model in fixed batches of 10 with a progress bar
that cannot be turned off; here masks are one indexing operation, batches are
``batch_size`` images, and the bar follows ``--quiet``. That keeps LIME usable on a
batch-1 INT8 TFLite model, where thousands of inferences are needed.

Segmentation (SLIC on the grey image) and the perturbation matrix depend only on the
image and the seed, so two models explained with the same seed see exactly the same
perturbed images: any difference between their maps comes from the models.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgecxr.device.backends import Backend
from edgecxr.device.decision import softmax
from edgecxr.device.preprocess import preprocess

MAX_SIDE = 512  # LIME works on the raw image; beyond this, a downscaled copy gives the same model input


@dataclass
class LimeResult:
    map: np.ndarray  # HxW float32: the fitted weight of each pixel's superpixel (signed)
    segments: np.ndarray  # HxW int: superpixel labels 0..n-1
    probabilities: np.ndarray  # model's softmax on the unperturbed image
    seconds: float
    num_samples: int
    score: float  # R^2 of LIME's local linear fit


def working_image(gray: np.ndarray) -> np.ndarray:
    """The raw image, downscaled (area) only if its longer side exceeds ``MAX_SIDE``."""
    h, w = gray.shape
    if max(h, w) <= MAX_SIDE:
        return gray
    import cv2

    s = MAX_SIDE / max(h, w)
    return cv2.resize(gray, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def segment_image(gray: np.ndarray, n_segments: int = 50, compactness: float = 0.1) -> np.ndarray:
    """SLIC superpixels on the grey image, relabelled 0..n-1 (LIME indexes features by label)."""
    from skimage.segmentation import slic

    seg = slic(gray.astype(np.float64) / 255.0, n_segments=n_segments, compactness=compactness, channel_axis=None, start_label=0)
    _, relabelled = np.unique(seg, return_inverse=True)
    return relabelled.reshape(gray.shape).astype(np.int32)


def perturbation_matrix(n_features: int, num_samples: int, seed: int) -> np.ndarray:
    """LIME's sampling: random on/off per superpixel, first row the original image."""
    rng = np.random.RandomState(seed)
    data = rng.randint(0, 2, num_samples * n_features).reshape((num_samples, n_features))
    data[0, :] = 1
    return data


def lime_map(backend: Backend, gray: np.ndarray, target: int | None = None, num_samples: int = 1000, n_segments: int = 50,
             batch_size: int = 32, seed: int = 0, segments: np.ndarray | None = None, progress: bool = True) -> tuple[LimeResult, int]:
    """Explain ``target`` (default: the predicted class) on a raw uint8 grey image; returns the result and the class."""
    import sklearn.metrics
    from lime.lime_image import LimeImageExplainer

    from edgecxr.progress import progress as progress_bar

    spec = backend.contract.preprocess
    segs = segment_image(gray, n_segments) if segments is None else segments
    n_features = int(segs.max()) + 1
    means = np.bincount(segs.ravel(), weights=gray.ravel().astype(np.float64), minlength=n_features) / np.maximum(np.bincount(segs.ravel(), minlength=n_features), 1)
    fill = np.round(means).astype(np.uint8)[segs]
    data = perturbation_matrix(n_features, num_samples, seed)

    t0 = time.perf_counter()
    probs = []
    bar = progress_bar(total=num_samples, desc=f"LIME ({backend.runtime})", unit="sample", enabled=progress)
    for start in range(0, num_samples, batch_size):
        rows = data[start : start + batch_size]
        batch = np.stack([preprocess(np.where(row[segs].astype(bool), gray, fill), spec) for row in rows])
        probs.append(softmax(backend.predict(batch).astype(np.float64)))
        bar.update(len(rows))
    bar.close()
    labels = np.concatenate(probs)
    seconds = time.perf_counter() - t0

    target = int(labels[0].argmax()) if target is None else int(target)
    distances = sklearn.metrics.pairwise_distances(data, data[0].reshape(1, -1), metric="cosine").ravel()
    explainer = LimeImageExplainer(random_state=seed)
    _intercept, local_exp, score, _pred = explainer.base.explain_instance_with_data(
        data, labels, distances, target, n_features, feature_selection="none")
    weights = np.zeros(n_features, dtype=np.float32)
    for feature, w in local_exp:
        weights[int(feature)] = w
    return LimeResult(weights[segs], segs, labels[0].astype(np.float32), seconds, num_samples, float(score)), target
