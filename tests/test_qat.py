"""``edgecxr train --qat``: the simulated rounding matches what ONNX Runtime's INT8
model computes, training through it yields an ordinary float checkpoint, and the
flag refuses to run without a trained starting point."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import run_cli


def test_per_channel_fake_quant_lands_on_the_folded_int8_grid():
    from edgecxr.train.qat import WEIGHT_QMAX, fake_quant_per_channel

    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    fold = torch.rand(8) * 2 + 0.1
    q = fake_quant_per_channel(w, fold)
    folded = (q * fold.reshape(-1, 1, 1, 1)).detach()
    scale = (w * fold.reshape(-1, 1, 1, 1)).detach().abs().amax(dim=(1, 2, 3), keepdim=True) / WEIGHT_QMAX
    steps = folded / scale
    assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= WEIGHT_QMAX + 1e-3
    assert 0 < float((q - w).detach().abs().max()) <= float(scale.max() / fold.min())
    q.sum().backward()  # straight-through: the gradient reaches the float weights unchanged
    assert torch.equal(w.grad, torch.ones_like(w))


def _probe_model():
    """A MobileNetV2 with non-trivial batch-norm statistics, so the fold matters."""
    from edgecxr.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("mobilenet_v2", 3)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))
        model.head[1].weight.mul_(200)  # logits of order 1, like a trained model's
    return model.eval()


def test_enable_then_remove_leaves_the_float_model_and_its_keys_untouched():
    from edgecxr.train.qat import enable_qat

    model = _probe_model()
    x = torch.randn(4, 3, 32, 32)
    keys = list(model.state_dict())
    with torch.no_grad():
        before = model(x)
        handle = enable_qat(model, "mobilenet_v2")
        simulated = model(x)
        assert list(model.state_dict()) == keys
        handle.remove()
        after = model(x)
    # MobileNetV2: 35 ReLU6, 17 linear bottlenecks, 10 residual sums, pool, logits, input
    assert (handle.weight_layers, handle.activation_points) == (53, 65)
    assert not torch.equal(simulated, before)
    assert torch.equal(after, before)


def test_simulated_int8_is_closer_to_onnx_runtime_int8_than_float_is(tmp_path):
    """QAT simulates the scheme convert deploys by default (portable: u8 x u8), which
    ONNX Runtime computes exactly on every CPU; simulating the other weight grid is worse."""
    from edgecxr.convert.formats.onnx.export import INPUT_NAME, export_fp32
    from edgecxr.convert.formats.onnx.quantize import quantize_int8
    from edgecxr.device.preprocess import PreprocessSpec
    from edgecxr.models.checkpoint import make_contract
    from edgecxr.models.int8_target import resolve_target
    from edgecxr.train.qat import enable_qat

    ort = pytest.importorskip("onnxruntime")
    portable = resolve_target("portable")
    g = torch.Generator().manual_seed(1)
    calib = torch.rand(64, 3, 32, 32, generator=g) * 4 - 2
    test = torch.rand(32, 3, 32, 32, generator=g) * 4 - 2
    model = _probe_model()
    fp32 = tmp_path / "fp32.onnx"
    export_fp32(model, make_contract("mobilenet_v2", ["a", "b", "c"], PreprocessSpec(size=32)), str(fp32))
    int8 = tmp_path / "int8.onnx"
    quantize_int8(str(fp32), str(int8), calib.numpy(), "minmax", (), INPUT_NAME, reduce_range=portable.reduce_range,
                  activations=portable.activations, weights=portable.weights)
    sess = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    deployed = sess.run(None, {INPUT_NAME: test.numpy()})[0]

    def simulated(grid: tuple[bool, int]) -> np.ndarray:
        m = _probe_model()
        with torch.no_grad():
            handle = enable_qat(m, "mobilenet_v2", weight_grid=grid)
            m.train()
            handle.freeze_batch_norm()
            m.head[0].eval()  # dropout off: only the quantizers see training mode (ranges from the calibration batch)
            m(calib)
            m.eval()
            return m(test).numpy()

    with torch.no_grad():
        float_err = np.abs(model(test).numpy() - deployed).mean()
    sim_err = np.abs(simulated(portable.weight_grid) - deployed).mean()
    other_grid_err = np.abs(simulated((False, 64)) - deployed).mean()  # 7-bit symmetric: another scheme
    assert sim_err < 0.75 * float_err, (sim_err, float_err)
    assert sim_err < 0.75 * other_grid_err, (sim_err, other_grid_err)


def test_train_qat_writes_a_plain_float_checkpoint(trained_run, synthetic_data, tmp_path):
    from edgecxr.models.factory import load_model

    out = tmp_path / "qat"
    run_cli("train", "--data", str(synthetic_data), "--arch", "mobilenet_v2", "--out", str(out), "--epochs", "1",
            "--img-size", "32", "--batch-size", "16", "--weights", str(trained_run / "best.pt"),
            "--split-csv", str(trained_run / "split.csv"), "--qat", "--lr", "1e-4", "--quiet")
    model, contract = load_model(str(out / "best.pt"))
    assert contract.arch == "mobilenet_v2"
    assert not any("forward" in vars(m) for m in model.modules())  # a plain model, no simulation left behind
    import json

    assert json.loads((out / "metrics.json").read_text())["config"]["qat"] is True


def test_qat_without_a_trained_starting_point_is_refused(synthetic_data, tmp_path):
    proc = run_cli("train", "--data", str(synthetic_data), "--out", str(tmp_path / "r"), "--qat", "--quiet", check=False)
    assert proc.returncode == 2 and "--weights" in proc.stderr and "Traceback" not in proc.stderr
