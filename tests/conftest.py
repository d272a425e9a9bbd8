"""Shared fixtures: synthetic data that always exists, real data when ../shared has it,
and one small trained checkpoint per session for the stages downstream of training."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import COVID, run_cli


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """3 classes x 30 synthetic 64 px PNGs (edgecxr.data.synthetic)."""
    from edgecxr.data.synthetic import write_dataset

    return Path(write_dataset(str(tmp_path_factory.mktemp("synthetic") / "data"), n_per_class=30, size=64))


@pytest.fixture(scope="session")
def trained_run(synthetic_data, tmp_path_factory) -> Path:
    """A MobileNetV2 trained for 2 short epochs at 32 px: the run folder (best.pt, split.csv)."""
    out = tmp_path_factory.mktemp("run") / "mnv2"
    run_cli("train", "--data", str(synthetic_data), "--arch", "mobilenet_v2", "--out", str(out), "--epochs", "2",
            "--img-size", "32", "--batch-size", "16", "--quiet")
    return out


@pytest.fixture(scope="session")
def covid_data() -> Path:
    if not COVID.is_dir():
        pytest.skip("real CXRs not present (../shared/data/covid-radiography); synthetic tests cover the logic")
    return COVID


@pytest.fixture(scope="session")
def probe_models(trained_run: Path, synthetic_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """A MobileNetV2 that separates the synthetic classes in float, and a damaged copy.

    The two-epoch ``trained_run`` predicts one class, so no INT8 loss could show on
    it. Here BatchNorm statistics are re-estimated on the images and a logistic
    regression head is fitted on the pooled features (accuracy 1.0 in float). The
    damaged copy multiplies one channel of a linear bottleneck by 1e4 and divides
    the weights that read it by 1e4: identical in float, but that channel now owns
    the whole per-tensor INT8 range, so the other channels quantize to nothing.
    """
    import torch
    from sklearn.linear_model import LogisticRegression

    from edgecxr.data.imageset import load_images
    from edgecxr.eval.evaluate import resolve_samples
    from edgecxr.models.checkpoint import save_checkpoint
    from edgecxr.models.factory import load_model
    from edgecxr.models.registry import create_model

    _, contract = load_model(str(trained_run / "best.pt"))
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", contract.num_classes)
    index = resolve_samples(contract, str(synthetic_data), "all")
    batch = load_images(index, index.of_split("all"), contract.preprocess, progress=False)
    x = torch.from_numpy(batch.x)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    model.train()
    with torch.no_grad():
        model.backbone(x)
    model.eval()
    with torch.inference_mode():
        feats = model.backbone(x).numpy()
    mu, sd = feats.mean(0), np.maximum(feats.std(0), 1e-2)
    lr = LogisticRegression(C=1.0, max_iter=3000).fit((feats - mu) / sd, batch.y)
    with torch.no_grad():
        model.head[1].weight.copy_(torch.from_numpy(lr.coef_ / sd).float())
        model.head[1].bias.copy_(torch.from_numpy(lr.intercept_ - (lr.coef_ * mu / sd).sum(1)).float())
    folder = tmp_path_factory.mktemp("probe")
    good, bad = folder / "probe.pt", folder / "damaged.pt"
    save_checkpoint(str(good), model, contract)
    block1, block2 = model.backbone[0][1].conv, model.backbone[0][2].conv
    with torch.no_grad():
        block1[2].weight[0] *= 1e4
        block1[2].bias[0] *= 1e4
        block2[0][0].weight[:, 0] /= 1e4
    save_checkpoint(str(bad), model, contract)
    return good, bad
