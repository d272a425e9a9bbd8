"""The export formats table, read by ``edgecxr convert``, ``bench``, ``eval``, ``explain``
and ``debug-quant`` (in the spirit of Ultralytics' ``export_formats()``).

Each row is one folder (``onnx/``, ``tflite/``: the row in its ``__init__.py``, the code that
produces the format beside it) whose
:class:`~edgecxr.convert.formats.base.ExportFormat` carries the format's behaviour;
adding a format is writing such a folder and listing it in ``FORMATS`` below (a plugin
calls :func:`register`); a new suffix or runtime is one module of the device's runtime
table (``device/runtimes/``), which the Pi reads. The first row is the PyTorch
checkpoint (``checkpoint/``): convert's input, never its output, but read
through the same behaviour (contract, graph statistics) as every export, so nothing
tests for ``.pt``. The table order is the order convert produces and tables show. Artifact names
are ``<arch>_<precision><suffix>`` (``mobilenet_v2_int8.tflite``);
:func:`parse_artifact_name` reverses them, which is how bench finds an export folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from edgecxr.convert.formats import checkpoint, executorch, ncnn, onnx, openvino, tflite
from edgecxr.convert.formats.base import PRECISIONS, ExportFormat, Production
from edgecxr.device.formats import by_suffix
from edgecxr.errors import EdgecxrError

FORMATS: list[ExportFormat] = [checkpoint.FORMAT, onnx.FORMAT, tflite.FORMAT, openvino.FORMAT, ncnn.FORMAT, executorch.FORMAT]
CHECKPOINT = checkpoint.FORMAT

__all__ = ["CHECKPOINT", "FORMATS", "PRECISIONS", "ArtifactName", "ExportFormat", "Production", "artifact_name", "check_precision",
           "export_formats", "find_artifacts", "format_of", "get_format", "parse_artifact_name", "parse_formats", "register"]


def register(fmt: ExportFormat) -> None:
    """Add a format at run time (a plugin, or a test's demonstration format)."""
    if any(f.name == fmt.name for f in FORMATS):
        raise EdgecxrError(f"format {fmt.name!r} is already registered")
    FORMATS.append(fmt)


def format_names() -> tuple[str, ...]:
    """What ``--formats`` accepts: the formats convert writes."""
    return tuple(f.name for f in export_formats())


def export_formats() -> tuple[ExportFormat, ...]:
    """The formats convert writes (every row but the checkpoint), in the order it produces them."""
    return tuple(f for f in FORMATS if not f.source)


def get_format(name: str) -> ExportFormat:
    for f in FORMATS:
        if f.name == name and not f.source:
            return f
    raise EdgecxrError(f"unknown format {name!r}; choose from {', '.join(format_names())}")


def format_of(path: str) -> ExportFormat | None:
    """The row a file belongs to, the checkpoint's included (``None`` for foreign files); the
    longest matching suffix wins, so two-part suffixes (``.ncnn.param``) work."""
    return by_suffix(path, FORMATS, lambda f: f.suffixes)


def parse_formats(text: str) -> tuple[ExportFormat, ...]:
    """``"onnx,tflite"`` -> rows of the table, table order, duplicates dropped."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not names:
        raise EdgecxrError(f"--formats {text!r}: name at least one of {', '.join(format_names())}")
    wanted = {get_format(n).name for n in names}
    return tuple(f for f in FORMATS if f.name in wanted)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise EdgecxrError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return precision


def artifact_name(arch: str, fmt: str, precision: str) -> str:
    """``artifact_name("mobilenet_v2", "tflite", "int8") == "mobilenet_v2_int8.tflite"``."""
    return get_format(fmt).artifact_name(arch, check_precision(precision))


@dataclass(frozen=True)
class ArtifactName:
    arch: str
    format: str
    precision: str


def parse_artifact_name(path: str) -> ArtifactName | None:
    """Reverse of :func:`artifact_name`; ``None`` for files convert did not name."""
    base = os.path.basename(path)
    fmt = format_of(base)
    if fmt is None or fmt.source:
        return None
    stem = base[: -len(fmt.suffix)]
    if "_" not in stem:
        return None
    arch, precision = stem.rsplit("_", 1)
    if precision not in fmt.precisions or not arch:
        return None
    return ArtifactName(arch, fmt.name, precision)


def find_artifacts(folder: str) -> list[tuple[str, ArtifactName]]:
    """Convert's artifacts in ``folder``, in table order then precision order."""
    if not os.path.isdir(folder):
        raise EdgecxrError(f"{folder}: export folder not found; run `edgecxr convert CKPT --out {folder}` first")
    found = []
    for name in os.listdir(folder):
        parsed = parse_artifact_name(name)
        if parsed is not None and not name.startswith("."):
            found.append((os.path.join(folder, name), parsed))
    order = {f.name: i for i, f in enumerate(FORMATS)}
    found.sort(key=lambda p: (p[1].arch, order[p[1].format], PRECISIONS.index(p[1].precision)))
    return found
