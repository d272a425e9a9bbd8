"""The ExecuTorch runtime: ``.pte`` programs (XNNPACK delegate) through the ``executorch``
pybindings, which exchange ``torch`` tensors and link libtorch, so ``torch`` must be
installed beside them: on a Pi, ``pip install executorch torch``.

The pybindings module is ``executorch.extension.pybindings._C``, the module that
``portable_lib`` and ``executorch.runtime.Runtime`` wrap. It is imported directly
because those wrappers import all of ``executorch.exir`` (the exporter) first: about
5 s of CPU on the x86 host here and far more on a Pi, for nothing the device uses.
``portable_lib`` is the fallback should ``_C`` move.

Threads: XNNPACK runs on ExecuTorch's one process-wide threadpool, whose size
(default: the number of performance cores) is set from Python by
``_unsafe_reset_threadpool(n)`` (experimental API in 1.5.x). It is set before the
program is loaded, since an XNNPACK runtime keeps the pool it was built with, and only
when the size changes. Being process-wide, the last model opened decides the size for
every program in the process; bench runs each artifact in its own process, so each
row's thread count is the one it asked for. Measured on a 2-core AMD EPYC (Zen 4):
with 2 threads the second thread does about half of the CPU work of each inference,
with 1 it does none (``tests/test_executorch.py``).

The contract is the sidecar ``<file>.pte.json``. numpy + torch + executorch only: the
Pi runner imports it.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..backend import Backend, ModelLoadError
from ..contract import Contract
from .spec import DeviceFormat, Runtime

# torch ScalarType codes in ExecuTorch's TensorInfo.dtype()
_SCALAR_TYPES = {0: "uint8", 1: "int8", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64"}


def import_executorch() -> tuple[Any, str]:
    """``(pybindings module, version)``, or a one-line :class:`ModelLoadError` naming the pip command."""
    try:
        import torch  # noqa: F401  (loads libtorch, which the pybindings link against)
        try:
            from executorch.extension.pybindings import _C as pybindings
        except ImportError:
            with warnings.catch_warnings():  # portable_lib warns "experimental API" on import; only that is hidden
                warnings.filterwarnings("ignore", message="This API is experimental")
                from executorch.extension.pybindings import portable_lib as pybindings
    except ImportError as exc:
        raise ModelLoadError(f"running .pte models needs the executorch runtime and torch: {RUNTIMES[0].install} "
                             f"({exc})") from exc
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("executorch")
    except PackageNotFoundError:
        ver = "?"
    return pybindings, ver


def set_threads(pybindings: Any, threads: int | None) -> int:
    """Size the process-wide XNNPACK threadpool (``None``: leave ExecuTorch's default); returns the size in use."""
    if threads and pybindings._threadpool_get_thread_count() != int(threads):
        pybindings._unsafe_reset_threadpool(int(threads))
    return int(pybindings._threadpool_get_thread_count())


class ExecuTorchBackend(Backend):
    format = "executorch"
    runtime_name = "executorch"

    def __init__(self, path: str, threads: int | None = None, contract: Contract | None = None, read_contract: bool = True) -> None:
        pybindings, ver = import_executorch()
        self.threads_in_use = set_threads(pybindings, threads)
        try:
            self.program = pybindings._load_program(path)  # kept: the method lives in the program
            self.method = self.program.load_method("forward")
        except Exception as exc:  # the pybindings raise RuntimeError/ValueError for bad or truncated files
            raise ModelLoadError(f"{path}: not a loadable ExecuTorch program ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})") from exc
        if self.method is None:
            raise ModelLoadError(f"{path}: the ExecuTorch program has no 'forward' method")
        if contract is None and read_contract:
            contract = FORMATS[0].read_contract(path)  # this format's row: where its files keep the contract
        super().__init__(path, contract)
        self.runtime = f"executorch {ver}"
        meta = self.method.method_meta()
        inp, out = meta.input_tensor_meta(0), meta.output_tensor_meta(0)
        self.input_shape = tuple(int(v) for v in inp.sizes())
        self.output_shape = tuple(int(v) for v in out.sizes())
        self.input_dtype = _SCALAR_TYPES.get(int(inp.dtype()), str(inp.dtype()))
        self.layout = (contract.input.layout if contract is not None else None) or "NCHW"
        self.check_contract()

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        import torch

        return self.method([torch.from_numpy(prepared)])[0].numpy()


FORMATS = (DeviceFormat("executorch", ".pte", contract_in_file=False),)
RUNTIMES = (
    Runtime("executorch", "executorch", "pip install executorch torch",
            "ExecuTorch runtime (pybindings) with the XNNPACK delegate; threadpool size set per process", opens=("executorch",),
            open=lambda path, threads, contract=None: ExecuTorchBackend(path, threads, contract), install_flag="--executorch",
            needed_for="running ExecuTorch .pte artifacts (pulls in torch: large on a Pi)"),
)
