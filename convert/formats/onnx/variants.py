"""Make an ONNX variant (FP16, INT8) of the FP32 export: produce into a temporary
file, check it, rename into place, so a half-made variant never appears under the
artifact's name. Its contract is written once, after verification."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any


def onnx_variant(dest: str, make: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    import onnx

    from edgecxr.convert.formats.onnx.export import save_onnx

    with tempfile.TemporaryDirectory(prefix=".onnx-work-", dir=os.path.dirname(os.path.abspath(dest))) as tmp:
        produced = os.path.join(tmp, "model.onnx")
        details = make(produced)
        save_onnx(onnx.load(produced), dest)
    return details
