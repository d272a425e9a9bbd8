"""Which files to benchmark, what each one is, and which FP32 model it is judged against.

Export folders are read through ``convert/formats.py`` (``find_artifacts``), so a
format added there is benchmarked without a change here. Any other model file in a
folder, or named on the command line, is benchmarked too: without a contract it is
a foreign model (latency and size only, accuracy n/a), never an error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from edgecxr.device.contract import CONTRACT_KEY, Contract, ContractError, read_sidecar
from edgecxr.errors import EdgecxrError
from edgecxr.runtime import MODEL_SUFFIXES

FORMAT_ORDER = ("pytorch", "onnx", "tflite")
PRECISION_ORDER = ("fp32", "fp16", "int8")


@dataclass
class Artifact:
    path: str
    format: str  # pytorch | onnx | tflite
    precision: str  # fp32 | fp16 | int8 | ? (foreign)
    arch: str  # from the contract, else the file stem
    contract: Contract | None
    contract_error: str | None = None
    size_bytes: int = 0
    reference: "Artifact | None" = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def has_contract(self) -> bool:
        return self.contract is not None


def format_of(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in (".pt", ".pth"):
        return "pytorch"
    try:
        from edgecxr.convert.formats import format_for_path
    except ImportError:  # convert stage not built in this checkout
        return ext.lstrip(".")
    fmt = format_for_path(path)
    return fmt.name if fmt is not None else ext.lstrip(".")


def read_contract(path: str) -> Contract | None:
    """The contract without starting a runtime (the parent process stays light)."""
    fmt = format_of(path)
    if fmt == "pytorch":
        from edgecxr.checkpoint import load_checkpoint
        from edgecxr.checkpoint import read_contract as ckpt_contract

        return ckpt_contract(load_checkpoint(path), path)
    if fmt == "onnx":
        import onnx

        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as exc:  # protobuf errors for a truncated or foreign file
            raise ContractError(f"not a readable ONNX file ({type(exc).__name__})") from exc
        meta = {p.key: p.value for p in model.metadata_props}
        if CONTRACT_KEY in meta:
            return Contract.from_json(meta[CONTRACT_KEY])
        return read_sidecar(path)
    return read_sidecar(path)


def describe(path: str) -> Artifact:
    fmt = format_of(path)
    contract, error = None, None
    try:
        contract = read_contract(path)
    except (ContractError, EdgecxrError) as exc:
        error = str(exc).splitlines()[0]
    if contract is not None:
        arch, precision = contract.arch, contract.precision
    else:
        arch, precision = os.path.splitext(os.path.basename(path))[0], "?"
        try:
            from edgecxr.convert.formats import parse_artifact_name

            parsed = parse_artifact_name(path)
            if parsed is not None:
                precision = parsed.precision
        except ImportError:
            pass
    return Artifact(os.path.abspath(path), fmt, precision, arch, contract, error, os.path.getsize(path))


def _folder_models(folder: str) -> list[str]:
    """Convert's artifacts in table order, then any other model files, sorted."""
    named: list[str] = []
    try:
        from edgecxr.convert.formats import find_artifacts

        named = [p for p, _ in find_artifacts(folder)]
    except ImportError:
        pass
    others = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                    if f.lower().endswith(MODEL_SUFFIXES) and not f.startswith(".") and os.path.join(folder, f) not in named)
    return named + others


def collect(paths: list[str]) -> list[Artifact]:
    """Expand folders, keep command-line order, drop duplicates."""
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = _folder_models(p)
            if not found:
                raise EdgecxrError(f"{p}: no model files (.pt, .onnx, .tflite) in this folder; run `edgecxr convert CKPT --out {p}` first")
            files.extend(found)
        elif os.path.isfile(p):
            if not p.lower().endswith(MODEL_SUFFIXES):
                raise EdgecxrError(f"{p}: not a model file; expected one of {', '.join(MODEL_SUFFIXES)} or an export folder")
            files.append(p)
        else:
            raise EdgecxrError(f"{p}: no such file or folder")
    seen: set[str] = set()
    out = []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            out.append(describe(f))
    return out


def assign_references(artifacts: list[Artifact], reference: Artifact | None = None) -> None:
    """Pair each contract model with an FP32 model of the same architecture and classes.

    ``--reference`` wins. Otherwise the FP32 model among the benchmarked files with
    the same arch and classes, ONNX first (it is the export every other artifact is
    converted from), then TFLite, then the checkpoint. An FP32 artifact is its own
    reference only if nothing else is (then its delta is 0 by construction).
    """
    for a in artifacts:
        if a.contract is None:
            continue
        if reference is not None:
            if reference.contract is not None and tuple(reference.contract.classes) == tuple(a.contract.classes):
                a.reference = reference
            continue
        candidates = [b for b in artifacts if b.contract is not None and b.precision == "fp32" and b.arch == a.arch
                      and tuple(b.contract.classes) == tuple(a.contract.classes)]
        candidates.sort(key=lambda b: ({"onnx": 0, "tflite": 1, "pytorch": 2}.get(b.format, 3)))
        if candidates:
            a.reference = candidates[0]


def sort_key(a: Artifact) -> tuple[Any, ...]:
    return (a.contract is None, a.arch, FORMAT_ORDER.index(a.format) if a.format in FORMAT_ORDER else 9,
            PRECISION_ORDER.index(a.precision) if a.precision in PRECISION_ORDER else 9, a.name)
