"""``edgecxr explain``: Grad-CAM on checkpoints, LIME on any model file, and the FP32-vs-INT8 comparison."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from edgecxr.models.registry import list_models


def _export_onnx(checkpoint: Path, dest: Path) -> Path:
    """A real ONNX file carrying its contract, made the way `convert` does (kept here so this test stands alone)."""
    import onnx
    import torch

    from edgecxr.device.contract import CONTRACT_KEY, TensorSpec
    from edgecxr.models.factory import load_model

    model, contract = load_model(str(checkpoint))
    size = contract.preprocess.size
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but is what `convert` uses (convert/formats/onnx/export.py)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, torch.zeros(1, 3, size, size), str(dest), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    m = onnx.load(str(dest))
    c = contract.with_io(format="onnx", precision="fp32", input=TensorSpec("input", (1, 3, size, size), "float32", "NCHW"),
                         output=TensorSpec("logits", (1, contract.num_classes), "float32"))
    m.metadata_props.add(key=CONTRACT_KEY, value=c.to_json())
    onnx.save(m, str(dest))
    return dest


def _quantize_int8(fp32: Path, dest: Path, calib: np.ndarray) -> Path:
    """Static QDQ INT8 with ONNX Runtime (u8 activations, s8 per-channel weights), contract restamped."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgecxr.device.contract import CONTRACT_KEY, Contract

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    src = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    c = Contract.from_json(src[CONTRACT_KEY])
    m = onnx.load(str(dest))
    del m.metadata_props[:]
    m.metadata_props.add(key=CONTRACT_KEY, value=Contract.to_json(c.with_io(format="onnx", precision="int8", input=c.input, output=c.output)))
    onnx.save(m, str(dest))
    return dest


def _responsive_checkpoint(data: Path, dest: Path, size: int = 48) -> Path:
    """A MobileNetV2 checkpoint whose output really depends on the image, built in seconds.

    The shared ``trained_run`` model (2 epochs at 32 px) gives the same probabilities for
    every image, so any LIME map of it is rounding noise. Here BatchNorm statistics are
    recomputed on the synthetic images (so features vary with the input) and the head is
    scaled up: not a good classifier, but one whose explanations mean something.
    """
    import torch

    from edgecxr.device.image_io import load_gray
    from edgecxr.device.preprocess import PreprocessSpec, preprocess
    from edgecxr.models.checkpoint import make_contract, save_checkpoint
    from edgecxr.models.registry import create_model

    torch.manual_seed(0)
    spec = PreprocessSpec(size=size)
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    x = torch.from_numpy(np.stack([preprocess(load_gray(str(f)), spec) for f in sorted(data.glob("*/*.png"))]))
    model = create_model("mobilenet_v2", len(classes))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the one pass below
    model.train()
    with torch.no_grad():
        model(x)
        model.head[1].weight.mul_(5.0)
    save_checkpoint(str(dest), model.eval(), make_contract("mobilenet_v2", classes, spec, source={"data_root": str(data)}))
    return dest


@pytest.fixture(scope="module")
def models(synthetic_data, tmp_path_factory):
    from edgecxr.device.image_io import load_gray
    from edgecxr.device.preprocess import PreprocessSpec, preprocess

    folder = tmp_path_factory.mktemp("explain_models")
    ckpt = _responsive_checkpoint(synthetic_data, folder / "best.pt")
    onnx_fp32 = _export_onnx(ckpt, folder / "model_fp32.onnx")
    spec = PreprocessSpec(size=48)
    files = sorted(synthetic_data.glob("*/*.png"))[::9][:8]
    calib = np.stack([preprocess(load_gray(str(f)), spec) for f in files])
    onnx_int8 = _quantize_int8(onnx_fp32, folder / "model_int8.onnx", calib)
    image = sorted((synthetic_data / "Opacity_Focal").glob("*.png"))[0]
    return {"pt": ckpt, "onnx": onnx_fp32, "int8": onnx_int8, "image": image, "data": synthetic_data}


@pytest.mark.parametrize("arch", list_models(lightweight_only=True))
def test_gradcam_runs_on_every_lightweight_backbone_at_small_size(arch):
    import torch

    from edgecxr.explain.gradcam import gradcam_map
    from edgecxr.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(arch, 3).eval()
    heat = gradcam_map(model, arch, np.random.default_rng(0).normal(size=(3, 64, 64)).astype(np.float32), target=1)
    assert heat.shape == (64, 64) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1 + 1e-6


def test_gradcam_cli_writes_heatmap_png_raw_map_and_probabilities(models, tmp_path):
    proc = run_cli("explain", str(models["pt"]), "--image", str(models["image"]), "--out", str(tmp_path), "--class", "Normal")
    stem = tmp_path / f"{models['image'].stem}_gradcam"
    info = json.loads(stem.with_suffix(".json").read_text())
    assert info["method"] == "gradcam" and info["explained_class"] == "Normal"
    assert sum(info["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert np.load(stem.with_suffix(".npy")).shape == (48, 48)  # Grad-CAM lives at the model's input size
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<- explained" in proc.stdout and "Normal" in proc.stdout


def test_lime_explains_an_onnx_model_on_the_raw_image_and_reports_time(models, tmp_path):
    proc = run_cli("explain", str(models["int8"]), "--image", str(models["image"]), "--out", str(tmp_path),
                   "--samples", "40", "--segments", "12", "--batch-size", "16", "--quiet")
    stem = tmp_path / f"{models['image'].stem}_lime"
    info = json.loads(stem.with_suffix(".json").read_text())
    assert info["method"] == "lime" and info["samples"] == 40 and info["seconds"] > 0
    assert np.load(stem.with_suffix(".npy")).shape == (64, 64)  # LIME perturbs the raw 64 px image, before preprocessing
    assert "samples/s" in proc.stdout and "onnxruntime" in proc.stdout


def test_lime_with_the_same_seed_and_segments_sees_identical_perturbations(models):
    from edgecxr.device.image_io import load_gray
    from edgecxr.explain.lime_explain import lime_map, segment_image
    from edgecxr.models.runtime import open_model

    gray = load_gray(str(models["image"]))
    segs = segment_image(gray, 12)
    backend = open_model(str(models["onnx"]))
    a, ta = lime_map(backend, gray, None, 30, segments=segs, seed=5, progress=False)
    b, tb = lime_map(backend, gray, ta, 30, segments=segs, seed=5, progress=False)
    assert ta == tb and np.array_equal(a.map, b.map)
    assert segs.min() == 0 and segs.max() + 1 == len(np.unique(segs))  # LIME indexes superpixels 0..n-1


def test_map_agreement_spearman_and_top_region_iou():
    from edgecxr.explain.compare import map_agreement, top_region

    m = np.arange(100, dtype=np.float32).reshape(10, 10)
    assert top_region(m, 0.2).sum() == 20
    same = map_agreement(m, m.copy())
    assert same["spearman"] == pytest.approx(1) and same["top_iou"] == 1
    flipped = map_agreement(m, -m)
    assert flipped["spearman"] == pytest.approx(-1) and flipped["top_iou"] == 0
    assert np.isnan(map_agreement(m, np.zeros_like(m))["spearman"])


def test_compare_picks_images_from_every_class_in_turn():
    from edgecxr.explain.compare import pick_images

    pool = [(f"{c}/{i}.png", c) for c in ("A", "B", "C") for i in range(10)]
    picked = pick_images(pool, 5, seed=0)
    assert [lab for _p, lab in picked] == ["A", "B", "C", "A", "B"] and picked == pick_images(pool, 5, seed=0)


def test_compare_same_model_in_two_formats_agrees_and_int8_gives_a_table(models, tmp_path):
    proc = run_cli("explain", "--compare", str(models["pt"]), str(models["onnx"]), "--data", str(models["data"]), "--n", "3",
                   "--samples", "60", "--segments", "12", "--out", str(tmp_path / "same"), "--quiet")
    same = json.loads((tmp_path / "same" / "compare.json").read_text())["summary"]
    assert same["method"] == "lime" and same["images"] == 3 and same["top1_agreement"] == 1
    assert same["mean_spearman"] > 0.95 and same["mean_top_iou"] > 0.8  # FP32 in torch and ORT: the same explanation
    assert "mean of 3" in proc.stdout

    run_cli("explain", "--compare", str(models["onnx"]), str(models["int8"]), "--data", str(models["data"]), "--n", "2",
            "--samples", "40", "--segments", "12", "--out", str(tmp_path / "q"), "--quiet")
    res = json.loads((tmp_path / "q" / "compare.json").read_text())
    assert res["precision_b"] == "int8" and len(res["rows"]) == 2
    assert all(-1 <= r["spearman"] <= 1 and 0 <= r["top_iou"] <= 1 for r in res["rows"])
    assert (tmp_path / "q" / "compare.md").read_text().startswith("Explanation drift, lime")


def test_compare_two_checkpoints_uses_gradcam(models, tmp_path):
    run_cli("explain", "--compare", str(models["pt"]), str(models["pt"]), "--data", str(models["data"]), "--n", "2",
            "--out", str(tmp_path), "--quiet")
    summary = json.loads((tmp_path / "compare.json").read_text())["summary"]
    assert summary["method"] == "gradcam" and summary["mean_top_iou"] == 1


@pytest.mark.parametrize("args, message", [
    (["{onnx}", "--image", "{image}", "--method", "gradcam"], "Grad-CAM needs gradients"),
    (["{pt}", "--image", "{image}", "--class", "Pneumothorax"], "--class 'Pneumothorax'"),
    (["{pt}", "--image", "/nonexistent.png"], "no such file"),
    (["{pt}"], "give MODEL and --image"),
])
def test_bad_input_is_one_line_without_traceback(models, args, message):
    proc = run_cli("explain", *[a.format(**{k: str(v) for k, v in models.items()}) for a in args], check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
