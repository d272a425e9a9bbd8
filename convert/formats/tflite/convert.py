"""FP32 ONNX -> TFLite FP32/FP16/full-integer INT8 via onnx2tf, in a child process.

The parent side: prepares a work folder next to the export (same filesystem, so
the final rename is atomic), writes the calibration arrays, runs
``edgecxr.convert.formats.tflite.worker`` offline, then reads back what the produced files
really are (input/output names, NHWC shape, int8 scale and zero point) to write
each file's contract sidecar. The sidecar is what the runner and bench read.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecxr.device.atomic import atomic_path
from edgecxr.device.contract import Contract, TensorSpec
from edgecxr.device.preprocess import PreprocessSpec
from edgecxr.errors import EdgecxrError

ONNX2TF_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"  # onnx2tf downloads it unless present
WORKER_TIMEOUT_S = 1800
_OFFLINE_PROXY = "http://127.0.0.1:9"  # a closed port: any download attempt fails at once


@dataclass
class TFLiteResult:
    """Produced files (still in the work folder) and per-precision failure reasons."""

    paths: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    log_tail: str = ""
    accuracy_control: dict[str, Any] | None = None  # the search record, step files still in the work folder


def _sample_images(gray: np.ndarray | None) -> np.ndarray:
    """20 x 128 x 128 x 3 in [0, 1] for onnx2tf's internal test inference.

    onnx2tf downloads MS-COCO samples for this unless the file exists in its cwd.
    Real calibration images are used when there are any; for FP32/FP16-only runs
    without data, deterministic synthetic X-ray-like images (never calibration).
    """
    import cv2

    if gray is not None and len(gray):
        picked = [gray[i % len(gray)].astype(np.float32) / 255.0 for i in range(20)]
    else:
        from edgecxr.data.synthetic import SYNTHETIC_CLASSES, make_image

        picked = [make_image(SYNTHETIC_CLASSES[i % len(SYNTHETIC_CLASSES)], i, size=128).astype(np.float32) / 255.0 for i in range(20)]
    out = np.stack([cv2.resize(g, (128, 128), interpolation=cv2.INTER_AREA) for g in picked])
    return np.ascontiguousarray(np.repeat(out[..., None], 3, axis=-1).astype(np.float32))


def worker_env() -> dict[str, str]:
    """PATH with this interpreter's bin folder first (onnx2tf shells out to ``onnxsim``),
    and a dead proxy so nothing in the child can reach the network."""
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env[key] = _OFFLINE_PROXY
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    return env


def run_onnx2tf(fp32_onnx: str, precisions: tuple[str, ...], work_dir: str, spec: PreprocessSpec,
                calib: Any = None, timeout: int = WORKER_TIMEOUT_S, control: Any = None) -> TFLiteResult:
    """Run the worker; returns what it produced. Never raises for a conversion failure.

    ``calib`` (``imageset.LabelledImages``) gives INT8 its representative inputs
    exactly as the model sees them (``device/preprocess.py`` via ``nchw``, made NHWC);
    the worker applies no preprocessing of its own. ``control``
    (``accuracy_control.ControlJob``) makes the worker search which layers to keep in float.
    """
    if "int8" in precisions and (calib is None or not len(calib)):
        raise EdgecxrError("INT8 TFLite needs real calibration images (internal error: none were passed)")
    work_dir = os.path.abspath(work_dir)  # the worker runs with this as its cwd
    os.makedirs(work_dir, exist_ok=True)
    # onnx2tf simplifies its input file in place: hand it a copy, never the artifact
    onnx_copy = os.path.join(work_dir, "model.onnx")
    shutil.copyfile(fp32_onnx, onnx_copy)
    np.save(os.path.join(work_dir, ONNX2TF_SAMPLE_FILE), _sample_images(calib.gray if calib is not None else None))
    job: dict[str, Any] = {"onnx": os.path.abspath(onnx_copy), "work_dir": os.path.abspath(work_dir), "precisions": list(precisions),
                           "calib_npy": None}
    if calib is not None and "int8" in precisions:
        job["calib_npy"] = os.path.join(job["work_dir"], "calib_nhwc.npy")
        np.save(job["calib_npy"], np.ascontiguousarray(calib.nchw(spec).transpose(0, 2, 3, 1)))
        if control is not None:
            job["accuracy_control"] = control_job(control, job["work_dir"], spec)
    job_path = os.path.join(work_dir, "job.json")
    with open(job_path, "w", encoding="utf-8") as fh:
        json.dump(job, fh)
    res = TFLiteResult()
    try:
        proc = subprocess.run([sys.executable, "-m", "edgecxr.convert.formats.tflite.worker", job_path], cwd=work_dir,
                              env=worker_env(), capture_output=True, text=True, timeout=timeout)
        res.log_tail = (proc.stdout[-3000:] + proc.stderr[-3000:]).strip()
    except subprocess.TimeoutExpired:
        res.errors = {p: f"onnx2tf did not finish within {timeout} s" for p in precisions}
        return res
    result_path = os.path.join(work_dir, "result.json")
    if not os.path.exists(result_path):
        last = res.log_tail.splitlines()[-1][:200] if res.log_tail else "no output"
        res.errors = {p: f"TFLite worker crashed (exit {proc.returncode}): {last}" for p in precisions}
        return res
    with open(result_path, encoding="utf-8") as fh:
        out = json.load(fh)
    res.paths, res.errors, res.seconds = out["paths"], out["errors"], out["seconds"]
    res.accuracy_control = out.get("accuracy_control")
    if out.get("traceback"):
        res.log_tail = out["traceback"]
    return res


def control_job(control: Any, work_dir: str, spec: PreprocessSpec) -> dict[str, Any]:
    """The held-out images (NHWC, the model's own inputs) and the checkpoint's logits, as files for the worker."""
    paths = {"holdout_npy": os.path.join(work_dir, "holdout_nhwc.npy"), "ref_logits_npy": os.path.join(work_dir, "holdout_ref_logits.npy")}
    np.save(paths["holdout_npy"], np.ascontiguousarray(control.holdout.nchw(spec).transpose(0, 2, 3, 1)))
    np.save(paths["ref_logits_npy"], control.ref_logits)
    return {**paths, "settings": control.settings.to_dict(), "y": [int(v) for v in control.holdout.y],
            "classes": list(control.holdout.classes), "threads": control.settings.latency_threads}


def read_io(path: str) -> tuple[TensorSpec, TensorSpec]:
    """Input/output specs as the TFLite file itself declares them (dtype, shape, int quantization)."""
    from edgecxr.device.backends import import_interpreter

    Interpreter, _ = import_interpreter()
    interp = Interpreter(model_path=path)
    specs = []
    for d, layout in ((interp.get_input_details()[0], "NHWC"), (interp.get_output_details()[0], None)):
        dtype = np.dtype(d["dtype"]).name
        scale, zp = d["quantization"]
        quant = dtype in ("int8", "uint8") and scale != 0
        specs.append(TensorSpec(str(d["name"]), tuple(int(v) for v in d["shape"]), dtype, layout,
                                float(scale) if quant else None, int(zp) if quant else None))
    return specs[0], specs[1]


def tflite_contract(base: Contract, path: str, precision: str, extra_source: dict[str, Any] | None = None,
                    versions: dict[str, str] | None = None, target: dict[str, Any] | None = None) -> Contract:
    inp, out = read_io(path)
    return base.with_io(format="tflite", precision=precision, input=inp, output=out,
                        source=dict(extra_source or {}), versions=dict(versions or {}), target=dict(target or {}))


def install(produced: str, dest: str) -> int:
    """Write a produced file to ``dest`` atomically, with its quantization vectors
    shared; returns the bytes the sharing saved. Its contract sidecar is written once,
    after verification (``convert/pipeline.py``)."""
    from edgecxr.convert.formats.tflite.compact import share_quantization_vectors

    with open(produced, "rb") as fh:
        data, saved = share_quantization_vectors(fh.read())
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return saved


def make_work_dir(out_dir: str) -> str:
    return tempfile.mkdtemp(prefix=".tflite-work-", dir=out_dir)
