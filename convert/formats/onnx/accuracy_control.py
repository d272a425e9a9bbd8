"""Accuracy control for INT8 ONNX: layers back to float through ONNX Runtime's ``nodes_to_exclude``.

Calibration runs once (ORT's calibration cache); every candidate set of float layers
is then only a requantization (about a second for MobileNetV2) and one pass over the
held-out images. The file convert installs is made by the ordinary
``quantize_int8`` with the chosen ``--keep-float`` set, so it is exactly what a user
typing those names would get.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from edgecxr.convert.accuracy_control import bench_steps, search

# Nodes that only move data: keeping one in float buys nothing but extra Q/DQ pairs.
_LAYOUT_OPS = {"QuantizeLinear", "DequantizeLinear", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}


def quantized_layers(qdq_path: str) -> list[tuple[str, str]]:
    """(node name, op type) of every compute node that reads a DequantizeLinear output: what INT8 changed."""
    import onnx

    g = onnx.load(qdq_path, load_external_data=False).graph
    dq_out = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [(n.name, n.op_type) for n in g.node if n.op_type not in _LAYOUT_OPS and any(i in dq_out for i in n.input)]


def onnx_logits(path: str, x: np.ndarray, input_name: str, threads: int | None, batch: int = 32) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {input_name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]).astype(np.float32)


def control(p: Any, x_cal: np.ndarray, work: str) -> dict[str, Any]:
    """Run the search for the INT8 ONNX of production ``p``; returns the record (``keep_float``: the set to use)."""
    from edgecxr.convert.formats.onnx import quantize
    from edgecxr.convert.formats.onnx.export import INPUT_NAME

    job, run, t = p.accuracy_control, p.run, p.int8_target
    pre = quantize.preprocess_for_quant(p.fp32_onnx, os.path.join(work, "pre.onnx"))
    cache = os.path.join(work, "calibration_ranges.json")
    x_hold = job.holdout.x

    def evaluate(keep: list[str], stem: str | None, rows: np.ndarray | None) -> tuple[np.ndarray, str]:
        path = os.path.join(work, f"{stem or 'candidate'}.onnx")
        quantize.quantize_int8(pre, path, x_cal, p.calib_method, keep, INPUT_NAME, pre_process=False,
                               reduce_range=t.reduce_range, activations=t.activations, weights=t.weights, calibration_cache=cache)
        return onnx_logits(path, x_hold if rows is None else x_hold[rows], INPUT_NAME, run.threads), path

    base = quantize.resolve_keep_float(pre, p.keep_float)
    record = search(evaluate, quantized_layers, job.ref_logits, job.holdout.y, job.holdout.classes, job.settings,
                    run.echo, "onnx", base_keep=base)
    record["holdout"] = job.holdout.to_dict()
    bench_steps(record, work, run.echo)
    return record


def produce(p: Any, dest: str) -> dict[str, Any]:
    """The INT8 ONNX artifact with accuracy control: search, then quantize with the chosen float layers."""
    from edgecxr.convert.formats.onnx import export as onnx_export
    from edgecxr.convert.formats.onnx import quantize
    from edgecxr.convert.formats.onnx.variants import onnx_variant

    x_cal = p.calib.nchw(p.contract.preprocess)
    with tempfile.TemporaryDirectory(prefix=".control-onnx-", dir=os.path.dirname(os.path.abspath(dest))) as work:
        record = control(p, x_cal, work)
    keep = record["keep_float"]
    source = dict(p.int8_source, keep_float=list(keep), accuracy_control={"added": record["added"], "passed": record["passed"]})
    stamp = onnx_export.onnx_contract(p.contract, "int8", source, p.versions, p.int8_target.contract_block(p.plain_target["converted_on"]))
    t = p.int8_target
    details = onnx_variant(dest, lambda tmp: quantize.quantize_int8(
        p.fp32_onnx, tmp, x_cal, p.calib_method, keep, onnx_export.INPUT_NAME, reduce_range=t.reduce_range,
        activations=t.activations, weights=t.weights))
    p.run.stage(dest, stamp)
    details["accuracy_control"] = record
    return details
