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
from edgecxr.device.contract import Contract
from edgecxr.device.formats import format_of, model_suffixes
from edgecxr.errors import EdgecxrError

TORCH_FORMAT = "pytorch"  # the checkpoint's row of the device's table (device/runtimes/pytorch_checkpoint.py)


def known_suffixes() -> tuple[str, ...]:
    """Every suffix of the formats table, the checkpoint's included (read at call time: a
    format registered later counts)."""
    return model_suffixes(all_rows=True)


def is_checkpoint(path: str) -> bool:
    fmt = format_of(path)
    return fmt is not None and fmt.name == TORCH_FORMAT


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
               runtime: str | None = None, contract: Contract | None = None) -> Backend:
    """Open any supported model file; errors are :class:`EdgecxrError` one-liners.

    ``runtime`` picks one of the runtimes that open the file's format (default: the
    first). ``check_cpu=False`` opens a file even where its contract says it computes
    wrong results (convert's verification, which must measure exactly that). ``contract``
    replaces the stored one (convert verifies with the contract it writes after).
    """
    if format_of(path) is None:
        ext = os.path.splitext(path)[1].lower()
        raise EdgecxrError(f"{path}: unknown model type {ext or '(none)'}; expected one of {', '.join(known_suffixes())}")
    if is_checkpoint(path):
        if runtime not in (None, "torch"):
            raise EdgecxrError(f"{path}: a checkpoint runs on torch, not {runtime!r}")
        return TorchBackend(path, threads)
    try:
        return open_backend(path, threads, require_contract=require_contract, check_cpu=check_cpu, runtime=runtime, contract=contract)
    except ModelLoadError as exc:
        raise EdgecxrError(str(exc)) from exc


def runtimes_for(path: str) -> tuple[str, ...]:
    """The runtimes that can open ``path`` (the default first); checkpoints run on torch."""
    if is_checkpoint(path):
        return ("torch",)
    fmt = format_of(path)
    return fmt.runtimes if fmt else ()
