"""Read a TFLite file's own graph: ops and constant tensors, never for timing.

Used by the workstation only (bench's parameter/MAC counts, the ImageNet weight
import from an official TFLite MobileNetV2), so it lives in core, not on the Pi.
"""
from __future__ import annotations

from typing import Any

from edgecxr.device.backends import import_interpreter


def graph_interpreter(path: str) -> Any:
    """An allocated interpreter whose op list is the file's own graph (no XNNPACK
    delegate, which would replace the ops it takes over by one delegate op)."""
    Interpreter, _ = import_interpreter()
    try:
        from ai_edge_litert.interpreter import OpResolverType

        interp = Interpreter(model_path=path, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except (ImportError, TypeError):  # tflite-runtime / TF: the delegated graph still lists its ops
        interp = Interpreter(model_path=path)
    interp.allocate_tensors()
    return interp
