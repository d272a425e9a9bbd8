"""``edgecxr debug-quant``: which layers does INT8 hurt, worst first.

Uses ONNX Runtime's QDQ debugging tools (``onnxruntime.quantization.qdq_loss_debug``):
the FP32 model and its INT8 QDQ version are run on the same real images with every
intermediate tensor exposed, and each activation is scored by SQNR (dB, higher is
better) two ways:

- ``sqnr_local``: the FP32 model's tensor vs the same tensor quantized and
  dequantized with the scale and zero point the INT8 model uses for it, i.e. the
  error this one quantization step adds (rounding and clamping), free of upstream
  error. Keeping its producer node in float (``--keep-float NODE``) removes it.
  (ORT's own "qdq_err" compares the INT8 model's tensor before and after its QDQ
  pair, which is misleading where the quantizer folded a ReLU6/Clip into the
  range: the pre-QDQ tensor is then the unclipped Conv output.)
- ``sqnr_vs_fp32``: the INT8 model's tensor vs the FP32 model's, i.e. the error
  accumulated up to this point.

Rows are sorted by ``sqnr_local``, lowest first. Weight SQNR of the node's weights
is shown where the node has a quantized weight.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from edgecxr.device.contract import Contract
from edgecxr.errors import EdgecxrError

DEBUG_BATCH = 8


def _fp32_onnx_and_contract(model_path: str, tmp: str) -> tuple[str, Contract]:
    """ONNX Runtime's QDQ debugger works on ONNX: a checkpoint is exported first; other formats are refused."""
    from edgecxr.convert.formats import format_of

    if not os.path.exists(model_path):
        raise EdgecxrError(f"{model_path}: model file not found")
    fmt = format_of(model_path)
    if fmt is not None and fmt.source:
        from edgecxr.convert.formats.onnx.export import export_fp32, onnx_contract
        from edgecxr.models.factory import load_model

        model, contract = load_model(model_path)
        path = os.path.join(tmp, "fp32.onnx")
        export_fp32(model, onnx_contract(contract, "fp32"), path)
        return path, contract
    if fmt is not None and fmt.name == "onnx":
        from edgecxr.convert.formats.onnx.export import load_onnx
        from edgecxr.device.contract import ContractError

        load_onnx(model_path)  # clear error for truncated/foreign files
        try:
            contract = fmt.read_contract(model_path)
        except ContractError as exc:
            raise EdgecxrError(f"{model_path}: {exc}") from exc
        if contract is None:
            raise EdgecxrError(f"{model_path}: no edgecxr contract (preprocessing unknown); pass the checkpoint or an FP32 ONNX from `edgecxr convert`")
        if contract.precision != "fp32":
            raise EdgecxrError(f"{model_path}: this is the {contract.precision} model; debug-quant quantizes the FP32 model itself, pass *_fp32.onnx or the checkpoint")
        return model_path, contract
    raise EdgecxrError(f"{model_path}: expected a .pt checkpoint or an FP32 .onnx file")


def _producers(model_path: str) -> dict[str, tuple[str, str]]:
    """Tensor -> (node name, op type) of the compute node that writes it (Q/DQ nodes skipped)."""
    import onnx

    g = onnx.load(model_path, load_external_data=False).graph
    out = {}
    for node in g.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for o in node.output:
            out[o] = (node.name, node.op_type)
    return out


def _activation_qparams(qdq_path: str) -> dict[str, tuple[float, int, str]]:
    """Activation tensor -> (scale, zero point, integer dtype) from the INT8 model's QuantizeLinear nodes."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(qdq_path, load_external_data=False).graph
    inits = {i.name: i for i in g.initializer}
    out = {}
    for node in g.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]])
        zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 else np.zeros((), np.uint8)
        if scale.size == 1:
            out[node.input[0]] = (float(scale.reshape(())), int(zp.reshape(())), np.dtype(zp.dtype).name)
    return out


def _fake_quant(x: np.ndarray, scale: float, zp: int, dtype: str) -> np.ndarray:
    info = np.iinfo(np.dtype(dtype))
    q = np.clip(np.round(x / scale) + zp, info.min, info.max)
    return ((q - zp) * scale).astype(np.float32)


def _weights_by_node(model_path: str) -> dict[str, str]:
    import onnx

    g = onnx.load(model_path, load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    out: dict[str, str] = {}
    for node in g.node:
        for i in node.input:
            if i in inits and node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
                out.setdefault(node.name, i)
    return out


def _mse(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    x = np.concatenate([np.ravel(v) for v in a]).astype(np.float64)
    y = np.concatenate([np.ravel(v) for v in b]).astype(np.float64)
    return float(np.mean((x - y) ** 2))


def debug_quant(model_path: str, data: str | None = None, n: int = 32, calib_method: str = "minmax",
                keep_float: tuple[str, ...] = (), progress: bool = True) -> dict[str, Any]:
    """Per-tensor INT8 error of ``model_path`` on ``n`` real images from ``data`` (or the run's train split)."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        compute_signal_to_quantization_noice_ratio,
        compute_weight_error,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    from edgecxr.convert.calibration import load_calibration
    from edgecxr.convert.formats.onnx.export import INPUT_NAME
    from edgecxr.convert.formats.onnx.quantize import BatchReader, preprocess_for_quant, quantize_int8

    with tempfile.TemporaryDirectory(prefix="edgecxr-debugq-") as tmp:
        fp32, contract = _fp32_onnx_and_contract(model_path, tmp)
        calib = load_calibration(contract, data, n, progress=progress)
        x = calib.nchw(contract.preprocess)
        pre = preprocess_for_quant(fp32, os.path.join(tmp, "pre.onnx"))
        qdq = os.path.join(tmp, "qdq.onnx")
        qinfo = quantize_int8(pre, qdq, x, calib_method, keep_float, INPUT_NAME, pre_process=False)
        f_aug, q_aug = os.path.join(tmp, "float_aug.onnx"), os.path.join(tmp, "qdq_aug.onnx")
        modify_model_output_intermediate_tensors(pre, f_aug)
        modify_model_output_intermediate_tensors(qdq, q_aug)
        reader = BatchReader(INPUT_NAME, x, DEBUG_BATCH)
        float_acts = collect_activations(f_aug, reader)
        qdq_acts = collect_activations(q_aug, reader)
        matching = create_activation_matching(qdq_acts, float_acts)
        act_err = compute_activation_error(matching)
        w_err = compute_weight_error(create_weight_matching(pre, qdq))
        producers, weights, qparams = _producers(qdq), _weights_by_node(pre), _activation_qparams(qdq)

    rows = []
    for tensor, (scale, zp, dtype) in qparams.items():
        if tensor not in float_acts:
            continue
        ref = [np.asarray(a, dtype=np.float32) for a in float_acts[tensor]]
        fq = [_fake_quant(a, scale, zp, dtype) for a in ref]
        node, op = producers.get(tensor, ("(graph input)", "Input"))
        w = weights.get(node)
        xmodel = act_err.get(tensor, {}).get("xmodel_err")
        rows.append({
            "tensor": tensor, "node": node, "op_type": op,
            "sqnr_local_db": float(compute_signal_to_quantization_noice_ratio(ref, fq)),
            "sqnr_vs_fp32_db": None if xmodel is None else float(xmodel),
            "mse_local": _mse(ref, fq), "scale": scale, "zero_point": zp,
            "weight": w, "weight_sqnr_db": float(w_err[w]) if w in w_err else None,
        })
    rows.sort(key=lambda r: r["sqnr_local_db"])
    return {"model": os.path.abspath(model_path), "arch": contract.arch, "images": len(calib),
            "calibration": dict(calib.to_dict(), method=calib_method), "keep_float": qinfo["keep_float"], "tensors": rows}


def format_table(result: dict[str, Any], top: int = 20) -> str:
    rows = result["tensors"][:top] if top else result["tensors"]
    lines = [f"INT8 error per tensor, worst first ({result['arch']}, {result['images']} real images, "
             f"calibration {result['calibration']['method']}); SQNR in dB, higher is better",
             f"{'rank':>4}  {'SQNR local':>10}  {'vs FP32':>8}  {'weights':>8}  {'op':<18}node (use with --keep-float)"]
    lines.append("-" * len(lines[-1]))
    for i, r in enumerate(rows, 1):
        vs = "" if r["sqnr_vs_fp32_db"] is None else f"{r['sqnr_vs_fp32_db']:.1f}"
        w = "" if r["weight_sqnr_db"] is None else f"{r['weight_sqnr_db']:.1f}"
        lines.append(f"{i:>4}  {r['sqnr_local_db']:>10.1f}  {vs:>8}  {w:>8}  {r['op_type']:<18}{r['node']}")
    if top and len(result["tensors"]) > top:
        lines.append(f"... {len(result['tensors']) - top} more tensors in the JSON")
    return "\n".join(lines)
