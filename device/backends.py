"""Opening a model file: pick its format from the suffix and its runtime from the table
(``runtimes/``), then refuse what would answer wrongly (a contract this CPU cannot
honour, a missing contract where one is required).

Re-exports the backend interface and the two core backends, which most callers import
from here.
"""
from __future__ import annotations

import os

from .backend import Backend, ModelLoadError, WrongCpuError
from .contract import Contract, ContractError
from .cpufeatures import cpu_description, unmet_requirement
from .formats import RUNTIMES, format_of, model_suffixes
from .runtimes.litert import TFLiteBackend, import_interpreter
from .runtimes.onnxruntime_cpu import OnnxBackend

__all__ = ["Backend", "ModelLoadError", "OnnxBackend", "TFLiteBackend", "WrongCpuError", "import_interpreter", "open_backend"]


def open_backend(path: str, threads: int | None = None, require_contract: bool = False, check_cpu: bool = True,
                 runtime: str | None = None, contract: Contract | None = None) -> Backend:
    """Open a model file with ``runtime`` (default: its format's first runtime).

    ``require_contract`` refuses files without a contract. ``check_cpu`` refuses a
    file whose contract names CPUs it is exact on when this CPU is not one of them (a
    full-range INT8 file on an x86 CPU without VNNI): a silently wrong answer is
    worse than none. Only verification turns it off, to measure how wrong such a
    file is. ``contract`` is used instead of the stored one: convert verifies a file with
    the contract it is about to write, and writes it once, after.
    """
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: model file not found")
    fmt = format_of(path)
    if fmt is not None and not fmt.runtimes:
        raise ModelLoadError(f"{path}: a {fmt.name} file: no runtime on this device runs it; convert it with `edgecxr convert`")
    if fmt is None:
        ext = os.path.splitext(path)[1].lower()
        known = ", ".join(model_suffixes())
        raise ModelLoadError(f"{path}: unknown model type {ext or '(no extension)'}; expected one of {known}")
    name = runtime or fmt.runtimes[0]
    if name not in fmt.runtimes:
        raise ModelLoadError(f"{path}: runtime {name!r} does not open {fmt.name} files; choose one of {', '.join(fmt.runtimes)}")
    try:
        backend: Backend = RUNTIMES[name].open(path, threads, **({"contract": contract} if contract is not None else {}))
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

