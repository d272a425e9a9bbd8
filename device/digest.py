"""The one file digest of the project: sha256 read in 1 MB blocks (model files are tens of MB).

In ``device/`` so the runner, the service, the signature check and the workstation's
checkpoint provenance (``edgecxr.models.checkpoint``) all hash a file the same way. stdlib only.
"""
from __future__ import annotations

import hashlib


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
