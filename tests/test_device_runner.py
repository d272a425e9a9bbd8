"""The standalone Pi runner (device/edgecxr_runner.py): same answers as the toolkit,
runnable from a bare copy of device/ without edgecxr or OpenCV, one-line errors for
bad input, camera mode on a real video file, and bench JSON in bench's shape."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import site
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgecxr.device import _npimage
from edgecxr.device.classify import Classifier
from edgecxr.device.edgecxr_runner import main as runner_main
from edgecxr.device.image_io import load_gray
from edgecxr.device.latency import latency_record
from edgecxr.device.preprocess import preprocess

ROOT = Path(__file__).resolve().parents[1]
SITE = site.getsitepackages()[0]


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def models(trained_run, synthetic_data, tmp_path_factory) -> dict[str, Path]:
    """tiny FP32/INT8 TFLite (TF converter) + the trained checkpoint as ONNX, all with contracts."""
    out = tmp_path_factory.mktemp("device_models")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "dev" / "device_test_models.py"), str(out), "--checkpoint",
                    str(trained_run / "best.pt"), "--data", str(synthetic_data)], check=True, capture_output=True, timeout=600)
    return {"tflite_fp32": out / "tiny_fp32.tflite", "tflite_int8": out / "tiny_int8.tflite", "onnx_fp32": out / "model_fp32.onnx"}


@pytest.fixture(scope="module")
def images(synthetic_data) -> list[Path]:
    return [sorted((synthetic_data / c).glob("*.png"))[i] for c in sorted(os.listdir(synthetic_data))
            if (synthetic_data / c).is_dir() for i in (0, 1)]


@pytest.fixture(scope="module")
def bare_device(tmp_path_factory) -> dict[str, object]:
    """device/ copied alone, plus an environment in which edgecxr cannot be imported."""
    root = tmp_path_factory.mktemp("bare")
    shutil.copytree(ROOT / "device", root / "device", ignore=shutil.ignore_patterns("__pycache__"))
    no_cv2 = root / "no_cv2"
    no_cv2.mkdir()
    (no_cv2 / "cv2.py").write_text("raise ImportError('OpenCV hidden for this test')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = SITE  # with -S: site-packages without .pth files, so no editable edgecxr
    env_no_cv2 = {**env, "PYTHONPATH": f"{no_cv2}{os.pathsep}{SITE}"}
    return {"runner": str(root / "device" / "edgecxr_runner.py"), "cwd": str(root), "env": env, "env_no_cv2": env_no_cv2}


def _bare(bare: dict, *args: str, opencv: bool = True, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-S", bare["runner"], *args], capture_output=True, text=True, timeout=300,
                          cwd=bare["cwd"], env=bare["env"] if opencv else bare["env_no_cv2"])
    if check and proc.returncode != 0:
        raise AssertionError(f"runner exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def _reference_probs(model: Path, files: list[Path]) -> np.ndarray:
    """What the workstation toolkit computes: edgecxr.models.runtime + evaluate.predict_probs."""
    from edgecxr.eval.evaluate import predict_probs
    from edgecxr.models.runtime import open_model

    backend = open_model(str(model))
    x = np.stack([preprocess(load_gray(str(f)), backend.contract.preprocess) for f in files])
    return predict_probs(backend, x)


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# ------------------------------------------------------------ same answers
@pytest.mark.parametrize("kind", ["tflite_fp32", "tflite_int8", "onnx_fp32"])
def test_bare_device_copy_gives_the_toolkits_probabilities(kind, models, images, bare_device):
    probe = subprocess.run([sys.executable, "-S", "-c", "import edgecxr"], env=bare_device["env"], cwd=bare_device["cwd"],
                           capture_output=True, text=True)
    assert probe.returncode != 0, "the bare environment must not see the edgecxr package"
    folder = Path(bare_device["cwd"]) / f"imgs_{kind}"
    folder.mkdir(exist_ok=True)
    for f in images:
        shutil.copy(f, folder / f"{f.parent.name}_{f.name}")
    proc = _bare(bare_device, "--model", str(models[kind]), "--dir", str(folder), "--json", "--csv", str(folder) + ".csv")
    rows = _json_lines(proc.stdout)
    assert [r["file"] for r in rows] == sorted(os.listdir(folder))
    got = np.array([[r["probabilities"][c] for c in rows[0]["probabilities"]] for r in rows])
    want = _reference_probs(models[kind], [folder / r["file"] for r in rows])
    tol = 0 if kind == "tflite_int8" else 1e-6  # INT8: identical integers in, identical integers out
    assert np.abs(got - want).max() <= tol + 1e-7  # JSON rounds to 7 decimals
    runtime = "onnxruntime" if kind.startswith("onnx") else "ai-edge-litert"
    assert runtime in proc.stderr  # the interpreter and its version are reported


def test_image_mode_prints_top_k_with_inference_and_runner_time(models, images):
    proc = subprocess.run([sys.executable, str(ROOT / "device" / "edgecxr_runner.py"), "--model", str(models["tflite_int8"]),
                           "--image", str(images[0]), "--top-k", "2", "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    header, line = proc.stdout.strip().splitlines()
    assert "runtime ai-edge-litert" in header and "int8" in header and "NHWC" in header
    assert line.count(" 0.") + line.count(" 1.0") >= 2 and "inference" in line and "runner" in line


# ------------------------------------------------------------- without OpenCV
def test_without_opencv_png_gives_the_same_answer(models, images, bare_device):
    with_cv = _json_lines(_bare(bare_device, "--model", str(models["tflite_fp32"]), "--image", str(images[0]), "--json").stdout)
    proc = _bare(bare_device, "--model", str(models["tflite_fp32"]), "--image", str(images[0]), "--json", opencv=False)
    without = _json_lines(proc.stdout)
    a = np.array(list(with_cv[0]["probabilities"].values()))
    b = np.array(list(without[0]["probabilities"].values()))
    assert np.abs(a - b).max() <= 1e-6, (a, b)


def test_without_opencv_jpeg_and_camera_name_the_package_to_install(models, images, bare_device, tmp_path):
    jpg = tmp_path / "x.jpg"
    cv2.imwrite(str(jpg), cv2.imread(str(images[0]), cv2.IMREAD_GRAYSCALE))
    for args in (["--image", str(jpg)], ["--camera", "0"]):
        proc = _bare(bare_device, "--model", str(models["tflite_fp32"]), *args, opencv=False, check=False)
        assert proc.returncode == 2
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("edgecxr-runner: error:") and "pip install opencv-python-headless" in last


def test_numpy_fallbacks_match_opencv(covid_data_or_synthetic):
    """Tolerance: bit-exact for decoding, shrinking, equalisation, CLAHE, 3x3 blurs;
    at most 1 grey level for bilinear enlarging (OpenCV's fixed point)."""
    for f in covid_data_or_synthetic:
        data = f.read_bytes()
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(_npimage.decode_png(data), img)
        gray = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        for size in (32, 48, 224 if gray.shape[0] > 224 else 40):
            assert np.array_equal(_npimage.resize(gray, size), cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA))
        up = np.abs(_npimage.resize(gray, gray.shape[0] + 37).astype(int)
                    - cv2.resize(gray, (gray.shape[0] + 37,) * 2, interpolation=cv2.INTER_LINEAR))
        assert up.max() <= 1
        assert np.array_equal(_npimage.equalize_hist(gray), cv2.equalizeHist(gray))
        for clip, grid in ((2.0, 8), (3.0, 5)):
            assert np.array_equal(_npimage.clahe(gray, clip, grid), cv2.createCLAHE(clip, (grid, grid)).apply(gray))
        for k in (3, 5):
            assert np.array_equal(_npimage.gaussian_blur(gray, k), cv2.GaussianBlur(gray, (k, k), 0))
            assert np.array_equal(_npimage.median_blur(gray, k), cv2.medianBlur(gray, k))


@pytest.fixture(scope="module")
def covid_data_or_synthetic(synthetic_data) -> list[Path]:
    real = ROOT.parent / "shared" / "data" / "covid-radiography"
    if real.is_dir():
        return [sorted((real / c).glob("*.png"))[7] for c in ("COVID", "Normal", "Viral_Pneumonia")]
    return [sorted(d.glob("*.png"))[0] for d in sorted(synthetic_data.iterdir()) if d.is_dir()]


def test_png_decoder_reads_every_colour_type_and_depth_like_opencv(tmp_path):
    rng = np.random.default_rng(1)
    base = cv2.GaussianBlur(rng.integers(0, 256, (23, 31, 4), dtype=np.uint8), (5, 5), 0)
    cases = {"gray8": base[:, :, 0], "bgr8": base[:, :, :3], "bgra8": base,
             "gray16": base[:, :, 0].astype(np.uint16) * 257 + 3, "bgr16": base[:, :, :3].astype(np.uint16) * 100}
    for name, img in cases.items():
        path = tmp_path / f"{name}.png"
        cv2.imwrite(str(path), img)
        data = path.read_bytes()
        assert np.array_equal(_npimage.decode_png(data), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)), name
        assert np.array_equal(_npimage.decode_png(_npimage.encode_png(img)), img), name


def test_png_decoder_rejects_truncated_and_corrupt_files():
    data = _npimage.encode_png(np.arange(256, dtype=np.uint8).reshape(16, 16))
    with pytest.raises(_npimage.PNGError, match="truncated"):
        _npimage.decode_png(data[: len(data) // 2])
    bad = bytearray(data)
    bad[40] ^= 0xFF  # inside IDAT: its CRC no longer matches
    with pytest.raises(_npimage.PNGError, match="CRC"):
        _npimage.decode_png(bytes(bad))
    with pytest.raises(_npimage.PNGError, match="signature"):
        _npimage.decode_png(b"GIF89a" + data[6:])


# ----------------------------------------------------------------- bad input
def _run_inline(capsys, *args: str) -> tuple[int, str, str]:
    rc = runner_main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("edgecxr-runner: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, models) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    good = _npimage.encode_png(np.full((40, 40), 120, np.uint8))
    (d / "notes.txt").write_text("not an image")
    (d / "corrupt.png").write_bytes(good[:60])
    (d / "empty.png").write_bytes(b"")
    (d / "huge.png").write_bytes(_npimage.encode_png(np.zeros((7100, 7100), np.uint8)))  # 50.4 M pixels
    (d / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    shutil.copy(models["tflite_fp32"], d / "nocontract.tflite")
    shutil.copy(models["tflite_fp32"], d / "mismatch.tflite")
    contract = json.loads(Path(str(models["tflite_fp32"]) + ".json").read_text())
    contract["input"]["shape"] = [1, 64, 64, 3]
    (d / "mismatch.tflite.json").write_text(json.dumps(contract))
    (d / "garbage.tflite").write_bytes(b"\x00" * 64)
    return d


@pytest.mark.parametrize("case, expect", [
    ("missing_image", "no such file"), ("non_image", "not an image"), ("corrupt", "corrupt or truncated"),
    ("empty", "empty file"), ("huge", "larger than"), ("fake_jpeg", "corrupt or truncated JPG"),
    ("no_contract", "no edgecxr contract"), ("contract_mismatch", "contract says input shape"),
    ("missing_model", "model file not found"), ("garbage_model", "not a loadable TFLite model"),
    ("no_camera", "no camera at index 7"), ("no_source", "give one of --image"),
])
def test_bad_input_is_one_line_error_and_exit_2(case, expect, bad_files, models, images, capsys):
    m, d = str(models["tflite_fp32"]), bad_files
    args = {
        "missing_image": ["--model", m, "--image", str(d / "nope.png")],
        "non_image": ["--model", m, "--image", str(d / "notes.txt")],
        "corrupt": ["--model", m, "--image", str(d / "corrupt.png")],
        "empty": ["--model", m, "--image", str(d / "empty.png")],
        "huge": ["--model", m, "--image", str(d / "huge.png")],
        "fake_jpeg": ["--model", m, "--image", str(d / "fake.jpg")],
        "no_contract": ["--model", str(d / "nocontract.tflite"), "--image", str(images[0])],
        "contract_mismatch": ["--model", str(d / "mismatch.tflite"), "--image", str(images[0])],
        "missing_model": ["--model", str(d / "none.tflite"), "--image", str(images[0])],
        "garbage_model": ["--model", str(d / "garbage.tflite"), "--image", str(images[0])],
        "no_camera": ["--model", m, "--camera", "7"],
        "no_source": ["--model", m],
    }[case]
    rc, _out, err = _run_inline(capsys, *args)
    assert rc == 2
    assert expect in _one_line_error(err)


def test_16bit_and_rgba_images_classify_like_their_8bit_grey(models, images, tmp_path, capsys):
    gray = cv2.normalize(cv2.imread(str(images[0]), cv2.IMREAD_GRAYSCALE), None, 0, 255, cv2.NORM_MINMAX)
    cv2.imwrite(str(tmp_path / "g8.png"), gray)  # full range, so 16-bit min-max scaling is lossless
    gray16 = gray.astype(np.uint16) * 257  # full 16-bit range: min-max scaling gives the 8-bit image back
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 200)])
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    results = []
    for f in (tmp_path / "g8.png", tmp_path / "g16.png", tmp_path / "rgba.png"):
        rc, out, _ = _run_inline(capsys, "--model", str(models["tflite_fp32"]), "--image", str(f), "--json")
        assert rc == 0
        results.append(_json_lines(out)[0]["probabilities"])
    assert results[0] == results[1] == results[2]


def test_dir_mode_reports_and_skips_bad_files_and_writes_csv(models, images, bad_files, tmp_path, capsys):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(images[0], folder / "a.png")
    shutil.copy(images[3], folder / "sub" / "b.png")
    for name in ("corrupt.png", "empty.png", "notes.txt"):
        shutil.copy(bad_files / name, folder / name)
    out_csv = tmp_path / "pred.csv"
    rc, out, err = _run_inline(capsys, "--model", str(models["tflite_int8"]), "--dir", str(folder), "--csv", str(out_csv))
    assert rc == 0
    assert "skipped" in err and "corrupt.png" in err and "empty.png" in err
    assert re.search(r"2 image\(s\) classified( \(\d+ answered, \d+ refer: \d+ uncertain, \d+ unfamiliar; \d+ refused[^)]*\))?, "
                     r"2 skipped, ignored 1 non-image file\(s\)", err), err
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["file"] for r in rows] == ["a.png", "corrupt.png", "empty.png", os.path.join("sub", "b.png")]
    ok = [r for r in rows if not r["error"]]
    assert len(ok) == 2 and all(abs(sum(float(r[k]) for k in r if k.startswith("p_")) - 1) < 1e-5 for r in ok)


# --------------------------------------------------------------------- bench
def test_bench_prints_latency_record_with_device_and_runner_overhead(models, images, capsys):
    rc, out, err = _run_inline(capsys, "--model", str(models["tflite_int8"]), "--bench", "--image", str(images[0]),
                               "--warmup", "2", "--runs", "15", "--threads", "1")
    assert rc == 0
    rec = json.loads(out)
    assert set(latency_record([1.0, 2.0], threads=1, warmup=2)) <= set(rec)
    assert rec["n_runs"] == 15 and rec["threads"] == 1 and rec["warmup"] == 2 and rec["load_ms"] > 0
    assert rec["runtime"].startswith("ai-edge-litert ") and rec["precision"] == "int8"
    assert f"Python {sys.version.split()[0]}" in rec["device"] and rec["device_info"]["cores"] >= 1
    assert rec["emulated"] is False
    assert {"decode_ms", "preprocess_ms", "quantize_ms", "postprocess_ms", "total_ms"} <= set(rec["runner_overhead_ms"])


# -------------------------------------------------------------------- camera
def _write_video(path: Path, frames: int, size: int = 48) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (size, size))
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(frames):
        g = (128 + 100 * np.sin((xx + 2 * i) / 6.0) * np.cos(yy / 9.0)).astype(np.uint8)
        writer.write(cv2.cvtColor(g, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def test_camera_mode_classifies_every_nth_frame_until_max_frames(models, tmp_path, capsys):
    video = _write_video(tmp_path / "cam.avi", 12)
    rc, out, err = _run_inline(capsys, "--model", str(models["tflite_fp32"]), "--camera", str(video), "--json",
                               "--max-frames", "9", "--every", "2")
    assert rc == 0
    rows = _json_lines(out)
    assert [r["file"] for r in rows] == ["frame 1", "frame 3", "frame 5", "frame 7", "frame 9"]
    assert all(r["fps"] > 0 and r["label"] in r["probabilities"] for r in rows)
    assert "done: 9 frames read, 5 classified" in err


def test_camera_mode_keeps_running_over_dropped_and_bad_frames(models, tmp_path, capsys):
    from edgecxr.device.backends import open_backend
    from edgecxr.device.camera import run_camera

    class FlakyCamera:
        """A real capture of a real video whose 2nd read fails and 4th frame is garbage."""

        def __init__(self, path: str) -> None:
            self.cap, self.reads = cv2.VideoCapture(path), 0

        def read(self):
            self.reads += 1
            if self.reads == 2:
                return False, None
            ok, frame = self.cap.read()
            return (ok, np.zeros((5, 0), np.float32)) if self.reads == 4 else (ok, frame)

        def release(self) -> None:
            self.cap.release()

    video = _write_video(tmp_path / "cam.avi", 8)
    clf = Classifier(open_backend(str(models["tflite_int8"]), require_contract=True))
    counts = run_camera(clf, FlakyCamera(str(video)), is_file=False, max_frames=6)
    out, err = capsys.readouterr()
    assert counts["dropped"] == 1 and counts["bad"] == 1 and counts["read"] == 6 and counts["classified"] == 5
    assert "dropped" in err and "skipped" in err and len(out.strip().splitlines()) == 5


def test_camera_mode_stops_cleanly_on_ctrl_c(models, tmp_path):
    video = _write_video(tmp_path / "long.avi", 300)
    proc = subprocess.Popen([sys.executable, str(ROOT / "device" / "edgecxr_runner.py"), "--model", str(models["tflite_fp32"]),
                             "--camera", str(video), "--max-fps", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        header = proc.stdout.readline()
        first = proc.stdout.readline()
        assert "model" in header and first.startswith("frame 1:")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "interrupted:" in err


def test_sysinfo_names_cpu_os_python_and_runtime():
    from edgecxr.device.sysinfo import device_info, device_string

    info = device_info("ai-edge-litert 2.3.0")
    s = device_string("ai-edge-litert 2.3.0", info)
    assert info["cpu"] and info["cores"] >= 1 and info["os"] and "ai-edge-litert 2.3.0" in s and "Python" in s


# ------------------------------------------------------------ Pi install files
def test_pi_install_files_are_consistent_with_what_was_verified():
    from importlib.metadata import version

    from edgecxr.device.edgecxr_runner import build_parser

    reqs = dict(line.split("==") for line in (ROOT / "device" / "requirements.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert reqs == {"numpy": version("numpy"), "ai-edge-litert": version("ai-edge-litert")}  # the pair aarch64_check runs
    assert subprocess.run(["bash", "-n", str(ROOT / "device" / "install.sh")]).returncode == 0
    unit = (ROOT / "device" / "edgecxr-camera.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = exec_start.split("=", 1)[1].split()
    assert argv[1].endswith("/edgecxr_runner.py")
    args = build_parser().parse_args(argv[2:])
    assert args.camera == "0" and args.json and args.model.endswith(".tflite")
