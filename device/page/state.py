"""What the page shows, kept in one place: the model's summary, the last decisions with their
thumbnails, the drift watch's status, and the upload path through the runner's own Classifier.

Thumbnails and uploads live in the state folder only (``thumbs/``, ``uploads/``); an upload is
written under a name the page makes (never the one sent), decoded by the runner's image reader,
classified, audited, and deleted. Decisions reach it from its own uploads and, beside ``serve``,
from the service's results (:meth:`PageState.listener`).
"""
from __future__ import annotations

import os
import secrets
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from .. import _npimage
from ..decision import summary as decision_summary
from ..image_io import ImageError
from .model import ModelHolder, ModelRefused

UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".dcm")
THUMB_SIDE = 128
RECENT = 30


class UploadRefused(ValueError):
    """An upload the page will not classify: ``status`` is the HTTP code, the message the reason shown."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def thumbnail(gray: np.ndarray) -> bytes:
    step = max(1, int(np.ceil(max(gray.shape) / THUMB_SIDE)))
    return _npimage.encode_png(np.ascontiguousarray(gray[::step, ::step]))


def _sniff(data: bytes) -> str | None:
    """The suffix the bytes' own signature says, whatever the sent name claims."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data.startswith(b"BM"):
        return ".bmp"
    if len(data) > 132 and data[128:132] == b"DICM":
        return ".dcm"
    return None


class PageState:
    def __init__(self, holder: ModelHolder, folder: str, session: Any = None, selftest: dict[str, Any] | None = None,
                 log: Any = print) -> None:
        self.holder, self.session, self.selftest, self.log = holder, session, selftest or {}, log
        self.folder = os.path.realpath(folder)
        self.thumbs = os.path.join(self.folder, "thumbs")
        self.uploads = os.path.join(self.folder, "uploads")
        for d in (self.thumbs, self.uploads):
            os.makedirs(d, exist_ok=True)
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.lock = threading.Lock()
        self.started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())

    # --- what the page shows ---------------------------------------------------------------
    @property
    def selftest_line(self) -> str:
        from ..selftest import selftest_line

        return selftest_line(self.selftest) if self.selftest else "self-test: not run"

    def model_summary(self) -> dict[str, Any]:
        with self.holder.lock:
            try:
                clf = self.holder.classifier()
            except ModelRefused as exc:
                return {"name": os.path.basename(self.holder.model), "refused": str(exc), "signature": "refused"}
        b, c = clf.backend, clf.backend.contract
        return {"name": os.path.basename(b.path), "arch": c.arch, "format": b.format, "precision": c.precision,
                "classes": list(c.classes), "runtime": b.runtime, "decision": decision_summary(c.decision),
                "signature": self.holder.status, "loads": self.holder.loads}

    def drift(self) -> dict[str, Any]:
        watch = getattr(self.session, "drift", None)
        return watch.status() if watch is not None else {"state": "off", "line": "drift watch: off"}

    def decisions(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(reversed(self.recent))

    def thumb_path(self, name: str) -> str | None:
        """The file for ``/thumbs/NAME``, or None: only a name this page made, only inside its folder."""
        if len(name) != 20 or not name.endswith(".png") or not all(ch in "0123456789abcdef" for ch in name[:16]):
            return None
        path = os.path.realpath(os.path.join(self.thumbs, name))
        return path if os.path.dirname(path) == self.thumbs and os.path.isfile(path) else None

    # --- decisions in ----------------------------------------------------------------------
    def listener(self, rec: dict[str, Any], gray: np.ndarray | None = None, origin: str = "service") -> dict[str, Any]:
        """A result to show (serve's listener signature, ``listener(record, gray)``)."""
        item_id = secrets.token_hex(8)
        if gray is not None:
            path = os.path.join(self.thumbs, item_id + ".png")
            with open(path + ".tmp", "wb") as fh:
                fh.write(thumbnail(gray))
            os.replace(path + ".tmp", path)
        probs = rec.get("probabilities") or {}
        item = {"id": item_id, "thumb": f"/thumbs/{item_id}.png" if gray is not None else None, "origin": origin,
                "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()) + " UTC", "action": rec.get("action") or "answer",
                "reason": rec.get("reason") or rec.get("decision") or rec.get("label") or "", "label": rec.get("label"),
                "source": os.path.basename(str(rec.get("file") or ""))[:80], "probabilities": {k: float(v) for k, v in probs.items()},
                "signature": rec.get("signature", "")}
        with self.lock:
            self.recent.append(item)
        return item

    def classify_upload(self, data: bytes, sent_name: str) -> dict[str, Any]:
        """One uploaded image through the runner's Classifier; :class:`UploadRefused` with the reason otherwise."""
        from ..gated import classify_path, gated_record

        suffix = _sniff(data)
        if suffix is None:
            raise UploadRefused(415, "not an image: the file is not PNG, JPEG, BMP or DICOM (checked by its content, not its name)")
        tmp = os.path.join(self.uploads, secrets.token_hex(8) + suffix)  # never the sent name: no path from outside
        with open(tmp, "wb") as fh:
            fh.write(data)
        shown = os.path.basename(sent_name.replace("\\", "/"))[:80] or "upload"
        try:
            with self.holder.lock:
                try:
                    clf = self.holder.classifier()
                except ModelRefused as exc:
                    raise UploadRefused(503, f"model refused: {exc}") from exc
                try:
                    pred, gate, gray = classify_path(clf, tmp, shown)
                except ImageError as exc:
                    raise UploadRefused(415, "not a usable image: " + str(exc).replace(tmp, shown)) from exc
                rec = gated_record(pred, gate, 3)
                if self.session is not None:
                    self.session.listener(rec, gray, tmp)
        finally:
            os.unlink(tmp)
        return self.listener(rec, gray, origin="upload")
