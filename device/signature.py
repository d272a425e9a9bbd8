"""Is this model the one that was signed? Checked on the device before the model is opened.

``edgecxr sign`` (the workstation, the ``model-signing`` package) writes ``ARTIFACT.sig``: a
sigstore bundle whose DSSE envelope holds an in-toto statement listing the sha256 of the model
file and of every companion it is read with (the format row's companions in ``runtimes/``, the
contract sidecar). A Pi should not need sigstore, protobuf and pyOpenSSL to check that, so this
module re-does the two checks with ``cryptography`` alone: the envelope's ECDSA signature over the
DSSE pre-authentication encoding, by a trusted key; then every file's digest against the statement.
Any difference is one line naming the file: changed, added (present beside the model, read with it,
but not signed) or removed (signed but missing). ``tests/test_signing.py`` cross-checks the verdicts
against ``model-signing``'s own verifier on the same files.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from .digest import file_sha256 as sha256_file
from .formats import device_format_of

SIG_SUFFIX = ".sig"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
KEY_SUFFIXES = (".pub", ".pem")
UNSIGNED = "unsigned"


class TrustError(ValueError):
    """A signature, key or audit log problem the user can fix: one line (the runner exits 2)."""


class SignatureError(TrustError):
    """The model does not match its signature, or cannot be checked: one line naming why."""


@dataclass(frozen=True)
class Verified:
    """What was checked: the key (its sha256 hint, shortened), the files and their digests."""

    key: str
    key_file: str
    files: dict[str, str]  # basename -> sha256 hex

    @property
    def status(self) -> str:
        return f"signed, verified with key {self.key[:12]}"


def signature_path(model_path: str) -> str:
    return model_path + SIG_SUFFIX


def candidate_files(model_path: str) -> list[str]:
    """Every file the device may read with this model: the file, its format's companions, and a
    ``<file>.json`` sidecar (read as the contract by sidecar formats, and as a fallback by ONNX)."""
    fmt = device_format_of(model_path)
    extra = fmt.companion_paths(model_path) if fmt else []
    out = []
    for p in [model_path, *extra, model_path + ".json"]:
        if p not in out:
            out.append(p)
    return out


def covered_files(model_path: str) -> list[str]:
    """The candidates that exist now: what ``edgecxr sign`` puts in the statement."""
    return [p for p in candidate_files(model_path) if os.path.isfile(p)]


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the envelope's signature is over."""
    return b" ".join([f"DSSEv1 {len(payload_type)} {payload_type} {len(payload)}".encode(), payload])


def _load_public_key(path: str) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        with open(path, "rb") as fh:
            key = serialization.load_pem_public_key(fh.read())
    except (OSError, ValueError) as exc:
        raise SignatureError(f"--trust {path}: not a PEM public key ({' '.join(str(exc).split())})") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError(f"--trust {path}: not an elliptic-curve public key (edgecxr keygen makes EC P-256 keys)")
    return key


def key_hint(key: Any) -> str:
    """sha256 of the key's PEM (SubjectPublicKeyInfo): model-signing's ``publicKey.hint``."""
    from cryptography.hazmat.primitives import serialization

    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def trusted_keys(trust: str) -> dict[str, tuple[Any, str]]:
    """``{hint: (key, file)}`` from one public key file or a folder of them (``*.pub``, ``*.pem``)."""
    if os.path.isdir(trust):
        files = sorted(os.path.join(trust, n) for n in os.listdir(trust) if n.endswith(KEY_SUFFIXES))
        if not files:
            raise SignatureError(f"--trust {trust}: no public keys (*.pub, *.pem) in this folder")
    elif os.path.isfile(trust):
        files = [trust]
    else:
        raise SignatureError(f"--trust {trust}: no such key file or folder")
    keys = {}
    for f in files:
        k = _load_public_key(f)
        keys[key_hint(k)] = (k, f)
    return keys


def _read_bundle(sig: str, name: str) -> dict[str, Any]:
    if not os.path.isfile(sig):
        raise SignatureError(f"{name}: no signature ({os.path.basename(sig)} is missing); sign it with `edgecxr sign`")
    try:
        with open(sig, encoding="utf-8") as fh:
            bundle = json.load(fh)
    except (OSError, ValueError) as exc:
        raise SignatureError(f"{os.path.basename(sig)}: not a signature bundle ({' '.join(str(exc).split())})") from exc
    if not isinstance(bundle, dict) or bundle.get("mediaType") != BUNDLE_MEDIA_TYPE or "dsseEnvelope" not in bundle:
        raise SignatureError(f"{os.path.basename(sig)}: not a sigstore bundle with a DSSE envelope ({BUNDLE_MEDIA_TYPE})")
    return bundle


def _check_envelope(bundle: dict[str, Any], keys: dict[str, tuple[Any, str]], sig_name: str) -> tuple[dict[str, Any], str, str]:
    """The statement inside the envelope, once a trusted key's ECDSA signature over it checks out."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    env = bundle["dsseEnvelope"]
    try:
        payload = base64.b64decode(env["payload"], validate=True)
        sig = base64.b64decode(env["signatures"][0]["sig"], validate=True)
        payload_type = str(env["payloadType"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise SignatureError(f"{sig_name}: damaged envelope ({exc})") from exc
    if payload_type != PAYLOAD_TYPE:
        raise SignatureError(f"{sig_name}: payload type {payload_type!r} is not {PAYLOAD_TYPE}")
    hint = ((bundle.get("verificationMaterial") or {}).get("publicKey") or {}).get("hint")
    candidates = [(hint, keys[hint])] if hint in keys else ([] if hint else list(keys.items()))
    if not candidates:
        raise SignatureError(f"{sig_name}: signed by a key not trusted here (key {str(hint)[:12]}); trust its public key with --trust")
    hash_for = {256: hashes.SHA256, 384: hashes.SHA384, 521: hashes.SHA512}
    for h, (key, path) in candidates:
        try:
            key.verify(sig, pae(payload_type, payload), ec.ECDSA(hash_for[key.curve.key_size]()))
        except (InvalidSignature, KeyError):
            continue
        try:
            return json.loads(payload), h, path
        except ValueError as exc:
            raise SignatureError(f"{sig_name}: the signed statement is not JSON") from exc
    raise SignatureError(f"{sig_name}: the signature does not verify with the trusted key (the signature file was altered)")


def _signed_digests(statement: dict[str, Any], sig_name: str) -> dict[str, str]:
    """``{file name: sha256}`` from the statement, after its own consistency check (subject digest)."""
    if statement.get("_type") != STATEMENT_TYPE or statement.get("predicateType") != PREDICATE_TYPE:
        raise SignatureError(f"{sig_name}: not a model-signing v1.0 in-toto statement")
    pred = statement.get("predicate") or {}
    if (pred.get("serialization") or {}).get("method") != "files":
        raise SignatureError(f"{sig_name}: serialization {(pred.get('serialization') or {}).get('method')!r}; sign with `edgecxr sign` (files)")
    out, root = {}, hashlib.sha256()
    for r in pred.get("resources") or []:
        if r.get("algorithm") != "sha256":
            raise SignatureError(f"{sig_name}: {r.get('name')} is hashed with {r.get('algorithm')!r}, not sha256")
        if os.path.basename(str(r.get("name"))) != r.get("name"):
            raise SignatureError(f"{sig_name}: covers {r.get('name')!r}, not a file beside the model")
        out[str(r["name"])] = str(r["digest"])
        root.update(bytes.fromhex(r["digest"]))
    subjects = statement.get("subject") or [{}]
    if len(subjects) != 1 or subjects[0].get("digest", {}).get("sha256") != root.hexdigest():
        raise SignatureError(f"{sig_name}: the statement's subject digest does not match its resources")
    return out


def verify_model(model_path: str, trust: str) -> Verified:
    """Check ``model_path`` and its companions against ``model_path.sig`` with the keys in ``trust``;
    :class:`SignatureError` with one line naming the first file that does not match."""
    keys = trusted_keys(trust)
    sig = signature_path(model_path)
    name = os.path.basename(model_path)
    bundle = _read_bundle(sig, name)
    statement, hint, key_file = _check_envelope(bundle, keys, os.path.basename(sig))
    signed = _signed_digests(statement, os.path.basename(sig))
    folder = os.path.dirname(os.path.abspath(model_path))
    present = {os.path.basename(p) for p in covered_files(model_path)}
    digests = {}
    for f in sorted(set(signed) | present, key=lambda n: (n != name, n)):
        path = os.path.join(folder, f)
        if f not in signed:
            raise SignatureError(f"{f}: file added: it is read with {name} but the signature does not cover it")
        if not os.path.isfile(path):
            raise SignatureError(f"{f}: file removed: the signature covers it but it is not beside {name}")
        digests[f] = sha256_file(path)
        if digests[f] != signed[f]:
            raise SignatureError(f"{f}: changed since it was signed (sha256 {digests[f][:12]}, signed {signed[f][:12]})")
    return Verified(hint, key_file, digests)
