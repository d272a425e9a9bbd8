"""ONNX: the source format (every other artifact is made from the FP32 ONNX export).

FP32 by ``torch.onnx.export`` + onnxsim, FP16 by onnxconverter-common, INT8 by
ONNX Runtime static QDQ quantization on the INT8 target's weight grid
(``edgecxr/models/int8_target.py``). The contract lives inside the file (``metadata_props``).
"""
from __future__ import annotations

from typing import Any

from edgecxr.convert.formats.base import PRECISIONS, ExportFormat, Production, Stats, prod, weight_precision
from edgecxr.device.formats import DEVICE_FORMATS


def produce(p: Production, steps: dict[str, Any]) -> None:
    """FP32 first (the source of everything else), then FP16 and INT8 from it."""
    from edgecxr.convert.formats.onnx import export as onnx_export
    from edgecxr.convert.formats.onnx import quantize
    from edgecxr.convert.formats.onnx.variants import onnx_variant

    run, c = p.run, p.contract
    fp32 = steps["fp32"]
    fp32_contract = onnx_export.onnx_contract(c, "fp32", p.source, p.versions, p.plain_target)
    ok = run.do(fp32, lambda: onnx_export.export_fp32(p.torch_model, fp32_contract, run.path(fp32)), contract=fp32_contract)
    p.fp32_onnx = run.path(fp32) if ok else None
    for precision in ("fp16", "int8"):
        step = steps.get(precision)
        if step is None:
            continue
        if not ok:
            run.skip(step, "FP32 ONNX export failed")
            continue
        if precision == "fp16":
            make = lambda tmp: quantize.convert_fp16(p.fp32_onnx, tmp)  # noqa: E731
            stamp = onnx_export.onnx_contract(c, "fp16", p.source, p.versions, p.plain_target)
        elif p.accuracy_control is not None:  # search the layers to keep in float first (accuracy_control.py)
            from edgecxr.convert.formats.onnx import accuracy_control as accuracy_control_onnx

            run.do(step, lambda s=step: accuracy_control_onnx.produce(p, run.path(s)))
            continue
        else:
            x_cal = p.calib.nchw(c.preprocess)
            make = lambda tmp, x=x_cal: quantize.quantize_int8(  # noqa: E731
                p.fp32_onnx, tmp, x, p.calib_method, p.keep_float, onnx_export.INPUT_NAME, reduce_range=p.int8_target.reduce_range,
                activations=p.int8_target.activations, weights=p.int8_target.weights)
            stamp = onnx_export.onnx_contract(c, "int8", p.int8_source, p.versions, p.int8_target.contract_block(p.plain_target["converted_on"]))
        run.do(step, lambda s=step, m=make: onnx_variant(run.path(s), m), contract=stamp)


_PASS_THROUGH = {"DequantizeLinear", "Cast", "Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
# op -> (input index of the data, input index of the weight, input index of the bias or None)
_ONNX_WEIGHTED = {
    "Conv": (0, 1, 2), "ConvInteger": (0, 1, None), "QLinearConv": (0, 3, 8),
    "Gemm": (0, 1, 2), "MatMul": (0, 1, None), "MatMulInteger": (0, 1, None), "QLinearMatMul": (0, 3, None),
}


def _tensor_dims(t: Any) -> list[int] | None:
    """A value's shape with dynamic dimensions (the batch) as 1; None where shape inference left it unknown."""
    if not t.type.HasField("tensor_type") or not t.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else 1 for d in t.type.tensor_type.shape.dim]


def _known_shapes(g: Any) -> dict[str, list[int]]:
    """Shapes of the graph's inputs, inferred values, outputs and initializers, by name: a layer
    whose weight or output shape is missing cannot be counted."""
    shapes: dict[str, list[int]] = {}
    for t in [*g.input, *g.value_info, *g.output]:
        d = _tensor_dims(t)
        if d is not None:
            shapes[t.name] = d
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _constants(g: Any) -> tuple[set[str], dict[str, str]]:
    """Names that hold constants (initializers, Constant outputs and what passes them through
    DequantizeLinear, Cast, reshapes...), so a weight is told from an activation in a MatMul; and
    each weight's storage type seen through those ops (INT8 weights sit behind a DequantizeLinear)."""
    import onnx

    constant: set[str] = set()
    init_dtype: dict[str, str] = {}
    for init in g.initializer:
        constant.add(init.name)
        init_dtype[init.name] = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
    for node in g.node:  # the weight's storage type, seen through DequantizeLinear/Cast
        if node.op_type in _PASS_THROUGH and node.input and node.input[0] in init_dtype:
            for o in node.output:
                init_dtype.setdefault(o, init_dtype[node.input[0]])
    for node in g.node:  # graph order is topological
        if node.op_type == "Constant":
            constant.update(node.output)
        elif node.op_type in _PASS_THROUGH and node.input and node.input[0] in constant:
            constant.update(node.output)
    return constant, init_dtype


def _layer_size(node: Any, wshape: list[int], yshape: list[int], bias_shape: list[int] | None) -> tuple[int, int]:
    """``(parameters, MACs)`` of one Conv/Gemm/MatMul from its weight, output and bias shapes."""
    params = prod(wshape) + (prod(bias_shape) if bias_shape is not None else 0)
    if "Conv" in node.op_type:
        return params, prod(yshape) * prod(wshape[1:])  # out elements * (in/groups) * kernel
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        k = wshape[1] if trans_b else wshape[0]
        return params, prod(yshape) * int(k)
    return params, prod(yshape) * int(wshape[-2] if len(wshape) >= 2 else wshape[0])  # MatMul: weight is K x N


def graph_stats(path: str) -> Stats:
    """Weights and MACs of Conv/Gemm/MatMul, seen through QuantizeLinear/DequantizeLinear."""
    import onnx

    model = onnx.load(path)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # shape inference is best effort: unknown shapes are skipped below
        pass
    g = model.graph
    shapes = _known_shapes(g)
    constant, init_dtype = _constants(g)
    weight_dtypes: list[str] = []
    params = macs = 0
    for node in g.node:
        spec = _ONNX_WEIGHTED.get(node.op_type)
        if spec is None:
            continue
        _x, wi, bi = spec
        w = node.input[wi] if len(node.input) > wi else ""
        y = node.output[0]
        if w not in constant or w not in shapes or y not in shapes:
            continue
        weight_dtypes.append(init_dtype.get(w, "?"))
        bias = node.input[bi] if bi is not None and len(node.input) > bi else ""
        p, m = _layer_size(node, shapes[w], shapes[y], shapes.get(bias) if bias else None)
        params += p
        macs += m
    if not weight_dtypes:
        return {"params": None, "macs": None, "stats_from": "n/a (no weighted layers with known shapes)"}
    return {"params": int(params), "macs": int(macs), "stats_from": "onnx graph (Conv/Gemm/MatMul)",
            "weight_precision": weight_precision(weight_dtypes)}


FORMAT = ExportFormat(
    device=DEVICE_FORMATS["onnx"],
    precisions=PRECISIONS,
    layout="NCHW",
    description="ONNX opset 17, dynamic batch, simplified with onnxsim; contract in metadata_props",
    options={
        "fp32": "torch.onnx.export(dynamo=False, opset 17) + onnxsim",
        "fp16": "onnxconverter-common float16, float32 inputs/outputs kept",
        "int8": "onnxruntime static QDQ, per-channel weights (--target portable: u8 asymmetric; x86-vnni/arm64: s8 full range), u8 activations, real calibration images",
    },
    marker="o",
    produce=produce,
    graph_stats=graph_stats,
)
