"""LiteRT (the TFLite interpreter): the default runtime for ``.tflite`` files, and the
device's one required runtime.

Two runtimes share this backend: ``litert`` with the interpreter's default XNNPACK
delegate, and ``litert-builtin`` with its built-in kernels only, which is what a
delegate-less build runs (and, for INT8, computes differently). The interpreter comes
from ai-edge-litert (numpy 2, aarch64 wheels), else tflite-runtime, else TensorFlow.
The contract is the sidecar ``<file>.tflite.json``. numpy and an interpreter only.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Backend, ModelLoadError, np_dtype_name
from ..contract import Contract
from .spec import DeviceFormat, Runtime


def import_interpreter() -> tuple[Any, str]:
    """ai-edge-litert first (numpy 2, aarch64 wheels), then tflite-runtime, then TF."""
    try:
        from importlib.metadata import version

        from ai_edge_litert import interpreter as mod

        return mod.Interpreter, f"ai-edge-litert {version('ai-edge-litert')}"
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime import interpreter as mod  # type: ignore[no-redef]

        return mod.Interpreter, f"tflite-runtime {getattr(tflite_runtime, '__version__', '?')}"
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return tf.lite.Interpreter, f"tensorflow.lite {tf.__version__}"
    except ImportError as exc:
        raise ModelLoadError(
            "no TFLite interpreter found: pip install ai-edge-litert (or tflite-runtime with numpy<2)"
        ) from exc


class TFLiteBackend(Backend):
    """``builtin_kernels``: the interpreter's own kernels, no XNNPACK (runtime ``litert-builtin``)."""

    format = "tflite"

    def __init__(self, path: str, threads: int | None = None, contract: Contract | None = None, read_contract: bool = True,
                 builtin_kernels: bool = False) -> None:
        Interpreter, self.runtime = import_interpreter()
        self.runtime_name = "litert-builtin" if builtin_kernels else "litert"
        kwargs: dict[str, Any] = {}
        if builtin_kernels:
            try:
                from ai_edge_litert.interpreter import OpResolverType
            except ImportError as exc:
                raise ModelLoadError("runtime litert-builtin needs ai-edge-litert: pip install ai-edge-litert") from exc
            kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            self.runtime += " (built-in kernels, no XNNPACK)"
        try:
            self.interpreter = Interpreter(model_path=path, num_threads=int(threads) if threads else None, **kwargs)
            self.interpreter.allocate_tensors()
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError for bad files
            raise ModelLoadError(f"{path}: not a loadable TFLite model ({str(exc).splitlines()[0][:160]})") from exc
        if contract is None and read_contract:
            contract = FORMATS[0].read_contract(path)  # this format's row: where its files keep the contract
        super().__init__(path, contract)
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self.input_index, self.output_index = inp["index"], out["index"]
        self.input_shape = tuple(int(v) for v in inp["shape"])
        self.output_shape = tuple(int(v) for v in out["shape"])
        self.input_dtype = np_dtype_name(inp["dtype"])
        # quantization is read from the tensors themselves: the file is the truth
        if self.input_dtype in ("int8", "uint8") and inp["quantization"][0] != 0:
            self.input_quant = (float(inp["quantization"][0]), int(inp["quantization"][1]))
        if np_dtype_name(out["dtype"]) in ("int8", "uint8") and out["quantization"][0] != 0:
            self.output_quant = (float(out["quantization"][0]), int(out["quantization"][1]))
        if contract is not None:
            self.layout = contract.input.layout or "NHWC"
        else:
            self.layout = "NHWC" if len(self.input_shape) == 4 and self.input_shape[-1] in (1, 3) else "NCHW"
        self.check_contract()

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, prepared)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index)


FORMATS = (DeviceFormat("tflite", ".tflite", contract_in_file=False),)
RUNTIMES = (
    Runtime("litert", "ai_edge_litert", "pip install ai-edge-litert",
            "TFLite interpreter (ai-edge-litert, else tflite-runtime) with its default XNNPACK delegate", opens=("tflite",),
            open=lambda path, threads, contract=None: TFLiteBackend(path, threads, contract), fallbacks=("tflite_runtime.interpreter",),
            needed_for="running .tflite artifacts (required)"),
    Runtime("litert-builtin", "ai_edge_litert", "pip install ai-edge-litert",
            "TFLite interpreter with its built-in kernels only (no XNNPACK): what a delegate-less build runs", opens=("tflite",),
            open=lambda path, threads, contract=None: TFLiteBackend(path, threads, contract, builtin_kernels=True),
            needed_for="running .tflite artifacts without XNNPACK (same package as litert)"),
)
