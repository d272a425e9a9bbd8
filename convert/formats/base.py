"""What an export format is: one row of the table, carrying behaviour, not just names.

A format folder's ``__init__.py`` (``onnx/``, ``tflite/``) builds one
:class:`ExportFormat` from the device's row (``device/runtimes/``: suffix, runtimes,
companion files) plus what only the workstation does: how to produce each
precision, count parameters and MACs, and how it is drawn. Where its contract lives
and how it is read and written is the device row's (one door for a model file). ``convert``, ``bench``, ``eval``, ``explain`` and ``debug-quant`` ask the table
(``edgecxr.convert.formats``), never the file suffix.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecxr.device.contract import Contract
from edgecxr.device.formats import DEVICE_FORMATS, DeviceFormat

PRECISIONS = ("fp32", "fp16", "int8")
Stats = dict[str, Any]


@dataclass
class Production:
    """Everything a format's ``produce`` needs from one conversion (see ``convert/pipeline.py``)."""

    run: Any  # convert.steps.Run: do/skip/path/echo
    torch_model: Any
    contract: Contract
    versions: dict[str, str]
    source: dict[str, Any]
    int8_source: dict[str, Any]
    plain_target: dict[str, Any]  # contract "target" of files exact everywhere
    int8_target: Any  # convert.int8_target.Int8Target (ONNX Runtime's scheme)
    calib: Any = None  # convert.calibration set, or None without --int8
    calib_method: str = "minmax"
    keep_float: list[str] = field(default_factory=list)
    fp32_onnx: str | None = None  # the source artifact every other format is made from, once written
    accuracy_control: Any = None  # convert.accuracy_control.ControlJob with --accuracy-control, else None


@dataclass(frozen=True)
class Requirement:
    """A package a format needs to be produced: its import name, how to install it, for which precisions."""

    module: str
    install: str
    precisions: tuple[str, ...] = PRECISIONS


@dataclass(frozen=True)
class ExportFormat:
    device: DeviceFormat
    precisions: tuple[str, ...]
    layout: str  # input layout of the files convert writes
    description: str
    options: dict[str, str]  # how each precision is produced; copied into the convert report
    marker: str  # bench plot marker
    produce: Callable[[Production, dict[str, Any]], None]  # fills the Steps it is given, stages each file's contract
    graph_stats: Callable[[str], Stats]  # {"params", "macs", "stats_from", "weight_precision"}
    # Packages producing it needs beyond its runtime (which is always needed); a missing one
    # makes convert skip those precisions with the pip command (formats/availability.py).
    requires: tuple[Requirement, ...] = ()
    # The checkpoint row: convert's input, never its output (not in ``export_formats()`` or ``--formats``).
    source: bool = False
    # What a verified file's contract needs from this format before its one write (ncnn: a
    # wider self-test tolerance for INT8); None: nothing.
    finish_contract: Callable[[Contract], Contract] | None = None

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def suffix(self) -> str:
        return self.device.suffix

    @property
    def runtimes(self) -> tuple[str, ...]:
        """The device table's current list (a runtime registered later may open this format too)."""
        live = DEVICE_FORMATS.get(self.name)
        return live.runtimes if live is not None else self.device.runtimes

    @property
    def suffixes(self) -> tuple[str, ...]:
        return self.device.suffixes

    def read_contract(self, path: str) -> Contract | None:
        """Through the device's row (``device/formats.py``, the one door), without starting a runtime."""
        return DEVICE_FORMATS.get(self.name, self.device).read_contract(path)

    def artifact_name(self, arch: str, precision: str) -> str:
        return f"{arch}_{precision}{self.suffix}"


def prod(shape: Any) -> int:
    return int(np.prod([max(int(d), 1) for d in shape])) if len(shape) else 1


def weight_precision(dtypes: list[str]) -> str:
    """The precision most weights are stored in: how a foreign file's precision is named."""
    names = {"int8": "int8", "uint8": "int8", "float16": "fp16", "float32": "fp32"}
    kinds = [names.get(d, "?") for d in dtypes]
    return max(set(kinds), key=kinds.count) if kinds else "?"
