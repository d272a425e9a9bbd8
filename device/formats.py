"""The device's own table: which file suffix is which format, and which runtimes open it.

The Pi cannot import ``convert/`` (no torch, no TensorFlow), so this minimal table
lives here and the workstation's export-format table (``edgecxr.convert.formats``)
refers to its rows instead of repeating them. A runtime is a first-class choice:
one file can be opened by several (``litert`` with XNNPACK, ``litert-builtin``
without it), and every bench row and runner call names the one it used.

Companion files are part of the model (OpenVINO's ``.bin`` beside its ``.xml``):
they count in its size and travel with it. ``{path}`` is the primary path, ``{stem}``
the path without its suffix. A contract sidecar (``<file>.json``) travels too but
is metadata, not model, so it is not counted in the size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Runtime:
    """One way to run a format: the backend that implements it and how to install it."""

    name: str
    module: str  # what must be importable, e.g. "onnxruntime"
    install: str  # the pip command a user types when it is missing
    description: str
    fallbacks: tuple[str, ...] = ()  # other modules that serve as well when ``module`` is missing

    @property
    def modules(self) -> tuple[str, ...]:
        """Any one of these importable means the runtime is there (``module`` first)."""
        return (self.module, *self.fallbacks)

    @property
    def packages(self) -> list[str]:
        """The pip arguments of ``install``, for an install line with another Python's ``-m pip``."""
        words = self.install.split()
        return words[2:] if words[:2] == ["pip", "install"] else words


@dataclass(frozen=True)
class DeviceFormat:
    name: str
    suffix: str
    runtimes: tuple[str, ...]  # the first is the default
    companions: tuple[str, ...] = ()  # patterns of the model's other files
    contract_in_file: bool = True  # False: the contract is a sidecar, <file>.json

    def companion_paths(self, path: str) -> list[str]:
        """The model's other files, then the contract sidecar if the format uses one."""
        stem = path[: -len(self.suffix)] if path.lower().endswith(self.suffix) else path
        out = [c.format(path=path, stem=stem) for c in self.companions]
        return out + ([path + ".json"] if not self.contract_in_file else [])


RUNTIMES: dict[str, Runtime] = {
    "onnxruntime": Runtime("onnxruntime", "onnxruntime", "pip install onnxruntime", "ONNX Runtime, CPU execution provider"),
    "litert": Runtime("litert", "ai_edge_litert", "pip install ai-edge-litert",
                      "TFLite interpreter (ai-edge-litert, else tflite-runtime) with its default XNNPACK delegate",
                      fallbacks=("tflite_runtime.interpreter",)),  # the backend's own fallback (device/backends.py)
    "litert-builtin": Runtime("litert-builtin", "ai_edge_litert", "pip install ai-edge-litert",
                              "TFLite interpreter with its built-in kernels only (no XNNPACK): what a delegate-less build runs"),
    "openvino": Runtime("openvino", "openvino", "pip install openvino",
                        "OpenVINO CPU plugin: f32 inference precision, latency hint, one stream (device/backend_openvino.py)"),
    "ncnn": Runtime("ncnn", "ncnn", "pip install ncnn",
                    "Tencent ncnn on the CPU: light mode, no Vulkan, fp16 storage only for FP16 files (device/backend_ncnn.py)"),
    "executorch": Runtime("executorch", "executorch", "pip install executorch torch",
                          "ExecuTorch runtime (pybindings) with the XNNPACK delegate; threadpool size set per process "
                          "(device/backend_executorch.py)"),
}

DEVICE_FORMATS: dict[str, DeviceFormat] = {
    "onnx": DeviceFormat("onnx", ".onnx", ("onnxruntime", "openvino")),
    "tflite": DeviceFormat("tflite", ".tflite", ("litert", "litert-builtin"), contract_in_file=False),
    "openvino": DeviceFormat("openvino", ".xml", ("openvino",), companions=("{stem}.bin",)),
    # two-part suffix: a bare .param/.bin pair would collide with OpenVINO's <stem>.bin
    "ncnn": DeviceFormat("ncnn", ".ncnn.param", ("ncnn",), companions=("{stem}.ncnn.bin",), contract_in_file=False),
    "executorch": DeviceFormat("executorch", ".pte", ("executorch",), contract_in_file=False),
}


def device_format_of(path: str) -> DeviceFormat | None:
    """The format of a model file, from its suffix (the longest that matches: ``.ncnn.param``);
    ``None`` when no runtime here opens it."""
    name = path.lower()
    return next((f for f in sorted(DEVICE_FORMATS.values(), key=lambda f: -len(f.suffix)) if name.endswith(f.suffix)), None)


def artifact_files(path: str) -> list[str]:
    """The primary file and those of its companions that exist: what travels with it."""
    fmt = device_format_of(path)
    extra = [p for p in fmt.companion_paths(path) if os.path.exists(p)] if fmt else []
    return [path, *extra]


def model_bytes(path: str) -> int:
    """The model's size: the primary file and its companions, not the contract sidecar."""
    fmt = device_format_of(path)
    extra = fmt.companion_paths(path)[: len(fmt.companions)] if fmt else []
    return sum(os.path.getsize(p) for p in [path, *extra] if os.path.exists(p))


def model_suffixes() -> tuple[str, ...]:
    return tuple(f.suffix for f in DEVICE_FORMATS.values())
