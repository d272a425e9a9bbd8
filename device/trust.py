"""The runner's trust options in one place: ``--trust`` (signed models), ``--audit-log`` (the signed
audit trail) and the drift watch (the ``verify-audit``, ``device-keygen`` and ``page`` commands
are in ``trust_commands.py``).

Kept out of ``edgecxr_runner.py`` so the runner only calls three things: :func:`add_trust_arguments`,
:class:`TrustSession` (verify before opening, then observe every
result) and its ``close``. ``serve`` plugs the same pieces in as result listeners
(``listener(record, gray)``). Nothing here imports ``cryptography`` unless a key is used, so a
runner started without these options needs numpy and an interpreter alone, as before.
"""
from __future__ import annotations

import argparse
import atexit
import os
import sys
from typing import Any

import numpy as np

from .signature import UNSIGNED, SignatureError, sha256_file, verify_model


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
            raise SignatureError("--drift-window must be at least 10 images")
        self.model, self.trust = model, trust
        self.status, digests = signature_status(model, trust)  # before anything opens the model
        self.model_sha256 = digests.get(os.path.basename(model)) or sha256_file(model)
        self.audit_path, self.device_key, self.drift_window = audit_log, device_key, drift_window
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

            key = self.device_key or os.path.join(os.path.dirname(os.path.abspath(self.audit_path)), "device_ed25519.key")
            self.audit = AuditLog(self.audit_path, key, {"model": os.path.basename(b.path), "model_sha256": self.model_sha256,
                                                          "signature": self.status, "runtime": b.runtime})
            atexit.register(self.close)  # the closing checkpoint, however the process ends short of a kill
        self.drift = DriftWatch.for_contract(b.contract, window=self.drift_window)
        if self.drift.disabled and self.audit_path:  # said where the device is deployed, not on every one-off run
            self.warn(f"drift watch: {self.drift.disabled}")

    def header(self) -> str:
        return f"; signature: {self.status}"

    def listener(self, rec: dict[str, Any], gray: np.ndarray | None = None, path: str | None = None) -> None:
        """What serve calls for every result (and the runner for --image/--dir): audit line, then drift."""
        if self.audit is not None:
            from .audit import decision_event

            self.audit.append(decision_event(rec, self.model_sha256, self.status, self.runtime, path))
        if self.drift is not None:
            event = self.drift.update(rec)
            if event is not None:
                self.warn(event["line"])
                if self.audit is not None:
                    self.audit.append({**event, "kind": "drift"})

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()
            self.audit = None


def open_session(a: argparse.Namespace) -> TrustSession:
    return TrustSession(a.model, a.trust, a.audit_log, a.device_key, a.drift_window)
