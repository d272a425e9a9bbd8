"""Every registered backbone builds, runs, and its config entry fits the model it builds.

A registry entry is plain data next to a builder, so nothing but a test notices when
the two drift apart (a renamed layer breaks Grad-CAM, a wrong feature size breaks the
head). This test builds every entry, the heavier baselines included, with random
weights at a small input, which keeps it to a few seconds per backbone.
"""
from __future__ import annotations

import pytest
import torch

from edgecxr.models.registry import BACKBONES, get_config

SMALL_INPUT = 64  # every backbone's total stride is 32: 2x2 features, enough to run each layer


@pytest.fixture(scope="module", params=list(BACKBONES))
def built(request):
    from edgecxr.models.registry import create_model

    torch.manual_seed(0)
    return request.param, create_model(request.param, 3).eval()


def test_every_backbone_runs_and_its_feature_dim_is_the_heads_input(built):
    arch, model = built
    x = torch.randn(2, 3, SMALL_INPUT, SMALL_INPUT)
    with torch.no_grad():
        features = model.backbone(x)
        logits = model(x)
    assert features.shape == (2, model.feature_dim), arch
    assert model.head[1].in_features == model.feature_dim and logits.shape == (2, 3), arch
    assert torch.isfinite(logits).all(), arch


def test_cam_layer_names_a_module_of_the_model(built):
    arch, model = built
    path = get_config(arch).cam_layer
    assert path, f"{arch}: no cam_layer in the registry entry"
    layer = model.get_submodule(path)
    assert any(layer is m for m in model.backbone.modules()), f"{arch}: {path} is not inside the backbone"


def test_declared_residual_blocks_are_found_and_undeclared_ones_are_not_missed(built):
    arch, model = built
    find = get_config(arch).residual_blocks
    blocks = find(model) if find else []
    own = {id(m) for m in model.modules()}
    assert all(id(b) in own for b in blocks), arch
    if find:
        assert blocks, f"{arch}: residual_blocks is declared but finds no module"
    # torchvision and timm mark their residual blocks; such a backbone must declare them for QAT
    flagged = [m for m in model.modules() if getattr(m, "use_res_connect", False) or getattr(m, "has_skip", False)]
    assert {id(m) for m in flagged} <= {id(b) for b in blocks}, f"{arch}: residual blocks not declared in the registry"
