"""PyTorch -> FP32 ONNX, simplified, with the model contract embedded.

The TorchScript exporter (``dynamo=False``, opset 17) is used because it works for
every registered backbone here and gives plain Conv/Gemm graphs that both ONNX
Runtime's quantizer and onnx2tf handle; onnxsim then folds constants and
BatchNorm leftovers so the INT8 and TFLite paths start from the cleanest graph.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Any

from edgecxr.device.atomic import atomic_path
from edgecxr.device.contract import Contract, TensorSpec
from edgecxr.errors import EdgecxrError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17


def onnx_contract(base: Contract, precision: str, extra_source: dict[str, Any] | None = None,
                  versions: dict[str, str] | None = None, target: dict[str, Any] | None = None) -> Contract:
    """ONNX files take float32 NCHW with a dynamic batch (-1) and return float32 logits."""
    return base.with_io(
        format="onnx", precision=precision,
        input=TensorSpec(INPUT_NAME, base.model_input_shape(batch=-1), "float32", "NCHW"),
        output=TensorSpec(OUTPUT_NAME, (-1, base.num_classes), "float32"),
        source=dict(extra_source or {}), versions=dict(versions or {}), target=dict(target or {}),
    )


def save_onnx(model: Any, dest: str) -> None:
    """Validate, then write atomically: a half-written .onnx never appears under its name."""
    import onnx

    onnx.checker.check_model(model)
    with atomic_path(dest) as tmp:
        onnx.save(model, tmp)


def export_fp32(torch_model: Any, contract: Contract, dest: str, simplify: bool = True) -> dict[str, Any]:
    """Export ``torch_model`` to ``dest`` (input shape from ``contract``); returns step details. The
    contract itself is written once, after verification, through the one door (``device/formats.py``)."""
    import onnx
    import torch

    dummy = torch.zeros(contract.model_input_shape(), dtype=torch.float32)
    buf = io.BytesIO()
    torch_model.eval()
    # The TorchScript exporter is deprecated upstream but is the one that works for every
    # backbone and gives the opset-17 graphs the quantizer and onnx2tf handle; its DeprecationWarning is expected, so it is not shown.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            torch_model, (dummy,), buf, dynamo=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    model = onnx.load_from_string(buf.getvalue())
    details: dict[str, Any] = {"opset": OPSET, "nodes_exported": len(model.graph.node), "simplified": False}
    if simplify:
        model, ok = _simplify(model)
        details["simplified"] = ok
    details["nodes"] = len(model.graph.node)
    save_onnx(model, dest)
    return details


def _simplify(model: Any) -> tuple[Any, bool]:
    try:
        from onnxsim import simplify
    except ImportError as exc:
        raise EdgecxrError("onnxsim is missing: pip install onnxsim (it is in requirements.txt)") from exc
    simplified, ok = simplify(model)
    return (simplified, True) if ok else (model, False)


def load_onnx(path: str) -> Any:
    """Load an ONNX file with a one-line error for missing, truncated or foreign files."""
    import onnx

    if not os.path.exists(path):
        raise EdgecxrError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, ValidationError, ...
        raise EdgecxrError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from exc
    return model
