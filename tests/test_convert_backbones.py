"""Every registered lightweight backbone exports and verifies: FP32 ONNX identical to
PyTorch, INT8 ONNX produced from real calibration images and runnable through
``open_model``. The TFLite path for all of them is the slow variant (the default
suite covers TFLite with MobileNetV2 in test_convert.py).

Random-init weights: enough to prove the graph converts and computes the same
function in FP32; INT8 accuracy is judged on trained models only (see
scripts/experiments/check_conversion_targets.py).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgecxr.models.registry import list_models

LIGHT = list_models(lightweight_only=True)


def _checkpoint(arch: str, trained_run: Path, folder: Path) -> Path:
    import torch

    from edgecxr.models.checkpoint import save_checkpoint
    from edgecxr.models.factory import load_model
    from edgecxr.models.registry import create_model

    _, contract = load_model(str(trained_run / "best.pt"))  # 32 px, synthetic classes and data
    torch.manual_seed(0)
    path = folder / f"{arch}.pt"
    save_checkpoint(str(path), create_model(arch, contract.num_classes), replace(contract, arch=arch))
    return path


def _convert(arch: str, trained_run: Path, tmp_path: Path, formats: tuple[str, ...]) -> dict:
    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint

    ckpt = _checkpoint(arch, trained_run, tmp_path)
    # calibration from the run's train split, verification on its test split (both recorded in the contract)
    return convert_checkpoint(str(ckpt), str(tmp_path / "exp"), ConvertOptions(int8=True, formats=formats, calib_n=16),
                              progress=False, echo=lambda s: None)


def _check(report: dict, arch: str, formats: tuple[str, ...]) -> None:
    arts = {(a["format"], a["precision"]): a for a in report["artifacts"]}
    assert set(arts) == {(f, p) for f in formats for p in ("fp32", "int8")} | {("onnx", "fp32")}
    for (fmt, prec), a in arts.items():
        # random weights say nothing about INT8 accuracy (see above): an INT8 file may be judged
        # degraded, but it must have been produced and verified
        assert a["status"] in (("ok", "degraded") if prec == "int8" else ("ok",)), a
        assert a["file"] == f"{arch}_{prec}.{fmt}"
        assert a["verify"]["images"] == report["verification"]["images"] > 0
        if prec == "fp32":
            assert a["verify"]["max_abs_logit_diff"] < 1e-3 and a["verify"]["top1_agreement"] == 1.0


@pytest.mark.parametrize("arch", LIGHT)
def test_backbone_exports_fp32_and_int8_onnx_that_verify(arch, trained_run, tmp_path):
    _check(_convert(arch, trained_run, tmp_path, ("onnx",)), arch, ("onnx",))


@pytest.mark.slow
@pytest.mark.parametrize("arch", [a for a in LIGHT if a != "mobilenet_v2"])
def test_backbone_converts_to_tflite_fp32_and_int8(arch, trained_run, tmp_path):
    _check(_convert(arch, trained_run, tmp_path, ("onnx", "tflite")), arch, ("onnx", "tflite"))
