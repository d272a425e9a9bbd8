"""``edgecxr bench --host``: the Raspberry Pi path against a real OpenSSH server.

The "Pi" is this machine on 127.0.0.1 (sshd from tests/sshd.py), running the
device runner with this venv's Python (``--remote-python``). Nothing is mocked:
files go over SFTP, commands over an SSH channel, host keys are checked.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from helpers import run_cli

pytest_plugins = ["bench_fixtures"]  # export_dir and sshd_server, built once per session
pytestmark = pytest.mark.ssh


def _remote_tmp_dirs() -> set[str]:
    return set(glob.glob("/tmp/edgecxr-bench.*"))


def _ssh_args(server, known_hosts: Path, *extra: str) -> list[str]:
    return ["--host", server.target, "--identity", str(server.client_key), "--known-hosts", str(known_hosts),
            "--remote-python", sys.executable, *extra]


@pytest.fixture()
def known_hosts(sshd_server, tmp_path) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(sshd_server.known_hosts_line())
    return path


def test_bench_over_ssh_merges_pi_rows_and_cleans_up(sshd_server, known_hosts, export_dir, tmp_path):
    # a file name full of shell syntax: it must arrive as one literal word
    evil = tmp_path / "models" / "m; touch PWNED; $(touch PWNED2) `id`'.onnx"
    evil.parent.mkdir()
    shutil.copy(export_dir / "mobilenet_v2_int8.onnx", evil)
    before = _remote_tmp_dirs()
    out = tmp_path / "out"
    proc = run_cli("bench", str(export_dir / "mobilenet_v2_int8.tflite"), str(evil),
                   *_ssh_args(sshd_server, known_hosts, "--device", "host", "--device", "rpi"),
                   "--threads", "1", "--runs", "5", "--warmup", "1", "--bootstrap", "20", "--remote-images", "3",
                   "--out", str(out), "--quiet")
    doc = json.loads((out / "bench.json").read_text())
    pi = [r for r in doc["rows"] if r["device"] == "rpi"]
    host = [r for r in doc["rows"] if r["device"] == "host"]
    assert len(pi) == len(host) == 2
    for r in pi:
        assert "error" not in r, r.get("error")
        assert len(r["runs_ms"]) == 5 and r["peak_rss_mb"] > 0 and r["load_ms"] > 0
        assert r["device_string"] == doc["devices"]["rpi"]["summary"] + " | " + r["runtime"]
        assert r["pi_host_top1_agreement"] == 1.0  # same runtime on the same CPU: identical predictions
        assert r["macro_f1"] is not None and r["accuracy_from"].startswith("host")
    assert re.search(r"^\S.*\s{2}rpi\s{2}", proc.stdout, re.M)  # a table row whose device cell is rpi
    assert _remote_tmp_dirs() == before, "the temporary folder on the Pi was not removed"
    for home in (Path.home(), Path("/"), Path.cwd(), tmp_path):
        assert not (home / "PWNED").exists() and not (home / "PWNED2").exists()


def test_unknown_host_key_is_refused_unless_accepted_explicitly(sshd_server, export_dir, tmp_path):
    kh = tmp_path / "kh"
    args = [str(export_dir / "mobilenet_v2_int8.tflite"), "--threads", "1", "--runs", "2", "--warmup", "0",
            "--bootstrap", "0", "--out", str(tmp_path / "o"), "--quiet"]
    proc = run_cli("bench", *args, *_ssh_args(sshd_server, kh), check=False)
    assert proc.returncode == 2 and "host key not in" in proc.stderr and "--accept-new-host-key" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    run_cli("bench", *args, *_ssh_args(sshd_server, kh, "--accept-new-host-key"))
    assert sshd_server.host_pub.split()[1] in kh.read_text()
    run_cli("bench", *args, *_ssh_args(sshd_server, kh))  # now known: no flag needed


def test_changed_host_key_is_refused_even_with_accept_flag(sshd_server, export_dir, tmp_path):
    import subprocess

    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kh = tmp_path / "kh"
    kh.write_text(f"[{sshd_server.host}]:{sshd_server.port} " + " ".join(Path(f"{other}.pub").read_text().split()[:2]) + "\n")
    proc = run_cli("bench", str(export_dir / "mobilenet_v2_int8.tflite"), *_ssh_args(sshd_server, kh, "--accept-new-host-key"),
                   "--out", str(tmp_path / "o"), "--quiet", check=False)
    assert proc.returncode == 2 and "CHANGED" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_remote_packages_print_the_install_command(sshd_server, known_hosts, export_dir, tmp_path):
    bare = shutil.which("python3", path="/usr/bin")
    if bare is None or os.system(f"{bare} -c 'import numpy' 2>/dev/null") == 0:
        pytest.skip("needs a system python3 without numpy")
    args = _ssh_args(sshd_server, known_hosts)
    args[args.index("--remote-python") + 1] = bare
    proc = run_cli("bench", str(export_dir / "mobilenet_v2_int8.tflite"), *args, "--out", str(tmp_path / "o"), "--quiet", check=False)
    assert proc.returncode == 2
    assert f"install with: {bare} -m pip install numpy ai-edge-litert" in proc.stderr


def test_unreachable_host_is_one_line(export_dir, tmp_path):
    proc = run_cli("bench", str(export_dir / "mobilenet_v2_int8.tflite"), "--host", "pi@127.0.0.1:1",
                   "--known-hosts", str(tmp_path / "kh"), "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and "cannot reach the Pi" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("text,expected", [
    ("pi@raspberrypi.local", ("pi", "raspberrypi.local", 22)),
    ("pi@10.0.0.7:2222", ("pi", "10.0.0.7", 2222)),
    ("pi@[fe80::1]:2200", ("pi", "fe80::1", 2200)),
    ("10.0.0.7", (None, "10.0.0.7", 22)),
])
def test_host_argument_parsing(text, expected):
    from edgecxr.bench.remote import parse_target

    t = parse_target(text)
    assert (t.user, t.host, t.port) == expected


@pytest.mark.parametrize("bad", ["pi@host:99999", "pi@ho st", "pi@host;rm -rf /", ""])
def test_bad_host_argument_is_refused(bad):
    from edgecxr.bench.remote import parse_target
    from edgecxr.errors import EdgecxrError

    with pytest.raises(EdgecxrError):
        parse_target(bad)


def test_remote_command_quotes_every_argument():
    import shlex

    from edgecxr.bench.remote import quote_command

    argv = ["python3", "/tmp/x/m; rm -rf ~ $(id) `id` 'q'.tflite", "--threads", "1"]
    line = quote_command(argv, cwd="/tmp/a b")
    assert shlex.split(line) == ["cd", "/tmp/a b", "&&", *argv]


AARCH64_CACHE = Path(os.environ.get("EDGECXR_AARCH64_CACHE", Path.home() / ".cache" / "edgecxr-aarch64"))


@pytest.mark.slow
@pytest.mark.aarch64
def test_ssh_path_with_an_aarch64_python_under_qemu(sshd_server, known_hosts, export_dir, tmp_path):
    """The whole Pi path with an arm64 interpreter (Cortex-A72 under qemu-user, the cache
    scripts/reproduce/aarch64_check.sh builds): correct predictions, rows flagged as emulated."""
    qemu = shutil.which("qemu-aarch64-static")
    sites = sorted(AARCH64_CACHE.glob("site-numpy*-litert*"))
    if not qemu or not (AARCH64_CACHE / "root" / "usr" / "bin" / "python3.11").exists() or not sites:
        pytest.skip("no qemu-aarch64-static or arm64 Python cache (run scripts/reproduce/aarch64_check.sh once)")
    wrapper = tmp_path / "python3-arm64"
    wrapper.write_text(f"#!/bin/sh\nexport PYTHONPATH={sites[-1]} EDGECXR_EMULATED=1\n"
                       f"exec {qemu} -L {AARCH64_CACHE / 'root'} -cpu cortex-a72 {AARCH64_CACHE / 'root/usr/bin/python3.11'} \"$@\"\n")
    wrapper.chmod(0o755)
    args = _ssh_args(sshd_server, known_hosts)
    args[args.index("--remote-python") + 1] = str(wrapper)
    out = tmp_path / "out"
    run_cli("bench", str(export_dir / "mobilenet_v2_int8.tflite"), str(export_dir / "mobilenet_v2_fp32.tflite"), *args,
            "--threads", "1", "--runs", "3", "--warmup", "1", "--remote-images", "4", "--bootstrap", "20", "--out", str(out), "--quiet")
    doc = json.loads((out / "bench.json").read_text())
    assert doc["devices"]["rpi"]["machine"] == "aarch64" and doc["devices"]["rpi"]["emulated"] is True
    for r in doc["rows"]:
        assert r["device"] == "rpi (EMULATED)" and "EMULATED" in r["device_string"]
        assert r["pi_host_top1_agreement"] == 1.0


# --- every runtime of device/runtimes/ over the same SSH path ------------------------------------------------

# the companions each format must bring along (the primary file's own suffix first)
TRAVELS_WITH = {
    "openvino": (".xml", ".bin"),  # contract inside the .xml (rt_info)
    "ncnn": (".ncnn.param", ".ncnn.bin", ".ncnn.param.json"),
    "executorch": (".pte", ".pte.json"),
}


@pytest.fixture(scope="module")
def runtime_exports(trained_run, tmp_path_factory) -> Path:
    """FP32 files of every format above that convert's table registers (one convert)."""
    from edgecxr.convert.formats import FORMATS

    names = [f.name for f in FORMATS if f.name in TRAVELS_WITH]
    if not names:
        pytest.skip("none of openvino, ncnn, executorch is registered in convert/formats")
    out = tmp_path_factory.mktemp("runtime_export") / "export"
    run_cli("convert", str(trained_run / "best.pt"), "--out", str(out), "--formats", ",".join(names), "--threads", "1", "--quiet")
    return out


@pytest.fixture(scope="module")
def runtime_bench(sshd_server, runtime_exports, tmp_path_factory) -> tuple[dict, set[str], set[str]]:
    """One ``bench --device rpi --host`` over every file of ``runtime_exports``: (bench.json, Pi temp dirs before, after)."""
    from edgecxr.device.formats import device_format_of

    folder = tmp_path_factory.mktemp("runtime_bench")
    kh = folder / "known_hosts"
    kh.write_text(sshd_server.known_hosts_line())
    models = sorted(str(p) for p in runtime_exports.iterdir() if (f := device_format_of(str(p))) is not None and f.name in TRAVELS_WITH)
    before = _remote_tmp_dirs()
    run_cli("bench", *models, *_ssh_args(sshd_server, kh, "--device", "rpi"), "--threads", "1", "--runs", "3", "--warmup", "1",
            "--bootstrap", "20", "--remote-images", "3", "--out", str(folder / "out"), "--quiet")
    return json.loads((folder / "out" / "bench.json").read_text()), before, _remote_tmp_dirs()


# ncnn (.ncnn.param + .ncnn.bin + sidecar) and ExecuTorch (.pte + sidecar) are registered: both run here beside OpenVINO
@pytest.mark.parametrize("fmt", sorted(TRAVELS_WITH))
def test_every_runtime_format_is_copied_with_its_companions_and_self_tested_on_the_pi(fmt, runtime_bench, runtime_exports,
                                                                                     sshd_server, known_hosts):
    from edgecxr.bench.remote import RemoteSession, parse_target, send_artifact
    from edgecxr.device.formats import artifact_files, device_format_of

    doc, before, after = runtime_bench
    rows = [r for r in doc["rows"] if r["format"] == fmt]
    if not rows:
        pytest.skip(f"{fmt} is not registered in convert/formats, so no {fmt} file was written")
    (row,) = rows
    assert row["device"] == "rpi" and not row.get("error") and not row.get("skipped"), row.get("error") or row.get("skipped")
    assert row["runtime_name"] == device_format_of(row["path"]).runtimes[0]
    assert row["selftest"]["passed"] is True and row["selftest"]["images"] > 0  # run on the Pi before timing
    assert len(row["runs_ms"]) == 3 and row["pi_host_top1_agreement"] == 1.0
    assert after == before, "the temporary folder on the Pi was not removed"

    # what travels: exactly the primary file, its companions and its contract sidecar, named as the format names them
    model = Path(row["path"])
    stem = model.name[: -len(TRAVELS_WITH[fmt][0])]
    assert {Path(p).name for p in artifact_files(str(model))} == {stem + s for s in TRAVELS_WITH[fmt]}
    with RemoteSession(parse_target(sshd_server.target), str(sshd_server.client_key), str(known_hosts)) as s:
        tmp = s.mkdtemp()
        try:
            send_artifact(s, str(model), f"{tmp}/07_{model.name}")
            sent = {name: s.sftp.stat(f"{tmp}/{name}").st_size for name in s.sftp.listdir(tmp)}
        finally:
            s.rmtree(tmp)
        assert s.run(["test", "-e", tmp])[0] != 0, "rmtree left the folder behind"
    assert sent == {"07_" + stem + sfx: (runtime_exports / (stem + sfx)).stat().st_size for sfx in TRAVELS_WITH[fmt]}


def _python_without(folder: Path, prefix: str) -> Path:
    """This venv's interpreter with every site-packages entry except ``prefix*``: a Pi
    where that runtime is really not installed (an import of it fails there)."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    farm = folder / "site"
    farm.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith(prefix) and not entry.name.endswith(".pth"):
            (farm / entry.name).symlink_to(entry)
    wrapper = folder / f"python3-no-{prefix}"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={farm} exec {sys.executable} -S \"$@\"\n")  # -S: no site-packages of its own
    wrapper.chmod(0o755)
    return wrapper


def test_a_runtime_the_pi_lacks_gives_a_skipped_row_with_its_install_line(sshd_server, known_hosts, export_dir, tmp_path):
    import subprocess

    python = _python_without(tmp_path, "openvino")
    assert subprocess.run([str(python), "-c", "import openvino"], capture_output=True).returncode != 0
    assert subprocess.run([str(python), "-c", "import numpy, onnxruntime"], capture_output=True).returncode == 0
    args = _ssh_args(sshd_server, known_hosts, "--device", "rpi")
    args[args.index("--remote-python") + 1] = str(python)
    out = tmp_path / "out"
    # the same ONNX file on two runtimes: ONNX Runtime runs on the Pi, OpenVINO is not installed there
    proc = run_cli("bench", str(export_dir / "mobilenet_v2_fp32.onnx"), *args, "--runtimes", "onnxruntime,openvino", "--threads", "1",
                   "--runs", "3", "--warmup", "1", "--bootstrap", "20", "--remote-images", "3", "--out", str(out), "--quiet")
    doc = json.loads((out / "bench.json").read_text())
    rows = {r["runtime_name"]: r for r in doc["rows"]}
    assert set(rows) == {"onnxruntime", "openvino"}
    ran, skipped = rows["onnxruntime"], rows["openvino"]
    assert not ran.get("error") and ran["selftest"]["passed"] is True and len(ran["runs_ms"]) == 3
    assert "error" not in skipped and "runs_ms" not in skipped
    assert skipped["skipped"] == f"not run on the Pi: openvino is not installed there; install with: {python} -m pip install openvino"
    avail = doc["devices"]["rpi"]["runtimes_available"]
    assert avail["openvino"] is None and avail["onnxruntime"] and avail["litert"]  # the probe's honest view of that Python
    assert re.search(r"\s+openvino\s+1\s+.*\sskipped$", proc.stdout, re.M)  # the table says skipped, not error
    assert f"install with: {python} -m pip install openvino" in proc.stdout and "Error" not in proc.stdout

    # nothing the files need is there: refused in seconds with the one install line, before any local work
    proc = run_cli("bench", str(export_dir / "mobilenet_v2_fp32.onnx"), *args, "--runtimes", "openvino", "--out", str(tmp_path / "o2"),
                   "--quiet", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.strip().endswith(f"lacks openvino; install with: {python} -m pip install openvino")
