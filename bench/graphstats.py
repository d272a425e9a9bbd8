"""Parameter count and multiply-accumulates, read from each file's own graph.

Counting from the artifact itself (not from the checkpoint it came from) is what
makes a foreign model comparable: a TFLite file from elsewhere has no checkpoint.
Only the layers that dominate the work are counted (convolutions, fully connected
layers and matrix products), and parameters are the weights and biases of those
layers, so BatchNorm folded into a convolution is counted once as its bias. A
checkpoint counts ``torch`` parameters (BatchNorm scale and shift included), so its
figure is slightly above the exported graphs' (about 1% for MobileNetV2). Anything
not computed is ``None`` and prints as n/a.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

Stats = dict[str, Any]


def graph_stats(path: str) -> Stats:
    """``{"params": int|None, "macs": int|None, "stats_from": str}`` for .pt/.onnx/.tflite."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".pt", ".pth"):
            return torch_stats(path)
        if ext == ".onnx":
            return onnx_stats(path)
        if ext == ".tflite":
            return tflite_stats(path)
    except Exception as exc:  # a graph we cannot analyse must not stop the benchmark
        return {"params": None, "macs": None, "stats_from": f"n/a ({type(exc).__name__}: {str(exc)[:100]})"}
    return {"params": None, "macs": None, "stats_from": "n/a"}


def _prod(shape: Any) -> int:
    return int(np.prod([max(int(d), 1) for d in shape])) if len(shape) else 1


def weight_precision(dtypes: list[str]) -> str:
    """The precision most weights are stored in: how a foreign file's precision is named."""
    names = {"int8": "int8", "uint8": "int8", "float16": "fp16", "float32": "fp32"}
    kinds = [names.get(d, "?") for d in dtypes]
    return max(set(kinds), key=kinds.count) if kinds else "?"


# --------------------------------------------------------------------------- torch
def torch_stats(path: str) -> Stats:
    import torch
    from torch import nn

    from edgecxr.models import load_model

    model, contract = load_model(path)
    macs = 0

    def conv_hook(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal macs
        k = _prod(mod.weight.shape[1:])  # (in/groups) * kh * kw
        macs += out.numel() * k

    def linear_hook(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal macs
        macs += out.numel() * mod.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    shape = [1, *list(contract.input.shape)[1:]]
    with torch.inference_mode():
        model(torch.zeros(shape, dtype=torch.float32))
    for h in handles:
        h.remove()
    return {"params": int(sum(p.numel() for p in model.parameters())), "macs": int(macs), "stats_from": "torch modules"}


# --------------------------------------------------------------------------- onnx
_PASS_THROUGH = {"DequantizeLinear", "Cast", "Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
# op -> (input index of the data, input index of the weight, input index of the bias or None)
_ONNX_WEIGHTED = {
    "Conv": (0, 1, 2), "ConvInteger": (0, 1, None), "QLinearConv": (0, 3, 8),
    "Gemm": (0, 1, 2), "MatMul": (0, 1, None), "MatMulInteger": (0, 1, None), "QLinearMatMul": (0, 3, None),
}


def onnx_stats(path: str) -> Stats:
    import onnx

    model = onnx.load(path)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # shape inference is best effort: unknown shapes are skipped below
        pass
    g = model.graph
    shapes: dict[str, list[int]] = {}

    def dims(t: Any) -> list[int] | None:
        if not t.type.HasField("tensor_type") or not t.type.tensor_type.HasField("shape"):
            return None
        out = []
        for d in t.type.tensor_type.shape.dim:
            out.append(d.dim_value if d.HasField("dim_value") else 1)  # dynamic batch -> 1
        return out

    for t in [*g.input, *g.value_info, *g.output]:
        d = dims(t)
        if d is not None:
            shapes[t.name] = d
    constant: set[str] = set()
    init_dtype: dict[str, str] = {}
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
        constant.add(init.name)
        init_dtype[init.name] = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
    for node in g.node:  # the weight's storage type, seen through DequantizeLinear/Cast
        if node.op_type in _PASS_THROUGH and node.input and node.input[0] in init_dtype:
            for o in node.output:
                init_dtype.setdefault(o, init_dtype[node.input[0]])
    weight_dtypes: list[str] = []
    for node in g.node:  # graph order is topological
        if node.op_type == "Constant":
            constant.update(node.output)
        elif node.op_type in _PASS_THROUGH and node.input and node.input[0] in constant:
            constant.update(node.output)
    params = macs = 0
    counted = 0
    for node in g.node:
        spec = _ONNX_WEIGHTED.get(node.op_type)
        if spec is None:
            continue
        _x, wi, bi = spec
        w = node.input[wi] if len(node.input) > wi else ""
        y = node.output[0]
        if w not in constant or w not in shapes or y not in shapes:
            continue
        wshape, yshape = shapes[w], shapes[y]
        counted += 1
        weight_dtypes.append(init_dtype.get(w, "?"))
        params += _prod(wshape)
        if bi is not None and len(node.input) > bi and node.input[bi] in shapes:
            params += _prod(shapes[node.input[bi]])
        if "Conv" in node.op_type:
            macs += _prod(yshape) * _prod(wshape[1:])  # out elements * (in/groups) * kernel
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            k = wshape[1] if trans_b else wshape[0]
            macs += _prod(yshape) * int(k)
        else:  # MatMul: weight is K x N
            macs += _prod(yshape) * int(wshape[-2] if len(wshape) >= 2 else wshape[0])
    if counted == 0:
        return {"params": None, "macs": None, "stats_from": "n/a (no weighted layers with known shapes)"}
    return {"params": int(params), "macs": int(macs), "stats_from": "onnx graph (Conv/Gemm/MatMul)",
            "weight_precision": weight_precision(weight_dtypes)}


# --------------------------------------------------------------------------- tflite
def tflite_stats(path: str) -> Stats:
    from edgecxr.device.backends import graph_interpreter

    interp = graph_interpreter(path)
    details = interp.get_tensor_details()
    tensors = {t["index"]: tuple(int(v) for v in t["shape"]) for t in details}
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in details}
    weight_dtypes: list[str] = []
    params = macs = 0
    counted = 0
    ops = interp._get_ops_details()  # noqa: SLF001 - the only API listing ops and their tensors
    for op in ops:  # FP16 files store weights as float16 behind a DEQUANTIZE op
        if op["op_name"] == "DEQUANTIZE" and len(op["inputs"]) and len(op["outputs"]):
            dtypes[int(op["outputs"][0])] = dtypes.get(int(op["inputs"][0]), "?")
    for op in ops:
        name, ins, outs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or len(ins) < 2 or not outs:
            continue
        w, y = tensors.get(ins[1]), tensors.get(outs[0])
        if not w or not y:
            continue
        counted += 1
        weight_dtypes.append(dtypes.get(ins[1], "?"))
        params += _prod(w)
        if len(ins) > 2 and ins[2] >= 0 and ins[2] in tensors:
            params += _prod(tensors[ins[2]])
        if name == "CONV_2D":  # weights O x KH x KW x I
            macs += _prod(y) * _prod(w[1:])
        elif name == "DEPTHWISE_CONV_2D":  # weights 1 x KH x KW x O
            macs += _prod(y) * w[1] * w[2]
        else:  # weights O x I
            macs += _prod(y) * w[-1]
    if counted == 0:
        return {"params": None, "macs": None, "stats_from": "n/a (no CONV_2D/FULLY_CONNECTED ops found)"}
    return {"params": int(params), "macs": int(macs), "stats_from": "tflite graph (CONV_2D/DEPTHWISE/FULLY_CONNECTED)",
            "weight_precision": weight_precision(weight_dtypes)}
