"""The OpenVINO runtime: OpenVINO IR (``.xml`` + ``.bin``) and, as a second runtime for
the same files, ONNX.

Every setting that changes what is computed or how many cores compute it is set
explicitly, because OpenVINO's defaults depend on the CPU: on CPUs with AVX512_BF16
or AMX (the Zen 4 EPYC here reports ``INFERENCE_PRECISION_HINT`` bfloat16 by
default) and on ARM (float16) an FP32 file would silently run at lower precision.
f32 inference precision makes a file compute what its name says everywhere (an FP16
IR stores its weights in float16 and computes in f32). ``INFERENCE_NUM_THREADS``,
one stream and the latency hint make 1 and 2 threads mean one and two cores working
on one image, as for ONNX Runtime and LiteRT.

The contract is read from the model's own ``rt_info``: an IR written by ``edgecxr
convert`` keeps it under ``edgecxr_contract``; an ONNX file's ``metadata_props``
appear under ``framework``. numpy and openvino only: the Pi runner imports it.
"""
from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np

from ..backend import Backend, ModelLoadError
from ..contract import CONTRACT_KEY, Contract, ContractError, read_sidecar
from .spec import DeviceFormat, Runtime

# No thread pinning (OpenVINO's Linux default pins): ONNX Runtime with explicit threads and
# LiteRT leave placement to the OS, and on a shared host a pinned thread cannot move off a busy
# core (measured under load, MobileNetV2 1 thread: median 59 ms pinned vs 49 ms unpinned).
COMPILE_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": "NO"}


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise ModelLoadError(f"the openvino runtime is not installed: {RUNTIMES[0].install}") from exc
    return openvino


def rt_info_contract(model: Any) -> Contract | None:
    """The contract in an OpenVINO model's ``rt_info`` (IR: top level; ONNX: under ``framework``)."""
    for key in ([CONTRACT_KEY], ["framework", CONTRACT_KEY]):
        if model.has_rt_info(key):
            return Contract.from_json(model.get_rt_info(key).astype(str))
    return None


def _dims(partial_shape: Any) -> tuple[int, ...]:
    return tuple(d.get_length() if d.is_static else -1 for d in partial_shape)


class OpenVINOBackend(Backend):
    runtime_name = "openvino"

    def __init__(self, path: str, threads: int | None = None, contract: Contract | None = None, read_contract: bool = True) -> None:
        ov = import_openvino()
        core = ov.Core()
        try:
            model = core.read_model(path)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for bad or half-copied files
            raise ModelLoadError(f"{path}: not a model OpenVINO can read ({str(exc).splitlines()[0][:160]})") from exc
        if contract is None and read_contract:
            contract = rt_info_contract(model) or read_sidecar(path)  # IR or ONNX: in the model; else a sidecar
        super().__init__(path, contract)
        self.format = "onnx" if path.lower().endswith(".onnx") else "openvino"
        config: dict[str, Any] = dict(COMPILE_CONFIG)
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # an op the CPU plugin lacks, an unsupported precision
            raise ModelLoadError(f"{path}: OpenVINO could not compile it for the CPU ({str(exc).splitlines()[0][:160]})") from exc
        self.request = self.compiled.create_infer_request()
        self.runtime = f"openvino {ov.__version__.split('-')[0]}"
        inp, out = self.compiled.input(0), self.compiled.output(0)
        self.input_shape = _dims(inp.get_partial_shape())
        self.output_shape = _dims(out.get_partial_shape())
        self.input_dtype = np.dtype(inp.get_element_type().to_dtype()).name
        self.layout = (contract.input.layout if contract is not None else None) or "NCHW"
        self.check_contract()

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        try:
            self.request.infer({0: prepared})
        except RuntimeError as exc:  # the CPU plugin builds kernels lazily: a CPU it cannot serve fails here, not at load
            last = [line for line in str(exc).splitlines() if line.strip()][-1:] or [type(exc).__name__]
            raise ModelLoadError(f"{self.path}: OpenVINO cannot run it on this CPU ({last[0][:200]})") from exc
        return self.request.get_output_tensor(0).data.copy()


def bin_path(xml_path: str) -> str:
    return os.path.splitext(xml_path)[0] + ".bin"


def read_ir_contract(path: str) -> Contract | None:
    """From the ``.xml``'s ``rt_info`` with the standard library's XML parser (no runtime)."""
    try:
        entry = ET.parse(path).getroot().find(f"rt_info/{CONTRACT_KEY}")
    except ET.ParseError as exc:
        raise ContractError(f"not a readable OpenVINO IR file ({exc})") from exc
    return Contract.from_json(entry.get("value", "")) if entry is not None else None


def save_ir(model: Any, contract: Contract | None, dest: str, compress_to_fp16: bool = False) -> None:
    """Write ``.bin`` then ``.xml`` by rename from a temporary folder beside them: a half-written
    pair never appears under the artifact's name (the ``.xml`` is what is looked for)."""
    ov = import_openvino()
    if contract is not None:
        model.set_rt_info(contract.to_json(), CONTRACT_KEY)
    folder = os.path.dirname(os.path.abspath(dest))
    with tempfile.TemporaryDirectory(prefix=".openvino-work-", dir=folder) as tmp:
        xml = os.path.join(tmp, "model.xml")
        ov.save_model(model, xml, compress_to_fp16=compress_to_fp16)
        os.replace(os.path.join(tmp, "model.bin"), bin_path(dest))
        os.replace(xml, dest)


def write_ir_contract(path: str, contract: Contract) -> None:
    """Rewrites the IR with the new ``rt_info`` (weights unchanged, stored as they were)."""
    if not os.path.exists(bin_path(path)):
        raise ContractError(f"its weights file {os.path.basename(bin_path(path))} is missing")
    save_ir(import_openvino().Core().read_model(path), contract, path)


FORMATS = (DeviceFormat("openvino", ".xml", companions=("{stem}.bin",), read=read_ir_contract, write=write_ir_contract),)
RUNTIMES = (
    Runtime("openvino", "openvino", "pip install openvino",
            "OpenVINO CPU plugin: f32 inference precision, latency hint, one stream", opens=("openvino", "onnx"),
            open=lambda path, threads, contract=None: OpenVINOBackend(path, threads, contract), install_flag="--openvino",
            needed_for="running OpenVINO .xml/.bin artifacts (and .onnx with --runtime openvino)"),
)
