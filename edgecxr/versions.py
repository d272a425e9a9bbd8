"""One collector of tool versions, for checkpoints, contracts and reports.

Read from package metadata, never by importing the package: asking for
TensorFlow's version must not cost the seconds and memory of importing it.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

TRAINING = ("edgecxr", "torch", "torchvision", "timm", "numpy")
CONVERSION = ("edgecxr", "torch", "onnx", "onnxruntime", "onnxsim", "onnxconverter-common", "onnx2tf", "tensorflow",
              "ai-edge-litert", "openvino", "nncf", "numpy")


def tool_versions(dists: tuple[str, ...] = CONVERSION) -> dict[str, str]:
    """``{distribution: version}`` for those of ``dists`` that are installed."""
    out = {}
    for dist in dists:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out
