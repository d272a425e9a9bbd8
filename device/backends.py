"""One runtime interface for every runtime the device knows, numpy only.

Callers always hand over preprocessed float32 NCHW images (what
``preprocess.preprocess`` returns) and always get float32 logits back. Layout
(NCHW/NHWC) and integer quantization of the input and output are handled here from
the contract, so eval, bench, convert's verification and the Pi runner cannot
disagree about them. ``edgecxr.runtime`` adds a torch backend with the same methods.

Timing hooks: ``prepare`` does all input conversion up front, ``invoke`` runs the
model and nothing else, ``decode`` turns raw output into logits.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .contract import Contract, ContractError, check_matches, read_onnx_contract, read_sidecar
from .cpufeatures import cpu_description, unmet_requirement
from .decision import calibrated_probabilities
from .formats import DEVICE_FORMATS, device_format_of


class ModelLoadError(ValueError):
    """A model file that cannot be opened, with a one-line reason."""


class WrongCpuError(ModelLoadError):
    """A model whose contract says it computes wrong results on this CPU."""


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


def _np_dtype_name(dt: Any) -> str:
    return np.dtype(dt).name


class Backend:
    """Common logic: quantize/transposes in, dequantize out, batch-1 models looped.

    ``runtime_name`` is the key in ``formats.RUNTIMES`` (what a user selects);
    ``runtime`` is that runtime's name and version, for reports.
    """

    runtime = "?"
    runtime_name = "?"
    format = "?"

    def __init__(self, path: str, contract: Contract | None) -> None:
        self.path = path
        self.contract = contract

    # --- to be provided by subclasses -------------------------------------------------
    input_shape: tuple[int, ...] = ()
    input_dtype: str = "float32"
    input_quant: tuple[float, int] | None = None
    output_quant: tuple[float, int] | None = None
    layout: str = "NCHW"

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # --- shared -----------------------------------------------------------------------
    @property
    def fixed_batch(self) -> int | None:
        b = self.input_shape[0] if self.input_shape else None
        return int(b) if isinstance(b, (int, np.integer)) and b > 0 else None

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 (normalised) -> the model's own input tensor."""
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D NCHW batch, got shape {x.shape}")
        if self.layout == "NHWC":
            x = np.transpose(x, (0, 2, 3, 1))
        if self.input_quant is not None:
            scale, zp = self.input_quant
            info = np.iinfo(np.dtype(self.input_dtype))
            x = np.clip(np.round(x / scale) + zp, info.min, info.max)
        return np.ascontiguousarray(x.astype(np.dtype(self.input_dtype)))

    def decode(self, raw: np.ndarray) -> np.ndarray:
        if self.output_quant is not None:
            scale, zp = self.output_quant
            return ((raw.astype(np.float32) - zp) * scale).astype(np.float32)
        return raw.astype(np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch; models with a fixed batch of 1 are run image by image."""
        if self.fixed_batch == 1 and x.shape[0] != 1:
            return np.concatenate([self.predict(x[i : i + 1]) for i in range(x.shape[0])], axis=0)
        return self.decode(self.invoke(self.prepare(x))).reshape(x.shape[0], -1)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities: ``softmax(logits / T)`` with the contract's temperature
        (plain softmax where none was fitted); float64."""
        return calibrated_probabilities(self.predict(x), self.contract.decision if self.contract else None)

    def check_contract(self) -> None:
        if self.contract is not None:
            check_matches(self.contract, self.input_shape, self.input_dtype, self.output_shape)

    output_shape: tuple[int, ...] = ()


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
            contract = read_onnx_contract(path)
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
            contract = read_sidecar(path)
        super().__init__(path, contract)
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self.input_index, self.output_index = inp["index"], out["index"]
        self.input_shape = tuple(int(v) for v in inp["shape"])
        self.output_shape = tuple(int(v) for v in out["shape"])
        self.input_dtype = _np_dtype_name(inp["dtype"])
        # quantization is read from the tensors themselves: the file is the truth
        if self.input_dtype in ("int8", "uint8") and inp["quantization"][0] != 0:
            self.input_quant = (float(inp["quantization"][0]), int(inp["quantization"][1]))
        if _np_dtype_name(out["dtype"]) in ("int8", "uint8") and out["quantization"][0] != 0:
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


OPENERS: dict[str, Any] = {
    "onnxruntime": lambda path, threads: OnnxBackend(path, threads),
    "litert": lambda path, threads: TFLiteBackend(path, threads),
    "litert-builtin": lambda path, threads: TFLiteBackend(path, threads, builtin_kernels=True),
    "openvino": lambda path, threads: _openvino_backend(path, threads),
    "ncnn": lambda path, threads: _ncnn_backend(path, threads),
    "executorch": lambda path, threads: _executorch_backend(path, threads),
}


def _executorch_backend(path: str, threads: int | None) -> Backend:
    from .backend_executorch import ExecuTorchBackend  # its own module: it imports this one

    return ExecuTorchBackend(path, threads)


def _ncnn_backend(path: str, threads: int | None) -> Backend:
    from .backend_ncnn import NcnnBackend  # its own module: it imports this one

    return NcnnBackend(path, threads)


def _openvino_backend(path: str, threads: int | None) -> Backend:
    from .backend_openvino import OpenVINOBackend  # its own module: it imports this one

    return OpenVINOBackend(path, threads)


def open_backend(path: str, threads: int | None = None, require_contract: bool = False, check_cpu: bool = True,
                 runtime: str | None = None) -> Backend:
    """Open a model file with ``runtime`` (default: its format's first runtime).

    ``require_contract`` refuses files without a contract. ``check_cpu`` refuses a
    file whose contract names CPUs it is exact on when this CPU is not one of them (a
    full-range INT8 file on an x86 CPU without VNNI): a silently wrong answer is
    worse than none. Only verification turns it off, to measure how wrong such a
    file is.
    """
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: model file not found")
    fmt = device_format_of(path)
    if fmt is None:
        ext = os.path.splitext(path)[1].lower()
        known = ", ".join(f.suffix for f in DEVICE_FORMATS.values())
        raise ModelLoadError(f"{path}: unknown model type {ext or '(no extension)'}; expected one of {known}")
    name = runtime or fmt.runtimes[0]
    if name not in fmt.runtimes:
        raise ModelLoadError(f"{path}: runtime {name!r} does not open {fmt.name} files; choose one of {', '.join(fmt.runtimes)}")
    try:
        backend: Backend = OPENERS[name](path, threads)
    except ContractError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    if check_cpu and backend.contract is not None and backend.contract.target.get("valid_on"):  # probe the CPU only when it matters
        why = unmet_requirement(backend.contract.target, cpu_description(), backend.runtime)
        if why:
            raise WrongCpuError(f"{path}: {why}: its results would be wrong here; use the portable file (edgecxr convert --int8 --target portable)")
    if require_contract and backend.contract is None:
        raise ModelLoadError(
            f"{path}: model has no edgecxr contract (class names, preprocessing); "
            f"convert it with `edgecxr convert` or place its contract next to it as {os.path.basename(path)}.json"
        )
    return backend

