"""Accuracy control for INT8 TFLite, run inside the TensorFlow child (``worker.py``).

The converter calibrates once (``_experimental_calibrate_only``, as TensorFlow's
``QuantizationDebugger`` does); each candidate set of float layers is then one call
to the MLIR quantizer with ``denylisted_nodes`` (the call behind the debugger's
``get_nondebug_quantized_model``), with the same int8 input/output and per-channel
settings as the ordinary conversion, so plain INT8 here is the ordinary file. A
denylisted op stays float between a DEQUANTIZE and a QUANTIZE. Layers are named by
their output tensor in the TFLite graph, which is what ``denylisted_nodes`` takes.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

# Ops whose output only moves data: keeping one in float buys nothing but two more conversions.
_LAYOUT_OPS = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "TRANSPOSE", "PAD", "PADV2", "SQUEEZE", "EXPAND_DIMS", "STRIDED_SLICE",
               "GATHER", "SHAPE", "PACK", "UNPACK", "CONCATENATION_SHAPE"}


def float_layers(model: bytes) -> list[tuple[str, str]]:
    """(output tensor name, op) of every op of the calibrated float model that quantization will change."""
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_content=model)
    names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    out = []
    for op in interp._get_ops_details():
        outs = [int(o) for o in op["outputs"] if int(o) >= 0]
        if op["op_name"] in _LAYOUT_OPS or not outs or dtypes.get(outs[0]) != "float32":
            continue
        out.append((names[outs[0]], op["op_name"]))
    return out


def quantize(calibrated: bytes, denylisted: list[str]) -> bytes:
    """The MLIR quantizer as ``TFLiteConverter.convert`` calls it for full-integer INT8, plus a denylist."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    return convert.mlir_quantize(calibrated, disable_per_channel=False, input_data_type=tf.int8, output_data_type=tf.int8,
                                 denylisted_nodes=list(denylisted) or None)


def tflite_logits(model: bytes, x_nhwc: np.ndarray, threads: int = 1) -> np.ndarray:
    """Dequantized logits of a full-integer model on float NHWC inputs (one image per invoke)."""
    from edgecxr.device.backends import import_interpreter

    Interpreter, _ = import_interpreter()
    interp = Interpreter(model_content=model, num_threads=threads)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    (si, zi), (so, zo) = i["quantization"], o["quantization"]
    info = np.iinfo(i["dtype"])
    out = []
    for k in range(len(x_nhwc)):
        x = x_nhwc[k : k + 1]
        q = np.clip(np.round(x / si) + zi, info.min, info.max).astype(i["dtype"]) if si else x.astype(i["dtype"])
        interp.set_tensor(i["index"], q)
        interp.invoke()
        y = interp.get_tensor(o["index"]).astype(np.float32)
        out.append((y - zo) * so if so else y)
    return np.concatenate(out).astype(np.float32)


def controlled_int8(job: dict[str, Any], converter: Any) -> tuple[bytes, dict[str, Any]]:
    """Calibrate once, search, return the chosen model and the search record (steps saved for benchmarking)."""
    from edgecxr.convert.accuracy_control import ControlSettings, search

    ctl = job["accuracy_control"]
    settings = ControlSettings(**ctl["settings"])
    x = np.load(ctl["holdout_npy"])
    ref = np.load(ctl["ref_logits_npy"])
    y = np.asarray(ctl["y"], dtype=int)
    work = os.path.join(job["work_dir"], "control")
    os.makedirs(work, exist_ok=True)
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    models: dict[str, bytes] = {}

    def evaluate(keep: list[str], stem: str | None, rows: np.ndarray | None) -> tuple[np.ndarray, str]:
        data = quantize(calibrated, keep)
        path = os.path.join(work, f"{stem or 'candidate'}.tflite")
        with open(path, "wb") as fh:
            fh.write(data)
        models[path] = data
        return tflite_logits(data, x if rows is None else x[rows], int(ctl.get("threads") or 1)), path

    lines: list[str] = []
    record = search(evaluate, lambda _path: float_layers(calibrated), ref, y, ctl["classes"], settings, lines.append, "tflite")
    record["log"] = lines
    final = record["steps"][-1]["file"]
    return models[final], record
