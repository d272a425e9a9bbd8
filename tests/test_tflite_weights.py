"""ImageNet initialisation for MobileNetV2 read from an official TFLite file
(``--weights FILE.tflite``): the layers map one to one, and batch norm is unfolded
so that training starts from what the file computes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, run_cli

REFERENCE = ROOT.parent / "shared" / "reference-models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
needs_reference = pytest.mark.skipif(not REFERENCE.exists(), reason="official MobileNetV2 TFLite not present (../shared/reference-models)")


def _tflite_probs(interp, x_nhwc_pm1: np.ndarray) -> np.ndarray:
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    s, z = i["quantization"]
    interp.set_tensor(i["index"], np.clip(np.round(x_nhwc_pm1 / s + z), 0, 255).astype(i["dtype"]))
    interp.invoke()
    s, z = o["quantization"]
    return (interp.get_tensor(o["index"]).astype(np.float32) - z) * s


@needs_reference
def test_imported_mobilenet_v2_reproduces_the_tflite_imagenet_classifier():
    from edgecxr.data.synthetic import SYNTHETIC_CLASSES, make_image
    from edgecxr.device.backends import import_interpreter
    from edgecxr.models.registry import create_model
    from edgecxr.models.tflite_weights import mobilenet_v2_state_from_tflite, read_tflite_convolutions, tf_same_padding

    model = create_model("mobilenet_v2", 1001)
    model.load_state_dict(mobilenet_v2_state_from_tflite(str(REFERENCE), model), strict=False)
    _, w, b = read_tflite_convolutions(str(REFERENCE))[-1]  # the file's 1x1-conv classifier, for the comparison only
    model.head[1].weight.data = torch.from_numpy(w.reshape(1001, 1280))
    model.head[1].bias.data = torch.from_numpy(b)
    tf_same_padding(model).eval()
    Interpreter, _ = import_interpreter()
    interp = Interpreter(model_path=str(REFERENCE), num_threads=1)
    interp.allocate_tensors()
    agree, corr = 0, []
    for i in range(8):  # X-ray-like images in the file's [-1, 1] input range
        gray = make_image(SYNTHETIC_CLASSES[i % 3], i, 224).astype(np.float32) / 127.5 - 1
        x = torch.from_numpy(np.broadcast_to(gray, (1, 3, 224, 224)).copy())
        with torch.no_grad():
            p_torch = torch.softmax(model(x), 1).numpy().ravel()
        p_tflite = _tflite_probs(interp, x.permute(0, 2, 3, 1).numpy()).ravel()
        agree += int(p_torch.argmax() == p_tflite.argmax())
        corr.append(np.corrcoef(p_torch, p_tflite)[0, 1])
    # the file runs INT8 activations, the import float ones: close, not equal. A wrong
    # layer mapping gives unrelated 1001-way distributions (correlation near 0).
    assert agree >= 6 and np.mean(corr) > 0.85, (agree, corr)


@needs_reference
def test_unfolded_batch_norm_keeps_eval_output_and_live_training_activations():
    from edgecxr.models.factory import build_model
    from edgecxr.models.registry import create_model
    from edgecxr.models.tflite_weights import mobilenet_v2_state_from_tflite, xray_like_batch

    folded = create_model("mobilenet_v2", 3)
    folded.load_state_dict(mobilenet_v2_state_from_tflite(str(REFERENCE), folded), strict=False)
    unfolded = build_model("mobilenet_v2", 3, weights=str(REFERENCE))  # the --weights path
    x = xray_like_batch(224, 8)
    with torch.no_grad():
        ref = folded.eval().backbone(x)
        np.testing.assert_allclose(unfolded.eval().backbone(x).numpy(), ref.numpy(), atol=1e-4)
        folded_train = folded.train().backbone(x)
        unfolded_train = unfolded.train().backbone(x)
    # identity+bias batch norm in training mode rescales every channel and kills the ReLU6 units
    assert float((unfolded_train - ref).abs().mean()) < 0.3 * float(ref.abs().mean())
    assert float((folded_train - ref).abs().mean()) > float((unfolded_train - ref).abs().mean())


def test_tflite_weights_for_another_architecture_is_one_line_error(synthetic_data, tmp_path):
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"not used")
    proc = run_cli("train", "--data", str(synthetic_data), "--arch", "squeezenet1_1", "--out", str(tmp_path / "run"),
                   "--epochs", "1", "--img-size", "32", "--weights", str(fake), "--quiet", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "mobilenet_v2 only" in proc.stderr.strip().splitlines()[-1]


def test_unreadable_tflite_weights_file_is_one_line_error(synthetic_data, tmp_path: Path):
    fake = tmp_path / "broken.tflite"
    fake.write_bytes(b"\x00" * 64)
    proc = run_cli("train", "--data", str(synthetic_data), "--arch", "mobilenet_v2", "--out", str(tmp_path / "run"),
                   "--epochs", "1", "--img-size", "32", "--weights", str(fake), "--quiet", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "broken.tflite" in proc.stderr.strip().splitlines()[-1]
