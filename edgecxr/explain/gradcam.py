"""Grad-CAM through the maintained ``pytorch-grad-cam`` library (package ``grad-cam``).

The target layer is not guessed: every backbone's registry entry names its last
convolutional block (``BackboneConfig.cam_layer``), a dotted path inside
:class:`CXRClassifier`, so folded protonet checkpoints work the same way.
"""
from __future__ import annotations

import numpy as np
from torch import nn

from edgecxr.errors import EdgecxrError
from edgecxr.models.registry import get_config


def cam_layer(model: nn.Module, arch: str) -> nn.Module:
    path = get_config(arch).cam_layer
    if not path:
        raise EdgecxrError(f"{arch}: the registry names no Grad-CAM layer (cam_layer); use --method lime")
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise EdgecxrError(f"{arch}: Grad-CAM layer {path!r} not found in the model; the registry entry is out of date") from exc


def gradcam_map(model: nn.Module, arch: str, x: np.ndarray, target: int) -> np.ndarray:
    """HxW float32 map in [0, 1] at the model's input size, for class index ``target``.

    ``x`` is one preprocessed image (CxHxW float32). A map that is zero everywhere
    means no spatial position raised the class score (Grad-CAM keeps positive evidence only).
    """
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model.eval()
    inp = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    with GradCAM(model=model, target_layers=[cam_layer(model, arch)]) as cam:
        heat = cam(input_tensor=inp, targets=[ClassifierOutputTarget(int(target))])
    return np.nan_to_num(np.asarray(heat[0], dtype=np.float32))
