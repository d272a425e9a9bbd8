"""One entry point, ``explain``, over Grad-CAM and LIME, for any backend from ``open_model``."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edgecxr.device.backends import Backend
from edgecxr.device.decision import softmax
from edgecxr.device.preprocess import preprocess
from edgecxr.errors import EdgecxrError

METHODS = ("gradcam", "lime")


@dataclass
class LimeOptions:
    samples: int = 1000
    segments: int = 50
    batch_size: int = 32
    seed: int = 0


@dataclass
class Explanation:
    method: str
    map: np.ndarray  # Grad-CAM: model input size, 0..1; LIME: raw (working) image size, signed weights
    target: int
    probabilities: np.ndarray
    seconds: float
    details: dict = field(default_factory=dict)


def default_method(backend: Backend) -> str:
    return "gradcam" if hasattr(backend, "model") else "lime"


def target_index(classes: list[str] | tuple[str, ...], name: str | None) -> int | None:
    """``--class NAME`` -> index; None means "the predicted class"."""
    if name is None:
        return None
    if name not in classes:
        raise EdgecxrError(f"--class {name!r}: the model's classes are {', '.join(classes)}")
    return list(classes).index(name)


def explain(backend: Backend, gray: np.ndarray, method: str, target: int | None = None, lime: LimeOptions | None = None,
            segments: np.ndarray | None = None, progress: bool = True) -> Explanation:
    """Explain one raw uint8 grey image; ``segments`` fixes LIME's superpixels (for comparisons)."""
    if backend.contract is None:
        raise EdgecxrError(f"{backend.path}: model has no contract (classes, preprocessing); convert it with `edgecxr convert`")
    if method == "gradcam":
        if not hasattr(backend, "model"):
            raise EdgecxrError(f"{backend.path}: Grad-CAM needs gradients, so a .pt checkpoint; use --method lime for {backend.format} models")
        from edgecxr.explain.gradcam import gradcam_map

        x = preprocess(gray, backend.contract.preprocess)
        probs = softmax(backend.predict(x[None]).astype(np.float64))[0].astype(np.float32)
        t = int(probs.argmax()) if target is None else int(target)
        t0 = time.perf_counter()
        heat = gradcam_map(backend.model, backend.contract.arch, x, t)
        return Explanation("gradcam", heat, t, probs, time.perf_counter() - t0, {"layer": _cam_layer_name(backend)})
    if method == "lime":
        from edgecxr.explain.lime_explain import lime_map, working_image

        opts = lime or LimeOptions()
        if opts.samples < 2:
            raise EdgecxrError("--samples must be at least 2 (LIME fits a model to the perturbed samples)")
        img = working_image(gray)
        res, t = lime_map(backend, img, target, opts.samples, opts.segments, opts.batch_size, opts.seed, segments, progress)
        details = {"samples": res.num_samples, "superpixels": int(res.segments.max()) + 1, "fit_r2": res.score,
                   "batch_size": opts.batch_size, "seed": opts.seed, "samples_per_s": res.num_samples / max(res.seconds, 1e-9),
                   "map_size": list(img.shape)}
        return Explanation("lime", res.map, t, res.probabilities, res.seconds, details)
    raise EdgecxrError(f"--method {method!r}: choose one of {', '.join(METHODS)}")


def _cam_layer_name(backend: Backend) -> str:
    from edgecxr.models.registry import get_config

    return get_config(backend.contract.arch).cam_layer
