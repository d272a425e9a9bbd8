"""The runner's trust options in one place: ``--trust`` (signed models), ``--audit-log`` (the signed
audit trail) and the drift watch (the ``verify-audit``, ``device-keygen`` and ``page`` commands
are in ``trust_commands.py``).

Kept out of ``edgecxr_runner.py`` so the runner only calls :func:`add_trust_arguments` and
:class:`TrustSession` (verify before opening, then :meth:`~TrustSession.listener` for every result).
``serve`` and the page plug the same listener in (``listener(record, gray)``), from their own
threads, so it holds a lock. Nothing here imports ``cryptography`` unless a key is used, so a
runner started without these options needs numpy and an interpreter alone, as before.
"""
from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
from typing import Any

import numpy as np

from .signature import UNSIGNED, TrustError, sha256_file, verify_model


def add_trust_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("trust: signed models, audit trail, drift watch")
    g.add_argument("--trust", metavar="PUBKEY",
                   help="public key (or folder of keys) the model must be signed with (edgecxr sign): checked before the model "
                        "is opened; a changed, added or removed file is refused in one line. Without it results say 'unsigned'")
    g.add_argument("--audit-log", metavar="LOG",
                   help="append every decision to this hash-chained JSON-lines log, with checkpoints signed by the device key "
                        "(check it with: edgecxr_runner.py verify-audit LOG --trust DEVICE_PUBKEY)")
    g.add_argument("--device-key", metavar="KEY", help="--audit-log: the device's ed25519 key (default: device_ed25519.key beside LOG; "
                                                          "made by edgecxr_runner.py device-keygen, which install.sh runs)")
    g.add_argument("--drift-window", type=int, default=200, metavar="N",
                   help="drift watch: judge the last N images with edgecxr sitecheck's rules; a DRIFT line when they say NO-GO (default 200)")


def signature_status(model: str, trust: str | None) -> tuple[str, dict[str, str]]:
    """``("unsigned", {})`` without ``trust``; else the verified status and file digests, or SignatureError."""
    if not trust:
        return UNSIGNED, {}
    v = verify_model(model, trust)
    return v.status, v.files


class TrustSession:
    """One process's signature status, audit log and drift watch around one model."""

    def __init__(self, model: str, trust: str | None, audit_log: str | None = None, device_key: str | None = None,
                 drift_window: int = 200, warn: Any = None) -> None:
        if drift_window < 10:
            raise TrustError("--drift-window must be at least 10 images")
        self.model, self.trust = model, trust
        self.status, self._digests = signature_status(model, trust)  # before anything opens the model
        self.device_key = device_key or (os.path.join(os.path.dirname(os.path.abspath(audit_log)), "device_ed25519.key")
                                         if audit_log else None)
        if audit_log:
            from .audit import load_private_key

            load_private_key(self.device_key)  # a missing or wrong device key: one line now, not after the model is open
        self.model_sha256 = ""
        self.lock = threading.Lock()
        self.audit_path, self.drift_window = audit_log, drift_window
        self.audit: Any = None
        self.runtime = ""
        self.drift: Any = None
        self.warn = warn or (lambda m: print(f"edgecxr-runner: {m}", file=sys.stderr, flush=True))

    @property
    def short(self) -> str:
        return "signed" if self.status != UNSIGNED else UNSIGNED

    def attach(self, clf: Any) -> None:
        """After the model is open: tag its results, start the audit log and the drift watch."""
        from .drift import DriftWatch

        clf.signature = self.short
        b = clf.backend
        self.runtime = b.runtime
        if self.audit_path:
            from .audit import AuditLog

            self.model_sha256 = self._digests.get(os.path.basename(self.model)) or sha256_file(self.model)
            self.audit = AuditLog(self.audit_path, self.device_key, {"model": os.path.basename(b.path), "model_sha256": self.model_sha256,
                                                          "signature": self.status, "runtime": b.runtime})
            atexit.register(self.close)  # the closing checkpoint, however the process ends short of a kill
        self.drift = DriftWatch.for_contract(b.contract, window=self.drift_window)
        if self.drift.disabled and self.audit_path:  # said where the device is deployed, not on every one-off run
            self.warn(f"drift watch: {self.drift.disabled}")

    def header(self) -> str:
        return f"; signature: {self.status}"

    def listener(self, rec: dict[str, Any], gray: np.ndarray | None = None, path: str | None = None) -> None:
        """What serve calls for every result (and the runner for --image/--dir): audit line, then drift."""
        with self.lock:
            if self.audit is not None:
                from .audit import decision_event

                self.audit.append(decision_event(rec, self.model_sha256, self.status, self.runtime, path))
            event = self.drift.update(rec) if self.drift is not None else None
            if event is not None:
                self.warn(event["line"])
                if self.audit is not None:
                    self.audit.append({**event, "kind": "drift"})

    def close(self) -> None:
        with self.lock:
            if self.audit is not None:
                self.audit.close()
                self.audit = None


def open_session(a: argparse.Namespace) -> TrustSession:
    return TrustSession(a.model, a.trust, a.audit_log, a.device_key, a.drift_window)
