"""Write artifacts so that a crash or Ctrl-C never leaves half a file behind.

Everything goes to a temporary file in the destination folder (same filesystem, so
the final ``os.replace`` is atomic) and is renamed only once complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def atomic_path(dest: str) -> Iterator[str]:
    """Yield a temporary path next to ``dest``; on success it replaces ``dest``."""
    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".partial" + os.path.splitext(base)[1], dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual permissions
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(dest: str, text: str) -> None:
    with atomic_path(dest) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(dest: str, obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")


def _default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
