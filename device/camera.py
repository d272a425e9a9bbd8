"""Camera mode: classify frames from an OpenCV capture until told to stop.

A bedside Pi runs this for hours under systemd, so a dropped or malformed frame is
reported and skipped rather than ending the run, SIGINT/SIGTERM stop it cleanly
between frames (the capture is always released), and each result is one flushed
line so journald and pipes see it at once.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Any

from .classify import Classifier
from .image_io import ImageError
from .runner_io import emit, record, text_line, warn


class CameraError(RuntimeError):
    """The capture cannot be opened or stopped delivering frames; one line."""


def open_capture(source: str) -> tuple[Any, bool]:
    """``source`` is a camera index ("0") or a video file/URL; returns (capture, is_file)."""
    try:
        import cv2
    except ImportError as exc:
        raise CameraError("camera mode needs OpenCV: pip install opencv-python-headless") from exc
    is_index = source.strip().isdigit()
    if not is_index and "://" not in source and not os.path.exists(source):
        raise CameraError(f"--camera {source}: not a camera index and no such video file")
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our one-line error replaces its warnings
    try:
        cap = cv2.VideoCapture(int(source)) if is_index else cv2.VideoCapture(source)
    finally:
        cv2.utils.logging.setLogLevel(previous)
    if not cap.isOpened():
        cap.release()
        if is_index:
            raise CameraError(f"no camera at index {source} (OpenCV could not open /dev/video{source}); "
                              "list cameras with `v4l2-ctl --list-devices`")
        raise CameraError(f"--camera {source}: OpenCV could not open this video")
    return cap, not is_index


class _StopFlag:
    """SIGINT/SIGTERM set a flag checked between frames, so a read is never cut in half."""

    def __init__(self) -> None:
        self.stopped = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.stopped = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_camera(classifier: Classifier, capture: Any, *, is_file: bool, every: int = 1, max_frames: int | None = None,
               max_fps: float | None = None, top_k: int = 3, as_json: bool = False, max_dropped: int = 50) -> dict[str, Any]:
    """Read, classify every ``every``-th frame, print; returns counts for the summary.

    For a video file a failed read means the end; for a camera it is a dropped frame,
    and only ``max_dropped`` failures in a row end the run (with :class:`CameraError`).
    """
    counts = {"read": 0, "classified": 0, "dropped": 0, "bad": 0, "seconds": 0.0, "interrupted": False}
    start = last = time.perf_counter()
    in_a_row = 0
    try:
        with _StopFlag() as flag:
            while not flag.stopped and (max_frames is None or counts["read"] < max_frames):
                ok, frame = capture.read()
                if not ok:
                    if is_file:
                        break
                    counts["dropped"] += 1
                    in_a_row += 1
                    warn(f"frame {counts['read'] + 1}: dropped (the camera returned no image)")
                    if in_a_row >= max_dropped:
                        raise CameraError(f"camera delivered no image {max_dropped} times in a row; is it still connected?")
                    time.sleep(0.02)
                    continue
                in_a_row = 0
                counts["read"] += 1
                n = counts["read"]
                if (n - 1) % every:
                    continue
                try:
                    pred = classifier.classify_frame(frame, f"frame {n}")
                except ImageError as exc:
                    counts["bad"] += 1
                    warn(f"frame {n}: skipped ({exc})")
                    continue
                counts["classified"] += 1
                now = time.perf_counter()
                fps = 1.0 / max(now - last, 1e-9)
                last = now
                if as_json:
                    emit({**record(pred, top_k), "fps": round(fps, 2)})
                else:
                    emit(f"{text_line(pred, top_k)}, {fps:.1f} fps")
                if max_fps:
                    time.sleep(max(0.0, 1.0 / max_fps - (time.perf_counter() - now)))
            counts["interrupted"] = flag.stopped
    finally:
        capture.release()
        counts["seconds"] = time.perf_counter() - start
    return counts
