"""PyTorch -> ncnn through pnnx, and the ncnn graph as data (``.param`` text, ``.bin`` layout).

pnnx reads a TorchScript trace and writes a dozen files (its own ``.pnnx.*`` graph,
an ONNX copy, Python scripts); only the ncnn pair is kept. It runs as a child
process on a work folder next to the export (same filesystem), and the pair is
renamed into place only once complete. ``fp16=1`` makes pnnx store weights as
float16 (half the file); ``fp16=0`` keeps float32.

The graph reader is the INT8 writer's map of the weights file: ncnn's ``.bin`` has
no index, so each layer's weights are found by walking the layers in order and
consuming what that layer type's ``load_model`` reads. Only the types pnnx emits for
the CNNs here are known; anything else is refused rather than misread.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecxr.errors import EdgecxrError

MAGIC = "7767517"
PNNX_TIMEOUT_S = 900
TAG_FP32, TAG_FP16, TAG_INT8 = 0, 0x01306B47, 0x000D4B38
WEIGHTED = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
# layer types that read nothing from the weights file (pnnx output for CNN classifiers)
WEIGHTLESS = {"Input", "Split", "BinaryOp", "UnaryOp", "Pooling", "ReLU", "Clip", "Sigmoid", "Swish", "HardSwish",
              "HardSigmoid", "Flatten", "Reshape", "Concat", "Softmax", "Eltwise", "Permute", "Crop", "Interp",
              "Padding", "Dropout", "Noop", "Slice", "Mish", "ELU", "GELU", "TanH", "Reduction"}


@dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: list[tuple[str, str]] = field(default_factory=list)  # (key, raw value), file order

    def get(self, key: int, default: int = 0) -> int:
        for k, v in self.params:
            if k == str(key):
                return int(float(v))
        return default

    def set(self, key: int, value: int) -> None:
        self.params = [(k, v) for k, v in self.params if k != str(key)] + [(str(key), str(int(value)))]

    def line(self) -> str:
        head = f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)}"
        return " ".join([head, *self.bottoms, *self.tops, *(f"{k}={v}" for k, v in self.params)])


@dataclass
class Graph:
    layers: list[Layer]
    blob_count: int

    def text(self) -> str:
        return "\n".join([MAGIC, f"{len(self.layers)} {self.blob_count}", *(la.line() for la in self.layers)]) + "\n"


def read_param(path: str) -> Graph:
    with open(path, encoding="utf-8") as fh:
        lines = [ln.split() for ln in fh.read().splitlines() if ln.strip()]
    if not lines or lines[0] != [MAGIC]:
        raise EdgecxrError(f"{path}: not an ncnn .param file (magic {MAGIC} missing)")
    layers = []
    for tok in lines[2:]:
        nb, nt = int(tok[2]), int(tok[3])
        rest = tok[4 + nb + nt:]
        params = [tuple(t.split("=", 1)) for t in rest]
        layers.append(Layer(tok[0], tok[1], tok[4:4 + nb], tok[4 + nb:4 + nb + nt], params))  # type: ignore[arg-type]
    return Graph(layers, int(lines[1][1]))


@dataclass
class WeightSlice:
    """Where one weighted layer's tensors are in the ``.bin``: byte offsets and sizes."""

    layer: Layer
    weight_at: int  # offset of the 4-byte tag
    weight_end: int
    weight_tag: int
    bias_at: int | None
    end: int  # offset after everything this layer reads


def _tagged_size(data: bytes, at: int, count: int) -> tuple[int, int]:
    """(tag, bytes including the tag) of a tagged weight blob of ``count`` values."""
    tag = int(np.frombuffer(data, "<u4", 1, at)[0])
    if tag == TAG_FP32:
        size = 4 * count
    elif tag == TAG_FP16:
        size = (2 * count + 3) // 4 * 4
    elif tag == TAG_INT8:
        size = (count + 3) // 4 * 4
    else:
        raise EdgecxrError(f"ncnn weights tag {tag:#x} at byte {at} is not float32/float16/int8 (a quantization table file?)")
    return tag, 4 + size


def weight_slices(graph: Graph, data: bytes) -> list[WeightSlice]:
    """Walk ``data`` (the ``.bin``) layer by layer; refuse layers whose weights it cannot place."""
    out, at = [], 0
    for la in graph.layers:
        if la.type in WEIGHTLESS:
            continue
        if la.type not in WEIGHTED:
            raise EdgecxrError(f"ncnn layer {la.name} of type {la.type} is not one the INT8 writer knows how to read")
        if la.get(8) or la.get(19):
            raise EdgecxrError(f"ncnn layer {la.name} is already quantized or has dynamic weights")
        n_out = la.get(0)
        bias = la.get(1 if la.type == "InnerProduct" else 5)
        count = la.get(2 if la.type == "InnerProduct" else 6)
        tag, size = _tagged_size(data, at, count)
        bias_at = at + size if bias else None
        end = at + size + (4 * n_out if bias else 0)
        out.append(WeightSlice(la, at, at + size, tag, bias_at, end))
        at = end
    if at != len(data):
        raise EdgecxrError(f"ncnn weights file has {len(data)} bytes, the graph reads {at}: layer types and file disagree")
    return out


def float_weights(data: bytes, s: WeightSlice) -> np.ndarray:
    count = s.layer.get(2 if s.layer.type == "InnerProduct" else 6)
    if s.weight_tag == TAG_FP32:
        return np.frombuffer(data, "<f4", count, s.weight_at + 4).astype(np.float32)
    if s.weight_tag == TAG_FP16:
        return np.frombuffer(data, "<f2", count, s.weight_at + 4).astype(np.float32)
    raise EdgecxrError(f"ncnn layer {s.layer.name}: weights are already int8")


def trace(torch_model: Any, input_shape: tuple[int, ...], dest: str) -> None:
    """TorchScript trace for pnnx (its only input); deprecation warnings of ``jit.trace`` stay here."""
    import torch

    torch_model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(torch_model, torch.zeros(*input_shape), check_trace=False)
    traced.save(dest)


def run_pnnx(traced: str, input_shape: tuple[int, ...], work: str, fp16: bool, timeout: int = PNNX_TIMEOUT_S) -> tuple[str, str]:
    """Run the pnnx binary on ``traced``; returns the ncnn (param, bin) it wrote in ``work``."""
    try:
        import pnnx
    except ImportError as exc:
        raise EdgecxrError("ncnn export needs pnnx: pip install pnnx") from exc
    tag = "fp16" if fp16 else "fp32"
    out = {k: os.path.join(work, f"{tag}{suffix}") for k, suffix in
           (("pnnxparam", ".pnnx.param"), ("pnnxbin", ".pnnx.bin"), ("pnnxpy", "_pnnx.py"), ("pnnxonnx", ".pnnx.onnx"),
            ("ncnnparam", ".ncnn.param"), ("ncnnbin", ".ncnn.bin"), ("ncnnpy", "_ncnn.py"))}
    shape = ",".join(str(int(d)) for d in input_shape)
    cmd = [pnnx.EXEC_PATH, traced, f"inputshape=[{shape}]f32", "device=cpu", f"fp16={int(fp16)}",
           *(f"{k}={v}" for k, v in out.items())]
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise EdgecxrError(f"pnnx did not finish within {timeout} s") from exc
    if proc.returncode != 0 or not os.path.exists(out["ncnnparam"]) or not os.path.exists(out["ncnnbin"]):
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])[:300]
        raise EdgecxrError(f"pnnx failed (exit {proc.returncode}): {tail}")
    return out["ncnnparam"], out["ncnnbin"]


def install(param: str, weights: str, dest: str) -> None:
    """Weights, then the graph: a reader who sees the ``.ncnn.param`` finds the weights (the
    contract sidecar is written once, after verification)."""
    from edgecxr.device.atomic import atomic_path
    from edgecxr.device.runtimes.ncnn_cpu import weights_path

    for src, to in ((weights, weights_path(dest)), (param, dest)):
        with atomic_path(to) as tmp:
            shutil.copyfile(src, tmp)


def make_work_dir(out_dir: str) -> str:
    return tempfile.mkdtemp(prefix=".ncnn-work-", dir=os.path.abspath(out_dir))  # pnnx runs inside it: absolute paths
