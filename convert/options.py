"""``ConvertOptions``: what one :func:`~edgecxr.convert.pipeline.convert_checkpoint` call
writes and how, the Python form of the ``edgecxr convert`` flags.

One frozen value instead of a long keyword list: the click command builds it from
its options, tests and scripts build it with only the fields they change, and every
default lives here once. What a caller passes per call rather than per conversion
(``progress``, ``echo``) stays a keyword argument of ``convert_checkpoint``.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgecxr.errors import EdgecxrError

if TYPE_CHECKING:
    from edgecxr.convert.accuracy_control import ControlSettings


@dataclass(frozen=True)
class ConvertOptions:
    """The conversion's choices; ``check`` refuses inconsistent ones before any work."""

    int8: bool = False
    """Also write INT8 files: the smallest and fastest on a Pi, but they need real calibration images."""
    fp16: bool = False
    """Also write FP16 files: half the size of FP32 at float accuracy."""
    formats: Iterable[str] = ("onnx", "tflite")
    """Formats of the table to write (``convert/formats``); FP32 ONNX is always written, every other file is made from it."""
    calib_data: str | None = None
    """Folder of calibration images; None: the train split recorded in the checkpoint."""
    calib_n: int = 300
    """Calibration images, drawn stratified by class: enough for stable ranges, few enough to be quick."""
    calib_method: str = "minmax"
    """ONNX Runtime calibration method for INT8 ONNX (``quantize.CALIB_METHODS``)."""
    verify_data: str | None = None
    """Folder of verification images; None: the checkpoint's test split."""
    split_csv: str | None = None
    """split.csv replacing the recorded one (the run folder moved): train images calibrate, test images verify."""
    verify: bool = True
    """Run every file on the verification images against PyTorch; off only to save time when that is known."""
    max_drop: float | None = None
    """CI gate: the report fails when an INT8 file loses more than this many macro-F1 points (needs verification)."""
    keep_float: Iterable[str] = ()
    """ONNX node names kept in float in INT8 ONNX (found with ``edgecxr debug-quant``); empty names are dropped."""
    accuracy_control: ControlSettings | None = None
    """``accuracy_control.ControlSettings``: return INT8 layers to float until each file holds its limit on held-out images."""
    target: str = "portable"
    """CPUs the INT8 ONNX file must be exact on (``int8_target.py``); portable is exact everywhere."""
    threads: int | None = None
    """Threads for torch and the runtimes during verification; None: their defaults."""
    sign_key: str | None = None
    """EC private key (``edgecxr keygen``): sign every file written (``ARTIFACT.sig``, ``edgecxr.models.signing``); None: unsigned."""

    def __post_init__(self) -> None:
        # tuples: a frozen value stays hashable and a generator is not consumed twice
        object.__setattr__(self, "formats", tuple(self.formats))
        object.__setattr__(self, "keep_float", tuple(k for k in self.keep_float if k))

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions to write, in table order; FP32 always (every other file is made from it)."""
        return ("fp32",) + (("fp16",) if self.fp16 else ()) + (("int8",) if self.int8 else ())

    def check(self) -> None:
        """Raise :class:`EdgecxrError` for a combination the user must fix, before any file is written."""
        from edgecxr.convert.formats.onnx.quantize import CALIB_METHODS

        if self.calib_method not in CALIB_METHODS:
            raise EdgecxrError(f"--calib-method {self.calib_method!r}: choose one of {', '.join(CALIB_METHODS)}")
        if self.max_drop is not None and self.max_drop < 0:
            raise EdgecxrError(f"--max-drop must be a number of points >= 0, got {self.max_drop}")
        if self.max_drop is not None and not self.verify:
            raise EdgecxrError("--max-drop needs verification; drop --no-verify")
        if self.keep_float and not self.int8:
            raise EdgecxrError("--keep-float only applies to INT8; add --int8")
        if self.accuracy_control is not None and not self.int8:
            raise EdgecxrError("--accuracy-control only applies to INT8; add --int8")
        if self.sign_key is not None and not os.path.isfile(self.sign_key):
            raise EdgecxrError(f"--sign {self.sign_key}: no such private key (make one with `edgecxr keygen`)")
