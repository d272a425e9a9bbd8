"""The export formats table, shared by ``edgecxr convert`` and ``edgecxr bench``.

In the spirit of Ultralytics' ``export_formats()``: one row per deployable file
format, so that adding a format (or asking which runtime opens a file) never means
hunting through if/else chains in two commands. Artifact file names are derived
from the table too, ``<arch>_<precision><suffix>`` (``mobilenet_v2_int8.tflite``),
and :func:`parse_artifact_name` reverses that, which is how ``bench`` finds the
artifacts in an export folder.

This module is imported by other stages: keep names and fields stable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from edgecxr.errors import EdgecxrError

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class ExportFormat:
    """One deployable format.

    ``layout`` is the input layout of the files convert writes (onnx2tf transposes
    to NHWC); ``options`` documents how each precision is produced, and is copied
    into the convert report so a reader sees what was done without reading code.
    """

    name: str
    suffix: str
    precisions: tuple[str, ...]
    runtime: str
    layout: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)

    def artifact_name(self, arch: str, precision: str) -> str:
        return artifact_name(arch, self.name, precision)


FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat(
        name="onnx",
        suffix=".onnx",
        precisions=PRECISIONS,
        runtime="onnxruntime",
        layout="NCHW",
        description="ONNX opset 17, dynamic batch, simplified with onnxsim",
        options={
            "fp32": "torch.onnx.export(dynamo=False, opset 17) + onnxsim",
            "fp16": "onnxconverter-common float16, float32 inputs/outputs kept",
            "int8": "onnxruntime static QDQ, per-channel s8 weights, u8 activations (VNNI path), real calibration images",
        },
    ),
    ExportFormat(
        name="tflite",
        suffix=".tflite",
        precisions=PRECISIONS,
        runtime="litert",
        layout="NHWC",
        description="TFLite via onnx2tf (batch 1, NHWC); contract in a <file>.tflite.json sidecar",
        options={
            "fp32": "onnx2tf float32",
            "fp16": "onnx2tf float16 weights, float32 inputs/outputs",
            "int8": "full-integer (int8 input/output), per-channel, TFLiteConverter on onnx2tf's saved_model with the real calibration images",
        },
    ),
)

FORMAT_NAMES = tuple(f.name for f in FORMATS)


def export_formats() -> tuple[ExportFormat, ...]:
    """All formats, in the order convert produces them."""
    return FORMATS


def get_format(name: str) -> ExportFormat:
    for f in FORMATS:
        if f.name == name:
            return f
    raise EdgecxrError(f"unknown format {name!r}; choose from {', '.join(FORMAT_NAMES)}")


def format_for_path(path: str) -> ExportFormat | None:
    """The format a file belongs to, from its suffix (``None`` for checkpoints and others)."""
    ext = os.path.splitext(path)[1].lower()
    return next((f for f in FORMATS if f.suffix == ext), None)


def parse_formats(text: str) -> tuple[ExportFormat, ...]:
    """``"onnx,tflite"`` -> rows of the table, table order, duplicates dropped."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not names:
        raise EdgecxrError(f"--formats {text!r}: name at least one of {', '.join(FORMAT_NAMES)}")
    wanted = {get_format(n).name for n in names}
    return tuple(f for f in FORMATS if f.name in wanted)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise EdgecxrError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return precision


def artifact_name(arch: str, fmt: str, precision: str) -> str:
    """``artifact_name("mobilenet_v2", "tflite", "int8") == "mobilenet_v2_int8.tflite"``."""
    return f"{arch}_{check_precision(precision)}{get_format(fmt).suffix}"


@dataclass(frozen=True)
class ArtifactName:
    arch: str
    format: str
    precision: str


def parse_artifact_name(path: str) -> ArtifactName | None:
    """Reverse of :func:`artifact_name`; ``None`` for files convert did not name."""
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    fmt = format_for_path(base)
    if fmt is None or "_" not in stem:
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
