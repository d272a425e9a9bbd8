"""``open_model``: one interface over PyTorch checkpoints, ONNX and TFLite files.

eval, bench, explain and convert's verification all go through here, so a model is
judged by the same code whatever its format. The ONNX/TFLite logic lives in
``device/backends.py`` (the Pi needs it without torch); this adds the torch backend.
"""
from __future__ import annotations

import os

import numpy as np

from edgecxr.device.backends import Backend, ModelLoadError, open_backend
from edgecxr.errors import EdgecxrError

MODEL_SUFFIXES = (".pt", ".pth", ".onnx", ".tflite")


class TorchBackend(Backend):
    format = "pytorch"

    def __init__(self, path: str, threads: int | None = None) -> None:
        import torch

        from edgecxr.models import load_model

        if threads:
            torch.set_num_threads(int(threads))
        self.model, contract = load_model(path)
        super().__init__(path, contract)
        self.runtime = f"torch {torch.__version__}"
        self.input_shape = tuple(contract.input.shape)
        self.output_shape = tuple(contract.output.shape)

    @property
    def fixed_batch(self) -> int | None:
        return None

    def prepare(self, x: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def invoke(self, prepared) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(prepared).numpy()


def open_model(path: str, threads: int | None = None, require_contract: bool = True, check_cpu: bool = True) -> Backend:
    """Open any supported model file; errors are :class:`EdgecxrError` one-liners.

    ``check_cpu=False`` opens a file even where its contract says it computes wrong
    results (convert's verification, which must measure exactly that).
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in MODEL_SUFFIXES:
        raise EdgecxrError(f"{path}: unknown model type {ext or '(none)'}; expected one of {', '.join(MODEL_SUFFIXES)}")
    if ext in (".pt", ".pth"):
        return TorchBackend(path, threads)
    try:
        return open_backend(path, threads, require_contract=require_contract, check_cpu=check_cpu)
    except ModelLoadError as exc:
        raise EdgecxrError(str(exc)) from exc
