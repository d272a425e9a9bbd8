"""INT8 that is correct on the CPU it runs on, tested per CPU class explicitly.

Full-range u8 x s8 ONNX Runtime INT8 saturates on x86 without VNNI; the default
``portable`` target (7-bit weights) is exact everywhere. These tests run the same
files natively and under ``qemu-x86_64-static -cpu Haswell`` (AVX2 only), and
state what each CPU class must give, so no result depends on which machine CI
happens to land on.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from emulation import run_on_haswell

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "device" / "edgecxr_runner.py"
AVX512_VNNI_CPUINFO = "processor : 0\nflags : fpu sse2 avx2 avx512f avx512bw avx512_vnni avx_vnni\n"


# --- what the CPU is ---------------------------------------------------------------------------

def test_features_come_from_cpuid_when_proc_cpuinfo_describes_another_cpu():
    from edgecxr.device.cpufeatures import int8_features

    # qemu-user: CPUID says Haswell while /proc/cpuinfo is still the host's AVX-512 VNNI CPU
    feats, source = int8_features("x86_64", cpuinfo=AVX512_VNNI_CPUINFO, cpuid={"avx2"})
    assert feats == ["avx2"] and source == "cpuid"
    # native: both agree, and /proc/cpuinfo adds avx_vnni, which CPUID via numpy does not name
    feats, source = int8_features("x86_64", cpuinfo=AVX512_VNNI_CPUINFO, cpuid={"avx2", "avx512f", "avx512bw", "avx512_vnni"})
    assert feats == ["avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni"] and "cpuinfo" in source
    feats, _ = int8_features("aarch64", cpuinfo="Features : fp asimd evtstrm crc32 cpuid\n", cpuid={"asimd"})
    assert feats == ["asimd"]


def test_host_target_picks_full_range_only_where_it_is_exact():
    from edgecxr.models.int8_target import resolve_target

    vnni = {"arch": "x86_64", "int8_features": ["avx2", "avx512f", "avx512bw", "avx512_vnni"]}
    avx2 = {"arch": "x86_64", "int8_features": ["avx2"]}
    avx512 = {"arch": "x86_64", "int8_features": ["avx2", "avx512f", "avx512bw"]}  # Skylake-X: saturates too
    pi4 = {"arch": "aarch64", "int8_features": ["asimd"]}
    assert resolve_target("host", vnni).name == "x86-vnni" and not resolve_target("host", vnni).reduce_range
    assert resolve_target("host", avx2).name == "portable" and resolve_target("host", avx2).weights == "uint8"
    assert resolve_target("host", avx512).name == "portable"
    assert resolve_target("host", pi4).name == "arm64"
    assert resolve_target("portable").weight_grid == (False, 255) and resolve_target("x86-vnni").weight_grid == (False, 127)


def test_a_full_range_file_is_refused_only_on_x86_without_vnni():
    from edgecxr.device.cpufeatures import unmet_requirement
    from edgecxr.models.int8_target import PORTABLE, X86_VNNI

    block = X86_VNNI.contract_block({"model": "workstation"})
    avx2 = {"model": "AMD EPYC", "arch": "x86_64", "int8_features": ["avx2"], "target": "x86-avx2"}
    why = unmet_requirement(block, avx2, "onnxruntime 1.31.1")
    assert why and "avx512_vnni or avx_vnni" in why and "AMD EPYC" in why
    assert unmet_requirement(block, {**avx2, "int8_features": ["avx2", "avx_vnni"]}, "onnxruntime 1.31.1") is None
    assert unmet_requirement(block, {"arch": "aarch64", "int8_features": ["asimd"]}, "onnxruntime 1.31.1") is None
    assert unmet_requirement(block, avx2, "openvino 2026.4") is None  # the rule is about ONNX Runtime's kernels
    assert unmet_requirement(PORTABLE.contract_block({}), avx2, "onnxruntime 1.31.1") is None


# --- the kernels themselves, natively and on an emulated AVX2 CPU -------------------------------

SATURATION_PROBE = """
import json, sys
import numpy as np, onnxruntime as ort
from edgecxr.device.cpufeatures import cpu_description
x = np.load(sys.argv[1])
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
out = {}
for path in sys.argv[2:]:
    out[path] = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0].tolist()
print(json.dumps({"cpu": cpu_description(), "outputs": out}))
"""


@pytest.fixture(scope="module")
def saturating_models(tmp_path_factory) -> tuple[Path, list[str]]:
    """A Relu -> 1x1 Conv whose activations sit near the top of their u8 range and whose
    weights all share a sign: every pair of u8*s8 products overflows vpmaddubsw's 16 bits
    at full range (2 x 255 x 127 = 64770 > 32767) and fits at 7 bits (2 x 255 x 64 = 32640);
    u8 x u8 (the portable default) is widened to 16 bits first and cannot overflow."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecxr.convert.formats.onnx.quantize import quantize_int8

    folder = tmp_path_factory.mktemp("saturation")
    rng = np.random.default_rng(0)
    c = 64
    w = rng.uniform(0.5, 1.0, (16, c, 1, 1)).astype(np.float32)
    w[8:] *= -1
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["r"]), helper.make_node("Conv", ["r", "W"], ["out"])], "saturation",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, c, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 16, 4, 4])], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, str(folder / "fp32.onnx"))
    calib = rng.uniform(0.6, 1.0, (32, c, 4, 4)).astype(np.float32)
    calib[0] = 0.0
    quantize_int8(str(folder / "fp32.onnx"), str(folder / "full.onnx"), calib, weights="int8", pre_process=False)
    quantize_int8(str(folder / "fp32.onnx"), str(folder / "portable.onnx"), calib, pre_process=False)  # the defaults: portable
    quantize_int8(str(folder / "fp32.onnx"), str(folder / "w7.onnx"), calib, weights="int8", reduce_range=True, pre_process=False)
    np.save(folder / "x.npy", rng.uniform(0.6, 1.0, (4, c, 4, 4)).astype(np.float32))
    (folder / "probe.py").write_text(SATURATION_PROBE)
    return folder, [str(folder / n) for n in ("fp32.onnx", "full.onnx", "portable.onnx", "w7.onnx")]


def _relative_errors(stdout: str) -> tuple[dict, dict[str, float]]:
    res = json.loads(stdout.strip().splitlines()[-1])
    ref, *_ = res["outputs"].values()
    ref = np.asarray(ref)
    errs = {Path(p).stem: float(np.abs(np.asarray(v) - ref).max() / np.abs(ref).max()) for p, v in res["outputs"].items()}
    return res["cpu"], errs


def test_full_range_int8_saturates_on_emulated_avx2_while_portable_stays_exact(saturating_models):
    folder, models = saturating_models
    proc = run_on_haswell([str(folder / "probe.py"), str(folder / "x.npy"), *models])
    assert proc.returncode == 0, proc.stderr[-2000:]
    cpu, errs = _relative_errors(proc.stdout)
    assert cpu["int8_features"] == ["avx2"] and cpu["target"] == "x86-avx2"  # the emulated CPU is seen as such
    assert errs["portable"] < 0.02 and errs["w7"] < 0.02, errs  # u8 x u8 and 7-bit s8 weights cannot saturate
    assert errs["full"] > 0.15, errs  # the silent wrong answer this project must never ship as "portable"


def test_full_range_int8_on_this_cpu_is_exact_exactly_when_it_has_vnni(saturating_models):
    import subprocess

    folder, models = saturating_models
    proc = subprocess.run([sys.executable, str(folder / "probe.py"), str(folder / "x.npy"), *models], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cpu, errs = _relative_errors(proc.stdout)
    assert errs["portable"] < 0.02, errs
    if cpu["arch"] == "x86_64" and cpu["target"] != "x86-vnni":
        assert errs["full"] > 0.15, (cpu, errs)
    else:  # VNNI or ARM: 32-bit accumulation, exact
        assert errs["full"] < 0.02, (cpu, errs)


# --- the artifacts: refused where wrong, self-tests that can fail --------------------------------

@pytest.fixture(scope="module")
def targeted_exports(probe_models, synthetic_data, tmp_path_factory) -> dict[str, Path]:
    """The probe MobileNetV2 as INT8 ONNX for --target portable and --target x86-vnni, with golden vectors."""
    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint

    good, _ = probe_models
    out = {}
    for target in ("portable", "x86-vnni"):
        folder = tmp_path_factory.mktemp(f"target_{target}")
        opts = ConvertOptions(int8=True, formats=("onnx",), calib_data=str(synthetic_data), calib_n=32,
                              verify_data=str(synthetic_data), target=target)
        convert_checkpoint(str(good), str(folder), opts, progress=False, echo=lambda s: None)
        out[target] = folder / "mobilenet_v2_int8.onnx"
    return out


def test_contract_states_the_target_and_the_conversion_cpu(targeted_exports):
    from edgecxr.device.backends import open_backend

    portable = open_backend(str(targeted_exports["portable"])).contract
    vnni = open_backend(str(targeted_exports["x86-vnni"]), check_cpu=False).contract
    assert portable.target["name"] == "portable" and portable.target["valid_on"] == []
    assert "u8 weights" in portable.target["int8_scheme"]
    assert vnni.target["name"] == "x86-vnni" and {"arch": "aarch64"} in vnni.target["valid_on"]
    for c in (portable, vnni):
        assert c.target["converted_on"]["int8_features"] and c.target["converted_on"]["model"]
        assert len(c.selftest["images"]) == 8 and len(c.selftest["fp32_probs"]) == 8


def test_runner_refuses_a_vnni_only_file_on_avx2_and_its_forced_selftest_fails(targeted_exports):
    vnni = str(targeted_exports["x86-vnni"])
    refused = run_on_haswell([str(RUNNER), "--model", vnni, "--selftest"])
    assert refused.returncode == 2, refused.stdout + refused.stderr
    lines = [ln for ln in refused.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "lacks avx512_vnni or avx_vnni" in lines[0] and "Traceback" not in refused.stderr
    forced = run_on_haswell([str(RUNNER), "--model", vnni, "--selftest", "--ignore-cpu-check"])
    assert forced.returncode == 3, forced.stdout + forced.stderr
    assert "self-test FAIL" in forced.stdout


def test_portable_file_passes_its_selftest_on_avx2_and_natively(targeted_exports):
    import subprocess

    portable = str(targeted_exports["portable"])
    emulated = run_on_haswell([str(RUNNER), "--model", portable, "--selftest"])
    assert emulated.returncode == 0 and "self-test PASS" in emulated.stdout, emulated.stdout + emulated.stderr
    native = subprocess.run([sys.executable, str(RUNNER), "--model", portable, "--selftest"], capture_output=True, text=True, timeout=120)
    assert native.returncode == 0 and "self-test PASS" in native.stdout, native.stdout + native.stderr
