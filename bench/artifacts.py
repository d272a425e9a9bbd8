"""Which files to benchmark, what each one is, and which FP32 model it is judged against.

Export folders are read through the formats table (``convert/formats``:
``find_artifacts``) and every file through the device's one door (``device/formats.py``:
its format row and its contract), so a format added there is benchmarked without a
change here. Any other model file in a
folder, or named on the command line, is benchmarked too: without a contract it is
a foreign model (latency and size only, accuracy n/a), never an error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from edgecxr.convert.formats import FORMATS, PRECISIONS, find_artifacts, parse_artifact_name
from edgecxr.device.contract import Contract, ContractError
from edgecxr.device.formats import format_of, model_bytes
from edgecxr.device.formats import read_contract as stored_contract
from edgecxr.errors import EdgecxrError
from edgecxr.models.runtime import known_suffixes


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

    @property
    def files(self) -> list[str]:
        """The primary file and its companions (a sidecar, a weights file): what travels with it."""
        from edgecxr.device.formats import artifact_files

        return artifact_files(self.path)


def format_name(path: str) -> str:
    """The table's format name (``pytorch`` for checkpoints), or the bare suffix of a foreign file."""
    fmt = format_of(path)
    return fmt.name if fmt is not None else os.path.splitext(path)[1].lower().lstrip(".")


def read_contract(path: str) -> Contract | None:
    """The contract without starting a runtime (the parent process stays light); ``None`` for a foreign file."""
    return stored_contract(path) if format_of(path) is not None else None


def describe(path: str) -> Artifact:
    fmt = format_name(path)
    contract, error = None, None
    try:
        contract = read_contract(path)
    except (ContractError, EdgecxrError) as exc:
        error = str(exc).splitlines()[0]
    if contract is not None:
        arch, precision = contract.arch, contract.precision
    else:
        arch, precision = os.path.splitext(os.path.basename(path))[0], "?"
        parsed = parse_artifact_name(path)
        if parsed is not None:
            precision = parsed.precision
    return Artifact(os.path.abspath(path), fmt, precision, arch, contract, error, model_bytes(path))


def _folder_models(folder: str) -> list[str]:
    """Convert's artifacts in table order, then any other model files, sorted."""
    named = [p for p, _ in find_artifacts(folder)]
    others = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                    if format_of(f) is not None and not f.startswith(".") and os.path.join(folder, f) not in named)
    return named + others


def collect(paths: list[str]) -> list[Artifact]:
    """Expand folders, keep command-line order, drop duplicates."""
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = _folder_models(p)
            if not found:
                raise EdgecxrError(f"{p}: no model files ({', '.join(known_suffixes())}) in this folder; run `edgecxr convert CKPT --out {p}` first")
            files.extend(found)
        elif os.path.isfile(p):
            if format_of(p) is None:
                raise EdgecxrError(f"{p}: not a model file; expected one of {', '.join(known_suffixes())} or an export folder")
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
        candidates.sort(key=lambda b: _format_rank(b.format, checkpoint_last=True))
        if candidates:
            a.reference = candidates[0]


def _format_rank(name: str, checkpoint_last: bool = False) -> int:
    """Table order (the checkpoint is its first row); ``checkpoint_last``: the source row after the
    exports, where it serves as a reference (exports are what ship)."""
    rows = {f.name: f for f in FORMATS}
    if name not in rows:
        return len(rows) + 1
    return len(rows) if (checkpoint_last and rows[name].source) else list(rows).index(name)


def sort_key(a: Artifact) -> tuple[Any, ...]:
    return (a.contract is None, a.arch, _format_rank(a.format),
            PRECISIONS.index(a.precision) if a.precision in PRECISIONS else 9, a.name)
