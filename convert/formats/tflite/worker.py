"""Child process for the TFLite conversions: ``python -m edgecxr.convert.formats.tflite.worker JOB.json``.

Runs in its own process (and working directory) because onnx2tf and TensorFlow
are heavy, chatty and global: TF would otherwise share threads and memory with
torch in the parent, and onnx2tf reads and writes files relative to the cwd.

Steps: onnx2tf turns the FP32 ONNX file into a saved_model plus FP32 and FP16
TFLite files (batch 1, NHWC). Full-integer INT8 is then made from that saved_model
with ``TFLiteConverter`` and the real calibration images, the same calls
onnx2tf's ``-oiqt`` makes, minus the three extra variants (dynamic range, int16
activations) it would calibrate and that nobody here uses.

The job file names the inputs; the worker writes ``result.json`` into the output
folder with the produced paths or the reason each one failed.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any


def _onnx2tf(job: dict[str, Any]) -> dict[str, str]:
    import onnx2tf

    out = job["work_dir"]
    onnx2tf.convert(
        input_onnx_file_path=job["onnx"], output_folder_path=os.path.join(out, "saved_model"),
        output_signaturedefs=True, batch_size=1, non_verbose=True,
    )
    stem = os.path.splitext(os.path.basename(job["onnx"]))[0]
    produced = {"fp32": f"{stem}_float32.tflite", "fp16": f"{stem}_float16.tflite"}
    return {p: os.path.join(out, "saved_model", name) for p, name in produced.items()}


def _int8(job: dict[str, Any], result: dict[str, Any]) -> str:
    import numpy as np
    import tensorflow as tf

    calib = np.load(job["calib_npy"], mmap_mode="r")  # the model's own input tensors (device/preprocess.py), NHWC

    def representative() -> Any:
        for i in range(calib.shape[0]):
            yield [np.asarray(calib[i : i + 1], dtype=np.float32)]

    converter = tf.lite.TFLiteConverter.from_saved_model(os.path.join(job["work_dir"], "saved_model"))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.representative_dataset = representative
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    converter._experimental_disable_per_channel = False
    if job.get("accuracy_control"):  # calibrate once, then layers back to float until the limit holds
        from edgecxr.convert.formats.tflite.accuracy_control import controlled_int8

        data, result["accuracy_control"] = controlled_int8(job, converter)
    else:
        data = converter.convert()
    path = os.path.join(job["work_dir"], "int8.tflite")
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def run(job: dict[str, Any]) -> dict[str, Any]:
    os.chdir(job["work_dir"])  # onnx2tf looks for its sample file in the cwd
    result: dict[str, Any] = {"paths": {}, "errors": {}, "seconds": {}}
    t0 = time.perf_counter()
    try:
        paths = _onnx2tf(job)
    except BaseException as exc:  # SystemExit too: onnx2tf calls sys.exit(1) on failure
        msg = f"onnx2tf failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        for p in job["precisions"]:
            result["errors"][p] = msg
        result["traceback"] = traceback.format_exc()[-4000:]
        return result
    result["seconds"]["onnx2tf"] = time.perf_counter() - t0
    for p in ("fp32", "fp16"):
        if p in job["precisions"]:
            if os.path.exists(paths[p]):
                result["paths"][p] = paths[p]
            else:
                result["errors"][p] = f"onnx2tf did not write {os.path.basename(paths[p])}"
    if "int8" in job["precisions"]:
        t1 = time.perf_counter()
        try:
            result["paths"]["int8"] = _int8(job, result)
        except Exception as exc:  # TF converter errors are RuntimeError/ConverterError/ValueError
            result["errors"]["int8"] = f"INT8 TFLite conversion failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            result["traceback"] = traceback.format_exc()[-4000:]
        result["seconds"]["int8"] = time.perf_counter() - t1
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m edgecxr.convert.formats.tflite.worker JOB.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as fh:
        job = json.load(fh)
    result = run(job)
    with open(os.path.join(job["work_dir"], "result.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
