"""The page's own copy of the model, re-checked before every use.

The page opens the model itself (the runner's ``open_backend`` and ``Classifier``), never
shares the service's interpreter across threads, and looks at the files it was opened from
before each upload: when the model, a companion or its signature changed on disk, it is
loaded again, and with ``--trust`` verified again first, so a file swapped after start is
refused at that next load, with the signature check's one line.
"""
from __future__ import annotations

import os
import threading
from typing import Any

from ..signature import candidate_files, signature_path
from ..trust import signature_status


def _stamp(model: str) -> tuple[tuple[str, int, int, int], ...]:
    out = []
    for p in [*candidate_files(model), signature_path(model)]:
        try:
            st = os.stat(p)
            out.append((p, st.st_size, st.st_mtime_ns, st.st_ino))
        except FileNotFoundError:
            out.append((p, -1, 0, 0))
    return tuple(out)


class ModelRefused(RuntimeError):
    """The model on disk no longer passes its signature check: no classification until it does."""


class ModelHolder:
    """``classifier()`` under ``lock``: the current Classifier, reloaded (and re-verified) when its files change."""

    def __init__(self, model: str, trust: str | None, threads: int | None = None, runtime: str | None = None,
                 log: Any = print) -> None:
        self.model, self.trust, self.threads, self.runtime, self.log = model, trust, threads, runtime, log
        self.lock = threading.Lock()
        self.refused: str | None = None
        self.loads = 0
        self._stamp: tuple = ()
        self._clf: Any = None
        self.status = ""
        self._load()

    def _load(self) -> None:
        from ..backends import open_backend
        from ..classify import Classifier

        stamp = _stamp(self.model)
        self.status, _digests = signature_status(self.model, self.trust)  # SignatureError before anything opens it
        clf = Classifier(open_backend(self.model, self.threads, require_contract=True, runtime=self.runtime))
        clf.signature = "signed" if self.trust else "unsigned"
        self._clf, self._stamp, self.refused = clf, stamp, None
        self.loads += 1

    def classifier(self) -> Any:
        """Call with ``lock`` held. Raises :class:`ModelRefused` while the files on disk fail their check."""
        if _stamp(self.model) != self._stamp or self.refused:
            from ..signature import SignatureError

            try:
                self._load()
                self.log(f"model files changed on disk: reloaded {os.path.basename(self.model)} ({self.status})")
            except (SignatureError, ValueError, OSError) as exc:
                self._clf, self.refused = None, " ".join(str(exc).split())
                self.log(f"model refused at reload: {self.refused}")
        if self._clf is None:
            raise ModelRefused(self.refused or "model not loaded")
        return self._clf
