"""``convert --int8 --target``: which CPUs an INT8 file must be exact on.

Measured with ONNX Runtime 1.31.1 (static QDQ, per-channel, MinMax) on an AVX2-only
EPYC, 450 real CXRs, top-1 agreement with FP32: u8 activations x s8 weights 73.6%,
s8 x s8 74.4%, u8 x s8 with 7-bit weights (``reduce_range``) 96.7%, u8 x u8 96.9%.
Full-range u8 x s8 is exact only where the CPU accumulates in 32 bits: x86 with VNNI
(AVX-512 VNNI, AVX-VNNI) and ARM. Two schemes are exact everywhere: 7-bit s8 weights
and u8 x u8 (ONNX Runtime widens u8 x u8 to 16 bits on x86). On the README's
MobileNetV2 (``scripts/reproduce/int8_schemes.py``) 7-bit weights cost accuracy (96.0%
agreement, -3.4 macro-F1 points without QAT) where u8 x u8 kept it (99.3%, 0.0), so
u8 x u8 is the default (``portable``). It is no faster than FP32 on x86 (it cannot
use VNNI); the fast full-range u8 x s8 file is a host-specific variant produced
only when asked, and its contract says where it is exact.

TFLite INT8 (s8 x s8 through XNNPACK) sign-extends to 16 bits before multiplying on
AVX2 and uses 32-bit dot products on VNNI and ARM: one file is exact everywhere, so
its target is always ``portable``; the tests check that under ``qemu -cpu Haswell``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgecxr.device.cpufeatures import VNNI, cpu_description
from edgecxr.errors import EdgecxrError

TARGET_NAMES = ("portable", "host", "x86-vnni", "arm64")
FULL_RANGE_WHY = "full-range u8 x s8 INT8 saturates in AVX2/AVX-512 vpmaddubsw on x86 CPUs without VNNI"


@dataclass(frozen=True)
class Int8Target:
    """One INT8 scheme for ONNX Runtime and the CPUs it is exact on."""

    name: str
    weights: str  # "uint8": per-channel around zero point 128; "int8": symmetric per-channel
    reduce_range: bool  # int8 weights on ORT's 7-bit grid [-64, 64]
    valid_on: tuple[dict[str, Any], ...]  # empty: every CPU the runtime supports
    description: str
    activations: str = "uint8"  # only u8 activations use the fast (VNNI) kernels

    @property
    def weight_grid(self) -> tuple[bool, int]:
        """(asymmetric, levels - 1) of the weight grid ORT uses; QAT simulates the same.
        ORT makes per-channel u8 weights symmetric around zero point 128 (255 levels)."""
        if self.weights == "uint8":
            return False, 255
        return False, 64 if self.reduce_range else 127

    def contract_block(self, converted_on: dict[str, Any]) -> dict[str, Any]:
        """The contract's ``target`` entry for an ONNX INT8 file."""
        block: dict[str, Any] = {"name": self.name, "runtime": "onnxruntime", "int8_scheme": self.scheme,
                                 "valid_on": [dict(r) for r in self.valid_on], "converted_on": converted_on}
        if self.valid_on:
            block["why"] = FULL_RANGE_WHY
        return block

    @property
    def scheme(self) -> str:
        if self.weights == "uint8":
            return "u8 activations x u8 weights (per-channel, zero point 128)"
        return "u8 activations x s8 weights, " + ("7-bit (reduce_range)" if self.reduce_range else "full 8-bit")


PORTABLE = Int8Target("portable", "uint8", False, (), "u8 x u8: exact on every CPU (x86 AVX2/AVX-512 with or without VNNI, ARMv8.0+)")
_FULL_RANGE_VALID = ({"arch": "x86_64", "any_of": list(VNNI)}, {"arch": "aarch64"})
X86_VNNI = Int8Target("x86-vnni", "int8", False, _FULL_RANGE_VALID, "full-range u8 x s8: exact only on x86 with VNNI and on ARM")
ARM64 = Int8Target("arm64", "int8", False, _FULL_RANGE_VALID, "full-range u8 x s8 for ARM (also exact on x86 with VNNI)")


def resolve_target(name: str, cpu: dict[str, Any] | None = None) -> Int8Target:
    """``host`` becomes the fastest scheme that is exact on this CPU."""
    if name not in TARGET_NAMES:
        raise EdgecxrError(f"--target {name!r}: choose one of {', '.join(TARGET_NAMES)}")
    if name == "portable":
        return PORTABLE
    if name == "x86-vnni":
        return X86_VNNI
    if name == "arm64":
        return ARM64
    cpu = cpu or cpu_description()
    if cpu["arch"] == "aarch64":
        return ARM64
    if cpu["arch"] == "x86_64" and any(f in cpu["int8_features"] for f in VNNI):
        return X86_VNNI
    return PORTABLE  # no exact full-range kernel on this CPU: portable is the fastest correct choice


def plain_block(converted_on: dict[str, Any]) -> dict[str, Any]:
    """The ``target`` entry of files with no CPU-specific kernels (FP32, FP16, TFLite INT8)."""
    return {"name": "portable", "valid_on": [], "converted_on": converted_on}
