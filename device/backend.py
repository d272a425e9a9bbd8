"""The interface every runtime implements, numpy only.

Callers always hand over preprocessed float32 NCHW images (what
``preprocess.preprocess`` returns) and always get float32 logits back. Layout
(NCHW/NHWC) and integer quantization of the input and output are handled here from
the contract, so eval, bench, convert's verification and the Pi runner cannot
disagree about them. Each runtime (``runtimes/``) subclasses :class:`Backend`;
``edgecxr.models.runtime`` adds a torch backend with the same methods.

Timing hooks: ``prepare`` does all input conversion up front, ``invoke`` runs the
model and nothing else, ``decode`` turns raw output into logits.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .contract import Contract, check_matches
from .decision import calibrated_probabilities


class ModelLoadError(ValueError):
    """A model file that cannot be opened, with a one-line reason."""


class WrongCpuError(ModelLoadError):
    """A model whose contract says it computes wrong results on this CPU."""


def np_dtype_name(dt: Any) -> str:
    return np.dtype(dt).name


class Backend:
    """Common logic: quantize/transposes in, dequantize out, batch-1 models looped.

    ``runtime_name`` is the key in ``runtimes.RUNTIMES`` (what a user selects);
    ``runtime`` is that runtime's name and version, for reports.
    """

    runtime = "?"
    runtime_name = "?"
    format = "?"

    def __init__(self, path: str, contract: Contract | None) -> None:
        self.path = path
        self.contract = contract

    # --- to be provided by subclasses -------------------------------------------------
    input_shape: tuple[int, ...] = ()
    input_dtype: str = "float32"
    input_quant: tuple[float, int] | None = None
    output_quant: tuple[float, int] | None = None
    layout: str = "NCHW"

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # --- shared -----------------------------------------------------------------------
    @property
    def fixed_batch(self) -> int | None:
        b = self.input_shape[0] if self.input_shape else None
        return int(b) if isinstance(b, (int, np.integer)) and b > 0 else None

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 (normalised) -> the model's own input tensor."""
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D NCHW batch, got shape {x.shape}")
        if self.layout == "NHWC":
            x = np.transpose(x, (0, 2, 3, 1))
        if self.input_quant is not None:
            scale, zp = self.input_quant
            info = np.iinfo(np.dtype(self.input_dtype))
            x = np.clip(np.round(x / scale) + zp, info.min, info.max)
        return np.ascontiguousarray(x.astype(np.dtype(self.input_dtype)))

    def decode(self, raw: np.ndarray) -> np.ndarray:
        if self.output_quant is not None:
            scale, zp = self.output_quant
            return ((raw.astype(np.float32) - zp) * scale).astype(np.float32)
        return raw.astype(np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch; models with a fixed batch of 1 are run image by image."""
        if self.fixed_batch == 1 and x.shape[0] != 1:
            return np.concatenate([self.predict(x[i : i + 1]) for i in range(x.shape[0])], axis=0)
        return self.decode(self.invoke(self.prepare(x))).reshape(x.shape[0], -1)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities: ``softmax(logits / T)`` with the contract's temperature
        (plain softmax where none was fitted); float64."""
        return calibrated_probabilities(self.predict(x), self.contract.decision if self.contract else None)

    def check_contract(self) -> None:
        if self.contract is not None:
            check_matches(self.contract, self.input_shape, self.input_dtype, self.output_shape)

    output_shape: tuple[int, ...] = ()
