"""The ncnn runtime: a ``.ncnn.param`` graph with its ``.ncnn.bin`` weights beside it.

ncnn's defaults depend on the CPU: on ARM cores with float16 arithmetic (ARMv8.2,
e.g. the Pi 5's Cortex-A76) it stores activations in float16 and computes in float16
unless told otherwise, so an FP32 file would silently run at lower precision there.
Every option that changes what is computed is therefore set from the file's own
precision: FP32 and INT8 files run with float16 and bfloat16 storage off (INT8 layers
in int8, the rest in float32); FP16 files keep ncnn's defaults, i.e. float16 storage
and arithmetic where the CPU has them. On x86 and on the Pi 4's Cortex-A72 (ARMv8.0)
ncnn widens FP16 weights to float32 at load and computes in float32 (measured: the
FP16 file gives the same probabilities on x86 and on an emulated Cortex-A72). Threads are ``opt.num_threads``; light mode frees intermediate blobs as
soon as they are consumed; Vulkan is never used (a Pi has no Vulkan compute worth it).

The contract is a sidecar, ``<file>.ncnn.param.json``. numpy and ncnn only: the Pi
runner imports it.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..backend import Backend, ModelLoadError
from ..contract import Contract
from .spec import DeviceFormat, Runtime


def import_ncnn() -> Any:
    try:
        import ncnn
    except ImportError as exc:
        raise ModelLoadError(f"the ncnn runtime is not installed: {RUNTIMES[0].install}") from exc
    return ncnn


def weights_path(path: str) -> str:
    """``m_fp32.ncnn.param`` -> ``m_fp32.ncnn.bin`` (the format's first companion)."""
    return FORMATS[0].companion_paths(path)[0]


def configure(opt: Any, threads: int | None, precision: str) -> None:
    """The options that decide threads and numerics, set before the graph is loaded."""
    opt.use_vulkan_compute = False
    opt.lightmode = True
    if threads:
        opt.num_threads = int(threads)
    if precision != "fp16":  # FP32 and INT8 files: no float16/bfloat16 storage anywhere
        opt.use_fp16_storage = False
        opt.use_fp16_packed = False
        opt.use_fp16_arithmetic = False
        opt.use_bf16_storage = False


class NcnnBackend(Backend):
    format = "ncnn"
    runtime_name = "ncnn"

    def __init__(self, path: str, threads: int | None = None, contract: Contract | None = None, read_contract: bool = True) -> None:
        ncnn = import_ncnn()
        if contract is None and read_contract:
            contract = FORMATS[0].read_contract(path)  # this format's row: where its files keep the contract
        super().__init__(path, contract)
        bin_path = weights_path(path)
        if not os.path.exists(bin_path):
            raise ModelLoadError(f"{path}: its weights file {os.path.basename(bin_path)} is missing; copy it beside the .ncnn.param")
        self.net = ncnn.Net()
        configure(self.net.opt, threads, contract.precision if contract is not None else "fp32")
        if self.net.load_param(path) != 0 or self.net.load_model(bin_path) != 0:
            raise ModelLoadError(f"{path}: not a loadable ncnn model (load_param/load_model failed; is {os.path.basename(bin_path)} its weights file?)")
        self.runtime = f"ncnn {ncnn.__version__}"
        self._mat = ncnn.Mat
        names_in, names_out = list(self.net.input_names()), list(self.net.output_names())
        if not names_in or not names_out:
            raise ModelLoadError(f"{path}: the ncnn graph names no input or no output blob")
        if contract is not None:
            self.input_name, self.output_name = contract.input.name, contract.output.name
            self.input_shape = tuple(contract.input.shape)
            self.output_shape = tuple(contract.output.shape)
        else:  # a foreign file: ncnn graphs carry no shapes
            self.input_name, self.output_name = names_in[0], names_out[0]
            self.input_shape, self.output_shape = (1, -1, -1, -1), (1, -1)
        if self.input_name not in names_in or self.output_name not in names_out:
            raise ModelLoadError(f"{path}: contract names blobs {self.input_name!r} -> {self.output_name!r}, the graph has "
                                 f"{names_in} -> {names_out}")
        self.layout = "NCHW"
        self.check_contract()

    @property
    def fixed_batch(self) -> int | None:
        return 1  # an ncnn extractor takes one image (C x H x W)

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        ex = self.net.create_extractor()
        ex.input(self.input_name, self._mat(np.ascontiguousarray(prepared[0])))
        ret, out = ex.extract(self.output_name)
        if ret != 0:
            raise RuntimeError(f"ncnn extract({self.output_name!r}) failed with code {ret}")
        return np.array(out, dtype=np.float32).reshape(1, -1)


# two-part suffix: a bare .param/.bin pair would collide with OpenVINO's <stem>.bin
FORMATS = (DeviceFormat("ncnn", ".ncnn.param", companions=("{stem}.ncnn.bin",), contract_in_file=False),)
RUNTIMES = (
    Runtime("ncnn", "ncnn", "pip install ncnn",
            "Tencent ncnn on the CPU: light mode, no Vulkan, fp16 storage only for FP16 files", opens=("ncnn",),
            open=lambda path, threads, contract=None: NcnnBackend(path, threads, contract), install_flag="--ncnn",
            needed_for="running ncnn .ncnn.param/.ncnn.bin artifacts"),
)
