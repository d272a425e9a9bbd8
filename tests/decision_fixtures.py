"""A real, tiny ONNX classifier whose logits are known in closed form, for the decision-layer
tests (runner sets and refer decisions, eval's calibration report, the model card)."""
from __future__ import annotations

from typing import Any

import numpy as np

from edgecxr.device.contract import Contract, TensorSpec
from edgecxr.device.preprocess import PreprocessSpec

CLASSES = ("A", "B", "C")
SPEC = PreprocessSpec(size=16, equalize="none", gaussian_ksize=0, median_ksize=0, channels=1, mean=(0.5,), std=(0.25,))
BLOCK = {"schema": "edgecxr.decision/1", "temperature": 2.0, "conformal": {"method": "lac", "coverage": 0.95, "qhat": 0.6, "n": 150}}


def toy_contract(decision: dict | None, classes: tuple[str, ...] = CLASSES, source: dict[str, Any] | None = None) -> Contract:
    return Contract("toy", tuple(classes), SPEC, TensorSpec("input", (1, 1, 16, 16), "float32", "NCHW"),
                    TensorSpec("logits", (1, 3), "float32"), format="onnx", decision=decision, source=dict(source or {}))


def toy_onnx(path: str, decision: dict | None, classes: tuple[str, ...] = CLASSES, source: dict[str, Any] | None = None) -> str:
    """Mean intensity m of the normalised image -> logits [8m, 0, -10]: a bright image is
    confidently the first class; a mid-grey one (m = 0) is torn between the first two."""
    from onnx import TensorProto, helper, numpy_helper

    from edgecxr.convert.formats.onnx.export import save_onnx
    from edgecxr.device.contract import embed_onnx_contract

    w = numpy_helper.from_array(np.array([[8.0, 0.0, 0.0]], np.float32), "w")
    b = numpy_helper.from_array(np.array([0.0, 0.0, -10.0], np.float32), "b")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    shape = numpy_helper.from_array(np.array([-1, 1], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input", "axes"], ["m"], keepdims=1),
         helper.make_node("Reshape", ["m", "shape"], ["m2"]),
         helper.make_node("MatMul", ["m2", "w"], ["z"]),
         helper.make_node("Add", ["z", "b"], ["logits"])],
        "toy", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], [w, b, axes, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    embed_onnx_contract(model, toy_contract(decision, classes, source))
    save_onnx(model, path)
    return path


def png(path: Any, value: int) -> str:
    import cv2

    cv2.imwrite(str(path), np.full((32, 32), value, np.uint8))
    return str(path)
