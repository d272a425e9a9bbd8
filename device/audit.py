"""An append-only audit trail of every decision the device makes, in which any edit shows.

One JSON line per event, appended and fsynced before the result is shown, so a power cut
loses at most the line being written. Every line carries the sha256 of the line before it
(``prev``) and its own position (``seq``): an edited, inserted, deleted or swapped line
breaks the chain where it happened. A chain alone can be rewritten from the tampered line
on, and says nothing when the tail is cut off; so every ``every`` records, and when the
log is closed, the device appends a checkpoint signed with its own ed25519 key (made at
install, ``edgecxr_runner.py device-keygen``) that lists a short fingerprint of every line
since the previous checkpoint (that one included). The verifier (:mod:`.audit_verify`)
trusts only the device's public key: it names the exact line that was changed, added,
removed or moved, and says when the log stops after its last checkpoint without the
closing one (a cut-off tail, or a device that lost power). A torn last line (power cut
mid-append) is kept, and the next session's ``start`` line records its digest and
chains past it, so appending continues and the verifier reports it as torn, not forged.

What a decision line holds: time, the input's sha256, DICOM SOP/Study instance UIDs when
the input has them, the model's sha256 and signature status, the runtime, the action,
the calibrated probabilities, the reason. Never a file name, a patient name or pixels.
Standard library plus ``cryptography`` (for the ed25519 checkpoints).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from typing import Any

from .signature import TrustError

CHECKPOINT_EVERY = 100
FP_HEX = 16  # fingerprint length in a checkpoint: 64 bits of the line's sha256
KEY_NAME = "device_ed25519"


class AuditError(TrustError):
    """The audit log or the device key cannot be used: one line."""


def canonical(obj: dict[str, Any]) -> bytes:
    """The one byte form of a line: sorted keys, no spaces, UTF-8 (what is hashed and signed)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def line_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def fingerprint(raw: bytes) -> str:
    return line_hash(raw)[:FP_HEX]


def now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


# --- the device key -------------------------------------------------------------------------
def device_keygen(folder: str) -> tuple[str, str]:
    """``FOLDER/device_ed25519.key`` (private, 0600) and ``.pub``; refuses to overwrite (a new key
    would orphan the logs signed with the old one)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    priv, pub = os.path.join(folder, KEY_NAME + ".key"), os.path.join(folder, KEY_NAME + ".pub")
    if os.path.exists(priv) or os.path.exists(pub):
        raise AuditError(f"{priv} exists; a device keeps its key (remove it by hand to make a new one)")
    os.makedirs(folder, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        fh.flush()
        os.fsync(fh.fileno())
    with open(pub, "wb") as fh:
        fh.write(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def _load_key(path: str, private: bool) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        with open(path, "rb") as fh:
            data = fh.read()
        key = serialization.load_pem_private_key(data, None) if private else serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as exc:
        what = "device private key" if private else "device public key"
        raise AuditError(f"{path}: not a usable {what} ({' '.join(str(exc).split())}); "
                         "make one with edgecxr_runner.py device-keygen --out FOLDER") from exc
    want = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, want):
        raise AuditError(f"{path}: not an ed25519 key (edgecxr_runner.py device-keygen makes one)")
    return key


def key_id(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: str) -> Any:
    return _load_key(path, private=False)


def load_private_key(path: str) -> Any:
    return _load_key(path, private=True)


def checkpoint_valid(obj: dict[str, Any], public_key: Any) -> bool:
    from cryptography.exceptions import InvalidSignature

    body = {k: v for k, v in obj.items() if k != "sig"}
    try:
        public_key.verify(base64.b64decode(str(obj.get("sig", "")), validate=True), canonical(body))
        return True
    except (InvalidSignature, ValueError):
        return False


# --- reading what is there ------------------------------------------------------------------
def split_lines(data: bytes) -> tuple[list[bytes], bytes | None]:
    """Complete lines, and the unterminated fragment after the last newline (None if none)."""
    parts = data.split(b"\n")
    tail = parts.pop()
    return parts, (tail if tail else None)


def _tail_state(path: str) -> tuple[int, str | None, int, bytes | None]:
    """``(next seq, sha256 of the last complete line, seq of the last checkpoint, torn fragment)``."""
    if not os.path.exists(path):
        return 0, None, 0, None
    with open(path, "rb") as fh:
        data = fh.read()
    lines, torn = split_lines(data)
    last_cp = 0
    for i in range(len(lines) - 1, -1, -1):
        if b'"kind":"checkpoint"' in lines[i]:
            last_cp = i
            break
    prev = line_hash(lines[-1]) if lines else None
    return len(lines), prev, last_cp, torn


# --- writing --------------------------------------------------------------------------------
class AuditLog:
    """Appends events to ``path``; ``key`` is the device's ed25519 private key file.

    ``session`` goes into the ``start`` line (model, its sha256 and signature status, runtime).
    Use as a context manager, or call :meth:`close`, so the closing checkpoint is written.
    """

    def __init__(self, path: str, key: str, session: dict[str, Any] | None = None, every: int = CHECKPOINT_EVERY,
                 sync: bool = True) -> None:
        if every < 1:
            raise AuditError("checkpoint interval must be at least 1 record")
        self.path, self.every, self.sync = path, every, sync  # sync=False: only to generate test logs quickly
        self._key = _load_key(key, private=True)
        self.key_id = key_id(self._key.public_key())
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self.seq, self.prev, self._cp_from, torn = _tail_state(path)
        self._fps: list[str] = []
        self._since_cp = 0
        self._fh = open(path, "ab")
        if self.seq:  # lines since the last checkpoint (it included) are listed by the next one
            with open(path, "rb") as fh:
                lines, _ = split_lines(fh.read())
            self._fps = [fingerprint(x) for x in lines[self._cp_from:]]
        start: dict[str, Any] = {"kind": "start", **(session or {}), "key": self.key_id}
        if torn is not None:  # a power cut mid-append: end the fragment, record its digest, chain past it
            self._write_raw(torn, terminate_only=True)
            start["torn"] = {"seq": self.seq - 1, "sha256": line_hash(torn)}
        self.append(start)

    def _write_raw(self, raw: bytes, terminate_only: bool = False) -> None:
        self._fh.write(b"\n" if terminate_only else raw + b"\n")
        self._fh.flush()
        if self.sync:
            os.fsync(self._fh.fileno())
        if terminate_only:
            self._fps.append(fingerprint(raw))
            self.seq += 1
            return
        self._fps.append(fingerprint(raw))
        self.prev = line_hash(raw)
        self.seq += 1

    def append(self, event: dict[str, Any]) -> dict[str, Any]:
        """Write one event (``kind`` defaults to ``decision``), chained and fsynced; every
        ``every`` decisions a signed checkpoint follows. Returns the line as written."""
        obj = {"kind": "decision", **event, "seq": self.seq, "time": event.get("time") or now(), "prev": self.prev}
        self._write_raw(canonical(obj))
        if obj["kind"] == "decision":
            self._since_cp += 1
            if self._since_cp >= self.every:
                self.checkpoint()
        return obj

    def checkpoint(self, final: bool = False) -> dict[str, Any]:
        """A signed line listing the fingerprints of every line since the last checkpoint (it included)."""
        body = {"kind": "checkpoint", "seq": self.seq, "time": now(), "prev": self.prev, "from_seq": self.seq - len(self._fps),
                "fps": self._fps, "final": final, "key": self.key_id}
        body["sig"] = base64.b64encode(self._key.sign(canonical(body))).decode()
        raw = canonical(body)
        self._fps = []
        self._write_raw(raw)
        self._since_cp = 0
        return body

    def close(self) -> None:
        if self._fh.closed:
            return
        self.checkpoint(final=True)
        self._fh.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def input_identity(rec: dict[str, Any], path: str | None = None) -> dict[str, Any]:
    """The input's sha256 and, for DICOM, its SOP and Study instance UIDs: never its name or pixels.
    From the record where the caller put them (serve: ``sha256``, ``key`` = SOPInstanceUID), else from the file."""
    out: dict[str, Any] = {"input_sha256": rec.get("input_sha256") or rec.get("sha256")}
    if not out["input_sha256"] and path and os.path.isfile(path):
        with open(path, "rb") as fh:
            out["input_sha256"] = hashlib.sha256(fh.read()).hexdigest()
    key = str(rec.get("key") or "")
    sop, study = rec.get("sop_instance_uid") or (key if key and ":" not in key else None), rec.get("study_instance_uid")
    if path and (sop is None or study is None) and path.lower().endswith((".dcm", ".dicom")):
        try:
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "StudyInstanceUID"])
            sop, study = sop or str(ds.get("SOPInstanceUID", "") or "") or None, study or str(ds.get("StudyInstanceUID", "") or "") or None
        except Exception:  # an unreadable header: the sha256 still identifies the input
            pass
    out.update({k: v for k, v in (("sop_instance_uid", sop), ("study_instance_uid", study)) if v})
    return out


def decision_event(rec: dict[str, Any], model_sha256: str, signature: str, runtime: str, path: str | None = None) -> dict[str, Any]:
    """One result (the runner's JSON record) as an audit line's fields: what was decided and why, with no file name."""
    probs = rec.get("probabilities")
    return {**input_identity(rec, path), "model_sha256": model_sha256, "signature": signature, "runtime": runtime,
            "action": rec.get("action") or ("answer" if rec.get("label") else None),
            "probabilities": {k: round(float(v), 6) for k, v in probs.items()} if probs else None,
            "reason": rec.get("reason") or rec.get("decision"), "reason_kind": rec.get("reason_kind"), "label": rec.get("label")}
