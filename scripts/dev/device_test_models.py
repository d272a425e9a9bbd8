#!/usr/bin/env python3
"""Small real model files with contracts, for testing the device runner.

Writes, into OUT:
  tiny_fp32.tflite / tiny_int8.tflite (+ .tflite.json sidecars): a two-conv CNN
      built with TensorFlow and converted by the TFLite converter (FP32, and full
      integer INT8 calibrated on the preprocessed images of --data); NHWC input.
  model_fp32.onnx (with --checkpoint): the checkpoint exported by torch.onnx with
      its contract in metadata_props; NCHW input.

They stand in for ``edgecxr convert`` output where a test must not depend on the
conversion stage (and its minutes of onnx2tf). The contract's class names and
preprocessing come from --checkpoint's contract when given, else a 3-class default.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

from edgecxr.device.contract import Contract, TensorSpec
from edgecxr.device.image_io import load_gray
from edgecxr.device.preprocess import PreprocessSpec, preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/dev/ -> repo



def _base_contract(size: int) -> Contract:
    spec = PreprocessSpec(size=size)
    return Contract(arch="tiny_cnn", classes=("COVID", "Normal", "Viral_Pneumonia"), preprocess=spec,
                    input=TensorSpec("input", (1, 3, size, size)), output=TensorSpec("logits", (1, 3)))


def _calibration(data: str | None, spec: PreprocessSpec, n: int = 24) -> np.ndarray:
    files = sorted(glob.glob(os.path.join(data, "**", "*.png"), recursive=True))[:: 3][:n] if data else []
    if files:
        x = np.stack([preprocess(load_gray(f), spec) for f in files])
    else:
        rng = np.random.default_rng(0)
        x = np.stack([preprocess(rng.integers(0, 256, (64, 64), dtype=np.uint8), spec) for _ in range(n)])
    return np.transpose(x, (0, 2, 3, 1)).astype(np.float32)


def write_tflite(out: str, base: Contract, data: str | None) -> list[str]:
    import tensorflow as tf

    from edgecxr.device.formats import write_contract

    size, ch, k = base.preprocess.size, base.preprocess.channels, base.num_classes
    rng = np.random.default_rng(0)
    w1 = tf.constant(rng.normal(0, 0.4, (3, 3, ch, 8)).astype(np.float32))
    b1 = tf.constant(rng.normal(0, 0.1, 8).astype(np.float32))
    w2 = tf.constant(rng.normal(0, 0.3, (3, 3, 8, 16)).astype(np.float32))
    b2 = tf.constant(rng.normal(0, 0.1, 16).astype(np.float32))
    w3 = tf.constant(rng.normal(0, 0.8, (16, k)).astype(np.float32))
    b3 = tf.constant(rng.normal(0, 0.1, k).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, ch], tf.float32, name="input")])
    def net(x):
        h = tf.nn.relu(tf.nn.conv2d(x, w1, 2, "SAME") + b1)
        h = tf.nn.relu(tf.nn.conv2d(h, w2, 2, "SAME") + b2)
        return tf.matmul(tf.reduce_mean(h, axis=[1, 2]), w3) + b3

    calib = _calibration(data, base.preprocess)
    written = []
    for precision in ("fp32", "int8"):
        conv = tf.lite.TFLiteConverter.from_concrete_functions([net.get_concrete_function()], net)
        if precision == "int8":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: ([calib[i : i + 1]] for i in range(len(calib)))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        blob = conv.convert()
        path = os.path.join(out, f"tiny_{precision}.tflite")
        with open(path, "wb") as fh:
            fh.write(blob)
        interp = tf.lite.Interpreter(model_content=blob)
        i, o = interp.get_input_details()[0], interp.get_output_details()[0]
        q = precision == "int8"
        contract = base.with_io(
            format="tflite", precision=precision,
            input=TensorSpec(i["name"], tuple(int(v) for v in i["shape"]), np.dtype(i["dtype"]).name, "NHWC",
                             float(i["quantization"][0]) if q else None, int(i["quantization"][1]) if q else None),
            output=TensorSpec(o["name"], tuple(int(v) for v in o["shape"]), np.dtype(o["dtype"]).name, None,
                              float(o["quantization"][0]) if q else None, int(o["quantization"][1]) if q else None))
        contract = Contract.from_dict({**contract.to_dict(), "arch": "tiny_cnn"})
        write_contract(path, contract)  # the one door: a sidecar for TFLite
        written.append(path)
    return written


def write_onnx(out: str, checkpoint: str) -> str:
    import torch

    from edgecxr.device.formats import write_contract
    from edgecxr.models.factory import load_model

    model, contract = load_model(checkpoint)
    size, ch = contract.preprocess.size, contract.preprocess.channels
    path = os.path.join(out, "model_fp32.onnx")
    torch.onnx.export(model, torch.zeros(1, ch, size, size), path, input_names=["input"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    c = contract.with_io(format="onnx", precision="fp32", input=TensorSpec("input", (1, ch, size, size), "float32", "NCHW"),
                         output=TensorSpec("logits", (1, contract.num_classes)))
    write_contract(path, c)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--checkpoint", help="edgecxr checkpoint: export it to ONNX and take its contract")
    ap.add_argument("--data", help="folder of PNGs for INT8 calibration")
    ap.add_argument("--size", type=int, default=32, help="input size when there is no checkpoint")
    ap.add_argument("--no-tflite", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    files = []
    base = _base_contract(a.size)
    if a.checkpoint:
        if a.no_tflite:
            print(json.dumps([write_onnx(a.out, a.checkpoint)]))
            return
        # torch and TensorFlow in one process crash here (SIGSEGV): export in a child
        import subprocess

        subprocess.run([sys.executable, __file__, a.out, "--checkpoint", a.checkpoint, "--no-tflite"], check=True,
                       stdout=subprocess.DEVNULL)
        onnx_path = os.path.join(a.out, "model_fp32.onnx")
        from edgecxr.device.formats import read_contract

        base = read_contract(onnx_path)
        files.append(onnx_path)
    if not a.no_tflite:
        files = write_tflite(a.out, base, a.data) + files
    print(json.dumps(files))


if __name__ == "__main__":
    main()
