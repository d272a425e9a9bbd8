"""``open_model``: one interface over PyTorch checkpoints and every deployable format.

eval, bench, explain and convert's verification all go through here, so a model is
judged by the same code whatever its format and runtime. The runtimes of the
deployable formats live in ``device/`` (the Pi needs them without torch: its
``runtimes/`` table says which suffix is which format and which runtimes open
it); this adds the torch backend for checkpoints.
"""
from __future__ import annotations

import os

import numpy as np

from edgecxr.device.backends import Backend, ModelLoadError, open_backend
from edgecxr.device.formats import model_suffixes
from edgecxr.errors import EdgecxrError

CHECKPOINT_SUFFIXES = (".pt", ".pth")


def known_suffixes() -> tuple[str, ...]:
    """Checkpoints plus every suffix the device's formats table knows (read at call time:
    a format registered later counts)."""
    return CHECKPOINT_SUFFIXES + model_suffixes()


def is_checkpoint(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in CHECKPOINT_SUFFIXES


class TorchBackend(Backend):
    format = "pytorch"
    runtime_name = "torch"

    def __init__(self, path: str, threads: int | None = None) -> None:
        import torch

        from edgecxr.models.factory import load_model

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


def open_model(path: str, threads: int | None = None, require_contract: bool = True, check_cpu: bool = True,
               runtime: str | None = None) -> Backend:
    """Open any supported model file; errors are :class:`EdgecxrError` one-liners.

    ``runtime`` picks one of the runtimes that open the file's format (default: the
    first). ``check_cpu=False`` opens a file even where its contract says it computes
    wrong results (convert's verification, which must measure exactly that).
    """
    ext = os.path.splitext(path)[1].lower()
    if not path.lower().endswith(known_suffixes()):  # endswith: two-part suffixes such as .ncnn.param
        raise EdgecxrError(f"{path}: unknown model type {ext or '(none)'}; expected one of {', '.join(known_suffixes())}")
    if is_checkpoint(path):
        if runtime not in (None, "torch"):
            raise EdgecxrError(f"{path}: a checkpoint runs on torch, not {runtime!r}")
        return TorchBackend(path, threads)
    try:
        return open_backend(path, threads, require_contract=require_contract, check_cpu=check_cpu, runtime=runtime)
    except ModelLoadError as exc:
        raise EdgecxrError(str(exc)) from exc


def runtimes_for(path: str) -> tuple[str, ...]:
    """The runtimes that can open ``path`` (the default first); checkpoints run on torch."""
    from edgecxr.device.formats import device_format_of

    if is_checkpoint(path):
        return ("torch",)
    fmt = device_format_of(path)
    return fmt.runtimes if fmt else ()
