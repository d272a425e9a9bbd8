"""ExecuTorch: .pte programs (XNNPACK delegate) converted at every precision and verified
against PyTorch, run by the Pi runner, the threadpool size applied, and a missing runtime
named with its pip command.

One conversion of the shared ``trained_run`` checkpoint (32 px) with the real
ExecuTorch exporter and runtime; INT8 is calibrated on the run's own (synthetic) images.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch.extension.pybindings._C", reason="ExecuTorch not installed (pip install -r requirements.txt)")

from helpers import run_bare_runner

ROOT = Path(__file__).resolve().parents[1]
RUNNER = str(ROOT / "device" / "edgecxr_runner.py")


@pytest.fixture(scope="module")
def et_export(trained_run: Path, tmp_path_factory) -> tuple[Path, dict]:
    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint

    out = tmp_path_factory.mktemp("et") / "exp"
    rep = convert_checkpoint(str(trained_run / "best.pt"), str(out), ConvertOptions(formats=("executorch",), int8=True, threads=1),
                             progress=False, echo=lambda s: None)
    return out, rep


def _check_artifact(out: Path, art: dict, precision: str) -> None:
    from edgecxr.convert.formats import get_format
    from edgecxr.convert.verify import MIN_AGREEMENT

    pte = out / f"mobilenet_v2_{precision}.pte"
    assert art["status"] == "ok", art
    assert art["file"] == pte.name and art["bytes"] == pte.stat().st_size  # the program, not its sidecar
    assert art["details"]["delegates"] >= 1
    assert art["verify"]["top1_agreement"] >= MIN_AGREEMENT and art["verify"]["runtime"].startswith("executorch")
    contract = get_format("executorch").read_contract(str(pte))
    assert (contract.format, contract.precision, contract.arch) == ("executorch", precision, "mobilenet_v2")
    assert contract.selftest["images"] and contract.versions["executorch"]


def test_pte_fp32_and_int8_are_converted_verified_and_carry_their_contract_in_a_sidecar(et_export, trained_run):
    from edgecxr.convert.formats import find_artifacts, get_format
    from edgecxr.convert.formats.checkpoint import torch_stats

    out, rep = et_export
    arts = {a["precision"]: a for a in rep["artifacts"] if a["format"] == "executorch"}
    assert sorted(arts) == ["fp32", "int8"]
    for precision, art in arts.items():
        _check_artifact(out, art, precision)
    assert arts["fp32"]["verify"]["max_abs_logit_diff"] < 1e-3
    assert arts["int8"]["details"]["calibration_images"] >= 16 and "per-channel" in arts["int8"]["details"]["scheme"]
    assert [n.format for _, n in find_artifacts(str(out))].count("executorch") == 2
    stats = get_format("executorch").graph_stats(str(out / "mobilenet_v2_fp32.pte"))
    assert stats["macs"] == torch_stats(str(trained_run / "best.pt"))["macs"] > 0


def test_int8_pte_stores_int8_weights(et_export):
    out, _ = et_export
    fp32, int8 = (out / "mobilenet_v2_fp32.pte").stat().st_size, (out / "mobilenet_v2_int8.pte").stat().st_size
    assert int8 < 0.4 * fp32, (fp32, int8)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_runner_passes_the_selftest_then_classifies_an_image_like_eval(precision, et_export, synthetic_data):
    from edgecxr.device.decision import softmax
    from edgecxr.device.image_io import load_gray
    from edgecxr.device.preprocess import preprocess
    from edgecxr.models.runtime import open_model

    image = sorted(synthetic_data.rglob("*.png"))[0]
    model = str(et_export[0] / f"mobilenet_v2_{precision}.pte")
    proc = subprocess.run([sys.executable, RUNNER, "--model", model, "--runtime", "executorch", "--selftest", "--image", str(image),
                           "--json", "--threads", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    selftest, rec = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert selftest["selftest"]["passed"] is True, selftest
    backend = open_model(model, 1)
    p = softmax(backend.predict(preprocess(load_gray(str(image)), backend.contract.preprocess)[None]).astype(np.float64))[0]
    got = np.array([rec["probabilities"][c] for c in backend.contract.classes])
    np.testing.assert_allclose(got, p, atol=1e-4)


@pytest.mark.slow
def test_pte_fp16_is_converted_verified_and_passes_its_selftest(trained_run, tmp_path):
    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint

    out = tmp_path / "exp"
    rep = convert_checkpoint(str(trained_run / "best.pt"), str(out), ConvertOptions(formats=("executorch",), fp16=True, threads=1),
                             progress=False, echo=lambda s: None)
    (art,) = [a for a in rep["artifacts"] if a["format"] == "executorch" and a["precision"] == "fp16"]
    _check_artifact(out, art, "fp16")
    assert art["verify"]["max_abs_prob_diff"] < 0.05
    proc = subprocess.run([sys.executable, RUNNER, "--model", str(out / "mobilenet_v2_fp16.pte"), "--selftest", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "self-test PASS" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_runner_names_the_package_when_executorch_is_missing(et_export, tmp_path):
    proc = run_bare_runner(tmp_path, "--model", str(et_export[0] / "mobilenet_v2_fp32.pte"), "--selftest", hide=("executorch",), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install executorch torch" in lines[0] and "Traceback" not in proc.stderr


def _busy_ticks_outside(fn, calls: int) -> tuple[int, int]:
    """CPU ticks of the calling thread and of all other threads of this process while ``fn`` runs ``calls`` times."""
    def ticks() -> dict[str, int]:
        out = {}
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            out[tid] = int(fields[11]) + int(fields[12])
        return out

    me = str(threading.get_native_id())
    before = ticks()
    for _ in range(calls):
        fn()
    after = ticks()
    spent = {t: v - before.get(t, 0) for t, v in after.items()}
    return spent.get(me, 0), sum(v for t, v in spent.items() if t != me)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2, reason="needs Linux /proc and 2 CPUs")
def test_threads_set_the_xnnpack_threadpool_one_thread_works_alone_two_share(tmp_path):
    import torch

    from edgecxr.convert.formats.executorch.export import lower
    from edgecxr.device.runtimes.executorch_xnnpack import import_executorch, set_threads

    torch.manual_seed(0)
    net = torch.nn.Sequential(*[m for _ in range(4) for m in (torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU())]).eval()
    shape = (1, 32, 96, 96)  # about 340 M MACs: enough work per call for XNNPACK to split it
    lower(net, shape, str(tmp_path / "convs.pte"))
    pybindings, _ = import_executorch()
    x = [torch.randn(shape)]
    shares = {}
    try:
        for threads in (1, 2):
            assert set_threads(pybindings, threads) == threads
            program = pybindings._load_program(str(tmp_path / "convs.pte"))
            method = program.load_method("forward")
            method(x)
            mine, others = _busy_ticks_outside(lambda m=method: m(x), 60)
            shares[threads] = others / max(mine + others, 1)
    finally:
        set_threads(pybindings, os.cpu_count())
    assert shares[1] < 0.05 and shares[2] > 0.2, shares


def test_int8_observes_relu6_after_its_convolution_not_before():
    """The quantizer's default shares the conv output's int8 grid with ReLU6, so the grid spans the
    unclamped output; the clamp must sit between the convolution and its quantize node."""
    import torch

    from edgecxr.convert.formats.executorch.export import quantize_int8

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(inplace=True),
                              torch.nn.Conv2d(8, 4, 1), torch.nn.ReLU6()).eval()
    yy, xx = np.mgrid[0:16, 0:16] / 16.0
    calib = np.stack([np.stack([np.sin(xx * k), np.cos(yy * k), xx * yy]) for k in range(1, 9)]).astype(np.float32)
    graph = quantize_int8(net, (1, 3, 16, 16), calib).graph
    clamps = [n for n in graph.nodes if n.op == "call_function" and "hardtanh" in str(n.target)]
    assert len(clamps) == 2
    for clamp in clamps:
        assert "conv2d" in str(clamp.args[0].target), clamp.args[0].target  # not a dequantize of the conv output
        assert any("quantize_per_tensor" in str(u.target) for u in clamp.users)
