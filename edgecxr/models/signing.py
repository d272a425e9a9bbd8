"""Signing model artifacts on the workstation with OpenSSF ``model-signing`` (EC P-256 keys, offline).

Why model-signing: its bundle (a sigstore bundle around a DSSE envelope around an in-toto
statement of every file's sha256) is a format other tools read, and the device can check it
with ``cryptography`` alone (``device/signature.py``). An export folder holds many artifacts,
so one signature covers one artifact: the model file and the companions the device reads with
it (``device.signature.covered_files``: the format row's companions and the contract sidecar).
They are hard-linked (copied across file systems) into a private folder named after the model
and that folder is signed, so the statement lists exactly those files by name.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from edgecxr.device.atomic import atomic_path
from edgecxr.device.signature import covered_files, signature_path
from edgecxr.errors import EdgecxrError


def keygen(prefix: str) -> tuple[str, str]:
    """``PREFIX.key`` (EC P-256 private key, PKCS#8 PEM, mode 0600) and ``PREFIX.pub``; refuses to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    priv_path, pub_path = prefix + ".key", prefix + ".pub"
    for p in (priv_path, pub_path):
        if os.path.exists(p):
            raise EdgecxrError(f"{p} exists; keygen never overwrites a key (remove it or pick another name)")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    os.makedirs(os.path.dirname(os.path.abspath(priv_path)), exist_ok=True)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    with atomic_path(pub_path) as tmp, open(tmp, "wb") as fh:
        fh.write(pub)
    return priv_path, pub_path


@contextmanager
def staged(model_path: str, files: list[str] | None = None) -> Iterator[pathlib.Path]:
    """A private folder named after the model holding ``files`` (default: its covered files) by
    their base names, beside the model (same file system: hard links, no copy of a large model)."""
    files = covered_files(model_path) if files is None else files
    folder = os.path.dirname(os.path.abspath(model_path))
    tmp = tempfile.mkdtemp(prefix=".sign-", dir=folder)
    try:
        stage = pathlib.Path(tmp) / os.path.basename(model_path)
        stage.mkdir()
        for f in files:
            dest = stage / os.path.basename(f)
            try:
                os.link(f, dest)
            except OSError:
                shutil.copyfile(f, dest)
        yield stage
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_model(path: str) -> None:
    from edgecxr.device.formats import device_format_of

    if not os.path.isfile(path):
        raise EdgecxrError(f"{path}: no such model file")
    if device_format_of(path) is None:
        raise EdgecxrError(f"{path}: not a model file the device opens (sign the model, not its companions)")


def sign_artifact(model_path: str, key: str) -> str:
    """Write ``model_path.sig`` covering the model and its companions; returns the signature's path."""
    from model_signing import hashing, signing

    _check_model(model_path)
    if not os.path.isfile(key):
        raise EdgecxrError(f"--key {key}: no such private key (make one with `edgecxr keygen`)")
    out = signature_path(model_path)
    with staged(model_path) as stage, atomic_path(out) as tmp:
        try:
            cfg = signing.Config().use_elliptic_key_signer(private_key=pathlib.Path(key))
        except (ValueError, TypeError) as exc:
            raise EdgecxrError(f"--key {key}: not an unencrypted EC private key ({' '.join(str(exc).split())})") from exc
        cfg.set_hashing_config(hashing.Config().use_file_serialization()).sign(stage, pathlib.Path(tmp))
    return out


def verify_with_model_signing(model_path: str, public_key: str) -> None:
    """model-signing's own verifier on the files the device would read with ``model_path`` (its
    candidates that exist now); raises ``ValueError`` on a mismatch. For the cross-check tests."""
    from model_signing import hashing, verifying

    with staged(model_path) as stage:
        cfg = verifying.Config().use_elliptic_key_verifier(public_key=pathlib.Path(public_key))
        cfg.set_hashing_config(hashing.Config().use_file_serialization()).verify(stage, pathlib.Path(signature_path(model_path)))


def sign_report_artifacts(out_dir: str, report: dict, key: str, echo: Callable[[str], None] = print) -> list[str]:
    """``convert --sign``: sign every model file the conversion left on disk (failed and skipped
    steps wrote none); returns the signatures written."""
    sigs = []
    for a in report.get("artifacts", []):
        path = os.path.join(out_dir, a["file"])
        if a.get("status") in ("failed", "skipped") or not os.path.isfile(path):
            continue
        sigs.append(sign_artifact(path, key))
        echo(f"signed {a['file']} -> {os.path.basename(sigs[-1])}")
    return sigs
