"""Make an ONNX variant (FP16, INT8) of the FP32 export: produce into a temporary
file, stamp its contract, rename into place, so a half-made variant never appears
under the artifact's name."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

from edgecxr.device.contract import Contract


def onnx_variant(dest: str, make: Callable[[str], dict[str, Any]], contract: Contract) -> dict[str, Any]:
    from edgecxr.convert.formats.onnx.quantize import restamp

    with tempfile.TemporaryDirectory(prefix=".onnx-work-", dir=os.path.dirname(os.path.abspath(dest))) as tmp:
        produced = os.path.join(tmp, "model.onnx")
        details = make(produced)
        restamp(produced, contract, dest)
    return details
