"""``convert --accuracy-control``: INT8 layers back to float, worst first, judged on held-out train images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecxr.errors import EdgecxrError

FRAGILE_NODE = "/backbone/fragile/Conv"
TINY_ARCH = "tiny_fragile_cnn"


def _tiny_builder(pretrained: bool):
    import torch
    from torch import nn

    class Tiny(nn.Module):
        """stem -> body -> fragile 1x1 conv -> pooled 16 features; every conv followed by ReLU."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.body = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.fragile = nn.Conv2d(16, 16, 1)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.body(torch.relu(self.stem(x))))
            return self.pool(torch.relu(self.fragile(x))).flatten(1)

    return Tiny(), 16


@pytest.fixture(scope="module")
def tiny_arch():
    """A three-conv backbone in the registry for this module only (convert runs in-process here)."""
    from edgecxr.models.registry import BACKBONES, BackboneConfig

    BACKBONES[TINY_ARCH] = BackboneConfig(TINY_ARCH, "test", _tiny_builder, input_size=32, dropout=0.0)
    yield TINY_ARCH
    BACKBONES.pop(TINY_ARCH, None)


@pytest.fixture(scope="module")
def fragile_model(tiny_arch: str, synthetic_data: Path, tmp_path_factory) -> Path:
    """A small CNN trained on the synthetic images, with one layer INT8 destroys.

    The body conv's output channel 0 is dead (weights 0, bias -1, then ReLU: exactly 0
    on every image, kept so while training), and after training the 1x1 ``fragile``
    conv that reads it gets a weight of 1000 x its largest weight on that channel in
    every output row. In float that weight multiplies an exact zero; in INT8 it owns
    each row's per-channel scale, so every other weight of the layer rounds to zero.
    Keeping that one conv in float repairs it, in ONNX and TFLite alike. The
    checkpoint records a split.csv (80/10/10) like a trained run.
    """
    import torch

    from edgecxr.data.folders import build_index, write_split_csv
    from edgecxr.data.imageset import load_images
    from edgecxr.device.preprocess import PreprocessSpec
    from edgecxr.models.checkpoint import make_contract, save_checkpoint
    from edgecxr.models.registry import create_model

    folder = tmp_path_factory.mktemp("fragile")
    index = build_index(str(synthetic_data), progress=False)
    write_split_csv(str(folder / "split.csv"), index)
    contract = make_contract(tiny_arch, index.classes, PreprocessSpec(size=32),
                             source={"data_root": index.root, "split_csv": str(folder / "split.csv")})
    torch.manual_seed(0)
    model = create_model(tiny_arch, contract.num_classes)
    batch = load_images(index, index.of_split("train"), contract.preprocess, progress=False)
    x, y = torch.from_numpy(batch.x), torch.from_numpy(batch.y).long()
    body, fragile = model.backbone.body, model.backbone.fragile
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        with torch.no_grad():
            body.weight[0], body.bias[0] = 0.0, -1.0
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        body.weight[0], body.bias[0] = 0.0, -1.0
        before = model(x)
        fragile.weight[:, 0] = 1000.0 * fragile.weight.abs().max()
        assert torch.allclose(model(x), before, atol=1e-5)  # the outlier multiplies an exact zero in float
        assert (before.argmax(1) == y).float().mean() > 0.9  # a model worth keeping
    path = folder / "fragile.pt"
    save_checkpoint(str(path), model, contract)
    return path


def _settings(**kw):
    from edgecxr.convert.accuracy_control import ControlSettings

    base = dict(max_drop_pp=5.0, min_agreement=0.9, max_float_layers=3, holdout_n=300, latency_runs=5, latency_threads=1)
    return ControlSettings(**{**base, **kw})


def _convert(ckpt: Path, out: Path, formats: tuple[str, ...], **kw) -> dict:
    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint

    opts = ConvertOptions(int8=True, formats=formats, calib_n=16, max_drop=5.0, accuracy_control=_settings(**kw))
    return convert_checkpoint(str(ckpt), str(out), opts, progress=False, echo=lambda s: None)


def _int8(report: dict, fmt: str) -> dict:
    return next(a for a in report["artifacts"] if a["precision"] == "int8" and a["format"] == fmt)


def test_plain_int8_destroys_the_fragile_model_so_the_search_has_work(fragile_model, tmp_path):
    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint

    rep = convert_checkpoint(str(fragile_model), str(tmp_path / "plain"), ConvertOptions(int8=True, formats=("onnx",), calib_n=16),
                             progress=False, echo=lambda s: None)
    assert _int8(rep, "onnx")["verify"]["top1_agreement"] < 0.7


def test_accuracy_control_keeps_exactly_the_fragile_layer_in_float_in_onnx(fragile_model, tmp_path):
    import onnx

    rep = _convert(fragile_model, tmp_path / "ac", ("onnx",))
    int8 = _int8(rep, "onnx")
    rec = int8["details"]["accuracy_control"]
    assert rec["passed"] and rec["added"] == [FRAGILE_NODE] and rec["keep_float"] == [FRAGILE_NODE]
    assert rec["plain"]["top1_agreement"] < 0.7 and rec["steps"][-1]["heldout"]["top1_agreement"] >= 0.9
    assert rec["ranking"][0]["layer"] == FRAGILE_NODE and rec["ranking"][0]["gain"] > 10 * max(r["gain"] for r in rec["ranking"][1:])
    assert all("median_ms" in st for st in rec["steps"]) and rec["steps"][1]["latency_cost_ms"] is not None
    assert int8["verify"]["top1_agreement"] == 1.0  # and on the test split, which the search never saw
    graph = onnx.load(str(tmp_path / "ac" / f"{TINY_ARCH}_int8.onnx")).graph
    float_inits = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    assert [name for name, n in convs.items() if n.input[1] in float_inits] == [FRAGILE_NODE]
    md = (tmp_path / "ac" / "convert_report.md").read_text()
    assert "## Accuracy control" in md and FRAGILE_NODE in md and "final on the test split" in md


def test_a_layer_kept_in_float_stays_float_when_onnx_runtime_opens_the_file(fragile_model, tmp_path):
    """ORT's WeightBiasQuantization would quantize an excluded conv's float weight per-tensor at session start."""
    import onnx
    import onnxruntime as ort

    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint

    opts = ConvertOptions(int8=True, formats=("onnx",), calib_n=16, verify=False, keep_float=[FRAGILE_NODE])
    convert_checkpoint(str(fragile_model), str(tmp_path / "kf"), opts, progress=False, echo=lambda s: None)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ort.InferenceSession(str(tmp_path / "kf" / f"{TINY_ARCH}_int8.onnx"), opts, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp_path / "optimized.onnx")).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    conv = next(n for n in graph.node if n.name == FRAGILE_NODE)
    assert producers.get(conv.input[1]) is None  # a float initializer, not a DequantizeLinear ORT added


def test_an_unreachable_limit_says_so_in_one_line_and_exits_non_zero(fragile_model, tmp_path):
    from click.testing import CliRunner

    from edgecxr.cli.main import cli

    res = CliRunner().invoke(cli, ["convert", str(fragile_model), "--out", str(tmp_path / "no"), "--int8", "--formats", "onnx",
                                   "--calib-n", "16", "--max-drop", "5", "--min-agreement", "0.9", "--accuracy-control",
                                   "--max-float-layers", "0", "--control-latency-runs", "0", "--keep-degraded", "--quiet"])
    assert res.exit_code == 3, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("ACCURACY CONTROL FAILED")]
    assert len(lines) == 1 and "cannot meet --max-drop 5 / --min-agreement 0.9" in lines[0] and "--max-float-layers 0" in lines[0]
    rep = json.loads((tmp_path / "no" / "convert_report.json").read_text())
    assert _int8(rep, "onnx")["details"]["accuracy_control"]["passed"] is False


def test_accuracy_control_needs_int8_and_a_limit(fragile_model, tmp_path):
    from click.testing import CliRunner

    from edgecxr.cli.main import cli
    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint

    res = CliRunner().invoke(cli, ["convert", str(fragile_model), "--out", str(tmp_path / "x"), "--int8", "--accuracy-control"])
    assert res.exit_code != 0 and "add --max-drop" in res.output
    with pytest.raises(EdgecxrError, match="only applies to INT8"):
        convert_checkpoint(str(fragile_model), str(tmp_path / "y"), ConvertOptions(formats=("onnx",), accuracy_control=_settings()),
                           progress=False, echo=lambda s: None)


def test_the_held_out_slice_never_holds_test_val_or_calibration_images(fragile_model, tmp_path):
    """Train rows only, minus calibration files, minus any row whose pixels also occur outside train
    (here a hand-edited split.csv gives a test row the hash of a train row)."""
    import csv

    from edgecxr.convert.accuracy_control import holdout_samples
    from edgecxr.models.factory import load_model

    _, contract = load_model(str(fragile_model))
    with open(contract.source["split_csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    test[0]["pixel_sha256"] = train[0]["pixel_sha256"]  # a duplicate across splits
    edited = tmp_path / "split.csv"
    with open(edited, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    root = contract.source["data_root"]
    calib = {str(Path(root, r["file"]).resolve()) for r in train[1:11]}
    index, chosen = holdout_samples(str(edited), root, list(contract.classes), calib, n=1000)
    files = {s.file for s in chosen}
    assert files and all(s.split == "train" for s in chosen)
    assert not files & {r["file"] for r in rows if r["split"] != "train"}
    assert not {str(Path(root, f).resolve()) for f in files} & calib
    assert train[0]["file"] not in files  # its pixels are a test image's
    assert len(files) == len(train) - 11


def test_the_held_out_slice_drops_images_identical_to_verification_images(fragile_model, tmp_path):
    import shutil

    import cv2

    from edgecxr.convert.accuracy_control import holdout_slice
    from edgecxr.data.imageset import load_images
    from edgecxr.data.synthetic import make_image
    from edgecxr.eval.evaluate import resolve_samples
    from edgecxr.models.factory import load_model

    _, contract = load_model(str(fragile_model))
    everything = holdout_slice(contract, None, None, 1000, progress=False)
    copied = tmp_path / "verify" / contract.classes[0]
    copied.mkdir(parents=True)
    victim = everything.files[0]
    shutil.copy(Path(everything.root, victim), copied / "renamed.png")  # same pixels, another folder and name
    other = tmp_path / "verify" / contract.classes[1]
    other.mkdir()
    cv2.imwrite(str(other / "new.png"), make_image(contract.classes[1], 999, size=64))  # an image seen nowhere else
    index = resolve_samples(contract, str(tmp_path / "verify"), "all")
    vset = load_images(index, index.of_split("all"), contract.preprocess, progress=False)
    kept = holdout_slice(contract, None, vset, 1000, progress=False)
    assert victim not in kept.files and len(kept) == len(everything) - 1


@pytest.mark.slow
def test_accuracy_control_keeps_exactly_the_fragile_layer_in_float_in_tflite(fragile_model, tmp_path):
    from edgecxr.models.tflite_graph import graph_interpreter

    rep = _convert(fragile_model, tmp_path / "ac", ("tflite",))
    int8 = _int8(rep, "tflite")
    rec = int8["details"]["accuracy_control"]
    assert rec["passed"] and len(rec["added"]) == 1 and rec["steps"][1]["op_type"] == "CONV_2D"
    assert rec["plain"]["top1_agreement"] < 0.7 and int8["verify"]["top1_agreement"] == 1.0
    interp = graph_interpreter(str(tmp_path / "ac" / f"{TINY_ARCH}_int8.tflite"))
    details = {t["index"]: t for t in interp.get_tensor_details()}
    float_convs = [tuple(details[op["inputs"][1]]["shape"]) for op in interp._get_ops_details()
                   if op["op_name"] == "CONV_2D" and np.dtype(details[op["inputs"][1]]["dtype"]) == np.float32]
    assert float_convs == [(16, 1, 1, 16)]  # the fragile 1x1 conv, and only it
