"""ONNX Runtime, CPU execution provider: the default runtime for ``.onnx`` files.

Threads: ``intra_op_num_threads`` with one inter-op thread and sequential execution,
so 1 and 2 threads mean one and two cores working on one image, as for LiteRT. The
contract is embedded in the file's ``metadata_props``. numpy and onnxruntime only:
the Pi runner imports it.
"""
from __future__ import annotations

import numpy as np

from ..backend import Backend, ModelLoadError
from ..contract import Contract, contract_in_onnx_metadata, read_onnx_contract, write_onnx_contract
from .spec import DeviceFormat, Runtime


class OnnxBackend(Backend):
    format = "onnx"
    runtime_name = "onnxruntime"

    def __init__(self, path: str, threads: int | None = None, contract: Contract | None = None, read_contract: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelLoadError("running .onnx models needs onnxruntime: pip install onnxruntime") from exc
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ModelLoadError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:160]})") from exc
        if contract is None and read_contract:
            # the session already parsed the file: its metadata, not a second parse of a large graph
            contract = contract_in_onnx_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        super().__init__(path, contract)
        self.runtime = f"onnxruntime {ort.__version__}"
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in inp.shape)
        self.output_shape = tuple(d if isinstance(d, int) else -1 for d in out.shape)
        self.input_dtype = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}.get(inp.type, inp.type)
        if contract is not None:
            self.layout = contract.input.layout or "NCHW"
            if contract.input.is_quantized:
                self.input_quant = (float(contract.input.scale), int(contract.input.zero_point or 0))
            if contract.output.is_quantized:
                self.output_quant = (float(contract.output.scale), int(contract.output.zero_point or 0))
        else:
            self.layout = "NHWC" if len(self.input_shape) == 4 and self.input_shape[-1] in (1, 3) else "NCHW"
        self.check_contract()

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: prepared})[0]


FORMATS = (DeviceFormat("onnx", ".onnx", read=read_onnx_contract, write=write_onnx_contract),)
RUNTIMES = (
    Runtime("onnxruntime", "onnxruntime", "pip install onnxruntime", "ONNX Runtime, CPU execution provider", opens=("onnx",),
            open=lambda path, threads, contract=None: OnnxBackend(path, threads, contract), install_flag="--onnx", needed_for="running .onnx artifacts"),
)
