"""TFLite: onnx2tf from the FP32 ONNX export, in a child process (TensorFlow stays out
of the caller), FP32/FP16 and full-integer INT8 calibrated on the same real images.

INT8 TFLite (s8 x s8 through XNNPACK) is exact on every CPU, so its contract names
no CPU requirement. The contract is a sidecar, ``<file>.tflite.json``: it travels
with the file as its companion.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from edgecxr.convert.formats.base import PRECISIONS, ExportFormat, Production, Stats, prod, weight_precision
from edgecxr.device.formats import DEVICE_FORMATS
from edgecxr.errors import EdgecxrError


def produce(p: Production, steps: dict[str, Any]) -> None:
    from edgecxr.convert.formats.tflite import convert as tflite

    run = p.run
    if p.fp32_onnx is None:
        for step in steps.values():
            run.skip(step, "FP32 ONNX export failed")
        return
    work = tflite.make_work_dir(run.out_dir)
    try:
        run.echo(f"  tflite  ...   onnx2tf + TFLiteConverter ({', '.join(steps)}), in a child process")
        t0 = time.perf_counter()
        res = tflite.run_onnx2tf(p.fp32_onnx, tuple(steps), work, p.contract.preprocess, p.calib if "int8" in steps else None,
                                 control=p.accuracy_control if "int8" in steps else None)
        elapsed = time.perf_counter() - t0
        if res.accuracy_control:  # the search ran in the child; its step files are benchmarked here, before the folder goes
            from edgecxr.convert.accuracy_control import bench_steps

            for line in res.accuracy_control.pop("log", []):
                run.echo(line)
            res.accuracy_control["holdout"] = p.accuracy_control.holdout.to_dict()
            bench_steps(res.accuracy_control, work, run.echo)
        for precision, step in steps.items():
            spent = res.seconds.get("int8", 0.0) if precision == "int8" else res.seconds.get("onnx2tf", elapsed)
            run.do(step, lambda pr=precision, s=step: _install(p, res, pr, run.path(s)), extra_seconds=spent)
        if any(s.status != "ok" for s in steps.values()) and res.log_tail:
            run.echo("  tflite log (last lines): " + " | ".join(res.log_tail.strip().splitlines()[-3:])[:600])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _install(p: Production, res: Any, precision: str, dest: str) -> dict[str, Any]:
    from edgecxr.convert.formats.tflite import convert as tflite

    produced = res.paths.get(precision)
    if not produced:
        raise EdgecxrError(res.errors.get(precision, "onnx2tf produced no file"))
    source = p.int8_source if precision == "int8" else p.source
    control = res.accuracy_control if precision == "int8" else None
    if control:  # the contract names the layers kept in float (TFLite output tensor names)
        source = dict(source, keep_float=list(control["keep_float"]), accuracy_control={"added": control["added"], "passed": control["passed"]})
    c = tflite.tflite_contract(p.contract, produced, precision, source, p.versions, p.plain_target)
    saved = tflite.install(produced, dest)
    p.run.stage(dest, c)
    out = {"input": asdict(c.input), "output": asdict(c.output), "shared_quant_bytes": saved}
    if control:
        out["accuracy_control"] = control
    return out




def graph_stats(path: str) -> Stats:
    """Weights and MACs of CONV_2D/DEPTHWISE_CONV_2D/FULLY_CONNECTED, from the file's own graph."""
    from edgecxr.models.tflite_graph import graph_interpreter

    interp = graph_interpreter(path)
    details = interp.get_tensor_details()
    tensors = {t["index"]: tuple(int(v) for v in t["shape"]) for t in details}
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in details}
    weight_dtypes: list[str] = []
    params = macs = 0
    counted = 0
    ops = interp._get_ops_details()
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
        params += prod(w)
        if len(ins) > 2 and ins[2] >= 0 and ins[2] in tensors:
            params += prod(tensors[ins[2]])
        if name == "CONV_2D":  # weights O x KH x KW x I
            macs += prod(y) * prod(w[1:])
        elif name == "DEPTHWISE_CONV_2D":  # weights 1 x KH x KW x O
            macs += prod(y) * w[1] * w[2]
        else:  # weights O x I
            macs += prod(y) * w[-1]
    if counted == 0:
        return {"params": None, "macs": None, "stats_from": "n/a (no CONV_2D/FULLY_CONNECTED ops found)"}
    return {"params": int(params), "macs": int(macs), "stats_from": "tflite graph (CONV_2D/DEPTHWISE/FULLY_CONNECTED)",
            "weight_precision": weight_precision(weight_dtypes)}


FORMAT = ExportFormat(
    device=DEVICE_FORMATS["tflite"],
    precisions=PRECISIONS,
    layout="NHWC",
    description="TFLite via onnx2tf (batch 1, NHWC); contract in a <file>.tflite.json sidecar",
    options={
        "fp32": "onnx2tf float32",
        "fp16": "onnx2tf float16 weights, float32 inputs/outputs",
        "int8": "full-integer (int8 input/output), per-channel, TFLiteConverter on onnx2tf's saved_model with the real calibration images",
    },
    marker="s",
    produce=produce,
    graph_stats=graph_stats,
)
