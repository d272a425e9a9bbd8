"""One image in, class probabilities out, with every stage timed separately.

The runner's own cost (decoding, preprocessing, input quantization, softmax) is
reported apart from ``invoke()``, so a slow Pi pipeline can be blamed on the right
step. Preprocessing is ``preprocess.preprocess`` with the spec from the model's
contract: the code training used, nothing re-implemented here.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _npimage
from .backends import Backend
from .decision import REFUSE, Verdict, decide, quality_refusal, refused
from .image_io import ImageError, load_gray, to_uint8
from .ood import ood_scores
from .preprocess import preprocess
from .site_rules import score_spec


@dataclass
class Prediction:
    """``probabilities`` are calibrated (the contract's temperature applied); all NaN when
    the image was refused before the model ran. ``verdict`` is answer / refer / refuse."""

    source: str
    classes: tuple[str, ...]
    probabilities: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)
    verdict: Verdict | None = None
    signature: str = "unsigned"  # the model's signature status (the runner's --trust, device/signature.py)
    ood_score: float | None = None  # the score sitecheck and the drift watch measure shifts with (device/drift.py)

    @property
    def ran_model(self) -> bool:
        return bool(np.isfinite(self.probabilities).all())

    @property
    def label(self) -> str | None:
        """The most probable class; ``None`` for a refused image (no prediction is given)."""
        if self.verdict is not None and self.verdict.action == REFUSE:
            return None
        return self.classes[int(np.argmax(self.probabilities))]

    def top_k(self, k: int) -> list[tuple[str, float]]:
        if not self.ran_model:
            return []
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(self.classes[i], float(self.probabilities[i])) for i in order]


def _ms(t0: int) -> float:
    return (time.perf_counter_ns() - t0) / 1e6


class Classifier:
    """A backend plus its contract's preprocessing; one instance per model."""

    def __init__(self, backend: Backend) -> None:
        if backend.contract is None:
            raise ValueError("Classifier needs a backend with a contract")
        self.backend = backend
        self.spec = backend.contract.preprocess
        self.classes = tuple(backend.contract.classes)
        self.decision = backend.contract.decision  # temperature, conformal sets, refusals (decision.py)
        self.signature = "unsigned"  # set by the runner's --trust once the files are verified (trust.py)

    def tensor(self, gray: np.ndarray) -> np.ndarray:
        """uint8 HxW -> the 1xCxHxW float32 batch every backend accepts."""
        return preprocess(gray, self.spec)[None]

    def classify_gray(self, gray: np.ndarray, source: str) -> Prediction:
        """Image-quality refusal first (no model run), then the model, then the decision."""
        t = time.perf_counter_ns()
        refusal = quality_refusal(gray, self.decision)
        if refusal is not None:
            nan = np.full(len(self.classes), np.nan)
            return Prediction(source, self.classes, nan, {"quality_ms": _ms(t)}, refused(refusal, self.classes), self.signature)
        x = self.tensor(gray)
        pre = _ms(t)
        t = time.perf_counter_ns()
        prepared = self.backend.prepare(x)
        prep = _ms(t)
        t = time.perf_counter_ns()
        raw = self.backend.invoke(prepared)
        infer = _ms(t)
        t = time.perf_counter_ns()
        z = self.backend.decode(raw).reshape(-1)
        verdict = decide(z, self.classes, self.decision)
        post = _ms(t)
        return Prediction(source, self.classes, verdict.probabilities,
                          {"preprocess_ms": pre, "quantize_ms": prep, "inference_ms": infer, "postprocess_ms": post}, verdict,
                          self.signature, float(ood_scores(z[None], score_spec(self.decision))[0]))

    def classify_file(self, path: str) -> Prediction:
        """Raises :class:`ImageError` (one line) for anything that is not a usable image."""
        return self._classify_decoded(load_gray, path, path)

    def classify_frame(self, frame: np.ndarray, source: str) -> Prediction:
        """A camera frame (BGR, BGRA or grey; 8 or 16 bit) -> prediction."""
        return self._classify_decoded(frame_to_gray, frame, source)

    def _classify_decoded(self, decode: Callable[[Any], np.ndarray], item: Any, source: str) -> Prediction:
        """``decode(item)`` to grey, timed as ``decode_ms`` ahead of the other timings."""
        t = time.perf_counter_ns()
        gray = decode(item)
        decode_ms = _ms(t)
        pred = self.classify_gray(gray, source)
        pred.timings_ms = {"decode_ms": decode_ms, **pred.timings_ms}
        return pred


def frame_to_gray(frame: np.ndarray | None) -> np.ndarray:
    """What ``load_gray`` does for files, for frames a capture device hands over."""
    if frame is None or not isinstance(frame, np.ndarray) or frame.size == 0:
        raise ImageError("empty frame")
    if frame.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"frame has unsupported pixel type {frame.dtype}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 3 and frame.shape[2] in (3, 4):
        frame = _npimage.bgr_to_gray(frame)  # bit-exact with cv2.cvtColor(BGR2GRAY)
    if frame.ndim != 2 or min(frame.shape) < 2:
        raise ImageError(f"frame has unsupported shape {frame.shape}")
    return np.ascontiguousarray(to_uint8(frame))
