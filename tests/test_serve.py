"""``edgecxr_runner.py serve`` with real parts: the service as a subprocess on 127.0.0.1, dcmtk's
``storescu`` as the X-ray unit, dcmtk's ``storescp`` as the PACS, dicom3tools' ``dciodvfy`` and
PixelMed's ``DicomSRValidator`` on the SRs it writes.

Skips (with the reason) where dcmtk, dicom3tools or PixelMed are not installed (.ci/run installs
them). The 300-instance crash test is behind the slow marker; the default suite runs it with 40.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dicom_fixtures import bad_inputs, make_dataset, synthetic_gray, write, write_rle
from serve_procs import VALIDATOR_ENV, Pacs, ServeProcess, free_port, missing_tools, stop_all, storescu, wait_for

pytest_plugins = ["bench_fixtures"]  # export_dir: a converted TFLite with its contract

NEED = ("storescu", "storescp")


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    """A failed test still stops the services and PACS it started."""
    yield
    stop_all()


@pytest.fixture(scope="module")
def model(export_dir) -> str:
    if missing_tools(*NEED):
        pytest.skip(f"dcmtk not installed ({', '.join(missing_tools(*NEED))}): apt-get install dcmtk (.ci/run does)")
    return str(export_dir / "mobilenet_v2_int8.tflite")


def make_burst(folder: Path, n: int) -> dict[str, Path]:
    """n distinct PA adult DX instances: {SOPInstanceUID: file}."""
    out = {}
    for i in range(n):
        ds = make_dataset(synthetic_gray(i, 48), patient_id=f"P{i % 7}")
        out[ds.SOPInstanceUID] = write(ds, folder / f"img{i:04d}.dcm")
    return out


def pacs_holdings(files: list[Path]) -> dict[str, str]:
    """{SR SOP Instance UID: referenced source UID} over every file storescp wrote (+uf: one file per
    C-STORE received, so an identical resend shows up as a second file with the same UID)."""
    from edgecxr.device.service.sr import read_back

    out = {}
    for f in files:
        back = read_back(str(f))
        out[back["sop_instance_uid"]] = back["referenced_sop_instance_uid"]
    return out


def crash_run(tmp_path: Path, model: str, n: int, pacs_down: bool) -> dict:
    """Send n instances, SIGKILL the service mid-burst, restart it, resend everything (the modality
    retries what it was not sure of); with ``pacs_down`` the PACS starts only after the restart."""
    sent = make_burst(tmp_path / "src", n)
    port, pacs_port = free_port(), free_port()
    pacs = None if pacs_down else Pacs(tmp_path / "pacs", pacs_port)
    extra = ("--pacs", f"127.0.0.1:{pacs_port}:PACS", "--pacs-backoff-max", "1")
    first = ServeProcess(tmp_path / "svc", model, port, *extra)
    first.wait_ready()
    sender = storescu(port, tmp_path / "src", wait=False)
    wait_for(lambda: sum(first.journal_counts().values()) >= n // 3, 300, "a third of the burst to arrive")
    first.kill()
    sender.communicate(timeout=120)
    killed_at = first.journal_counts()
    second = ServeProcess(tmp_path / "svc", model, port, *extra)
    second.wait_ready()
    if pacs is None:
        resent = storescu(port, tmp_path / "src")
        pacs = Pacs(tmp_path / "pacs", pacs_port)
    else:
        resent = storescu(port, tmp_path / "src")
    assert resent.returncode == 0, resent.stdout + resent.stderr
    wait_for(lambda: second.journal_counts().get("done", 0) == n, 600, f"all {n} instances done")
    assert second.stop() == 0
    pacs.stop()
    files = pacs.files()
    held = pacs_holdings(files)
    return {"sent": n, "killed_at": killed_at, "stores": len(files), "srs": len(held), "refs": list(held.values()),
            "sent_uids": set(sent), "log": first.log()}


def _check_crash(r: dict, pacs_down: bool) -> None:
    """Exactly one SR instance per source at the PACS, none answered twice. The SR in flight at the
    SIGKILL (stored by the PACS, its ack not yet journaled) is sent again after the restart: the same
    SOP Instance UID (derived from source and model), i.e. the same object, which a PACS keeps once."""
    dupes = len(r["refs"]) - len(set(r["refs"]))
    resends = r["stores"] - r["srs"]
    print(f"CRASH pacs_down={pacs_down}: sent {r['sent']}, journal at SIGKILL {r['killed_at']}, SR instances at the PACS "
          f"{r['srs']}, sources answered twice {dupes}, C-STOREs received {r['stores']} ({resends} identical resend)")
    assert r["srs"] == r["sent"] and dupes == 0 and set(r["refs"]) == r["sent_uids"]
    assert resends <= 1  # one sender, one SR in flight at the kill
    assert "Traceback" not in r["log"]
    assert "resuming them" in r["log"]
    if pacs_down:
        assert "result(s) queued, retry in" in r["log"]


@pytest.mark.parametrize("pacs_down", [False, True], ids=["pacs_up", "pacs_down"])
def test_sigkill_mid_burst_then_restart_gives_exactly_one_sr_per_instance_at_the_pacs(model, tmp_path, pacs_down):
    _check_crash(crash_run(tmp_path, model, 40, pacs_down), pacs_down)


@pytest.mark.slow
@pytest.mark.parametrize("pacs_down", [False, True], ids=["pacs_up", "pacs_down"])
def test_sigkill_mid_300_instance_burst_gives_300_srs_none_twice(model, tmp_path, pacs_down):
    _check_crash(crash_run(tmp_path, model, 300, pacs_down), pacs_down)


@pytest.fixture(scope="module")
def served(model, tmp_path_factory) -> dict:
    """One service run: good and bad images over the network and through the inbox."""
    tmp = tmp_path_factory.mktemp("served")
    gray = synthetic_gray(5, 64)
    net = tmp / "net"
    good = {"pa": write(make_dataset(gray), net / "pa.dcm"),
            "noview": write(make_dataset(gray, view=None), net / "noview.dcm"),
            "monochrome1": write(make_dataset(gray, photometric="MONOCHROME1"), net / "mono1.dcm"),
            "16bit": write(make_dataset(gray, bits=16), net / "bits16.dcm"),
            "rle": write_rle(make_dataset(gray), net / "rle.dcm")}
    bad = bad_inputs(tmp / "bad", gray)
    over_net = {k: bad[k] for k in ("ct", "mr", "lateral", "child", "undecodable")}
    in_box = {k: bad[k] for k in ("truncated", "no_pixel_data", "unknown_sop_class")}
    (tmp / "notes.txt").write_text("not an image\n")
    port = free_port()
    inbox = tmp / "inbox"
    inbox.mkdir()
    svc = ServeProcess(tmp / "svc", model, port, "--inbox", str(inbox), "--poll", "0.2")
    svc.wait_ready()
    sent = [storescu(port, [p for k, p in {**good, **over_net}.items() if k not in ("rle", "undecodable")]),
            storescu(port, [good["rle"]], "-xr"), storescu(port, [over_net["undecodable"]], "-xv")]
    for path in [*in_box.values(), tmp / "notes.txt"]:
        shutil.copy(path, inbox / path.name)
    total = len(good) + len(over_net) + len(in_box) + 1
    wait_for(lambda: svc.journal_counts().get("done", 0) == total, 300, f"{total} results")
    assert svc.stop() == 0
    return {"svc": svc, "good": good, "bad": {**over_net, **in_box, "non_image": tmp / "notes.txt"}, "sent": sent}


def _uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(str(path), stop_before_pixels=True).SOPInstanceUID)


def _result_for(served: dict, name: str, path: Path) -> dict:
    results = served["svc"].results()
    key = path.name if name in ("truncated", "non_image") else _uid(path)
    found = [r for r in results if r["file"] in (key, path.name) or r.get("key") == key]
    assert len(found) == 1, f"{name}: {len(found)} results"
    return found[0]


EXPECTED_REFUSALS = {
    "ct": "refused: Modality CT is not CR or DX or DR",
    "mr": "refused: Modality MR is not CR or DX or DR",
    "lateral": "refused: ViewPosition LL is not PA or AP",
    "child": "refused: PatientAge 006Y (6 years) is outside 18-120 years",
    "undecodable": "image rejected:",
    "truncated": "image rejected:",
    "no_pixel_data": "image rejected:",
    "unknown_sop_class": "refused: SOPClassUID",
    "non_image": "image rejected:",
}


@pytest.mark.parametrize("name", list(EXPECTED_REFUSALS))
def test_bad_input_gets_one_log_line_and_a_refusal_result(served, name):
    path = served["bad"][name]
    rec = _result_for(served, name, path)
    print(f"BAD {name:<18} -> {rec['action']}: {rec['decision']} [{rec['result']}]")
    assert rec["action"] == "refuse" and rec["probabilities"] is None
    assert EXPECTED_REFUSALS[name] in rec["decision"]
    log = served["svc"].log()
    assert "Traceback" not in log
    assert sum(1 for line in log.splitlines() if rec["file"] in line) == 1
    kind = ".json" if name == "non_image" else ".sr.dcm"
    assert rec["result"].endswith(kind)


def test_refusals_named_in_the_result_sr(served):
    from edgecxr.device.service.sr import read_back

    rec = _result_for(served, "lateral", served["bad"]["lateral"])
    back = read_back(str(served["svc"].outbox / rec["result"]))
    assert back["action"] == "refuse" and back["reason"] == rec["reason"] and back["probabilities"] == {}
    assert back["referenced_sop_instance_uid"] == _uid(served["bad"]["lateral"])


def test_monochrome1_and_16_bit_are_read_right_and_answered(served):
    pa = _result_for(served, "pa", served["good"]["pa"])
    mono1 = _result_for(served, "monochrome1", served["good"]["monochrome1"])
    bits16 = _result_for(served, "16bit", served["good"]["16bit"])
    assert mono1["probabilities"] == pa["probabilities"]  # inverted back to the same image
    assert bits16["action"] != "refuse" and bits16["probabilities"]
    rle = _result_for(served, "rle", served["good"]["rle"])
    assert rle["probabilities"] == pa["probabilities"]  # a compressed syntax pydicom decodes: the same pixels
    noview = _result_for(served, "noview", served["good"]["noview"])
    assert noview["intended_use"]["line"] == "intended use unverified: no ViewPosition"


def test_service_answers_exactly_what_the_runner_answers(served, model):
    from serve_procs import RUNNER

    for name in ("pa", "monochrome1", "16bit"):
        path = served["good"][name]
        proc = subprocess.run([sys.executable, str(RUNNER), "--model", model, "--image", str(path), "--json"],
                              capture_output=True, text=True, timeout=300)
        runner = json.loads(proc.stdout)
        served_rec = _result_for(served, name, path)
        for k in ("label", "probabilities", "action", "reason", "decision", "prediction_set", "intended_use"):
            assert served_rec.get(k) == runner.get(k), (name, k)


def test_written_sr_passes_dciodvfy_and_pixelmed_and_round_trips(served, model):
    import hashlib

    import highdicom as hd
    import pydicom

    from edgecxr.device.service.sr import read_back

    lacking = missing_tools("dciodvfy", "DicomSRValidator")
    if lacking:
        pytest.skip(f"{', '.join(lacking)} not installed: apt-get install dicom3tools pixelmed-apps (.ci/run does)")
    rec = _result_for(served, "pa", served["good"]["pa"])
    sr_path = served["svc"].outbox / rec["result"]
    v = subprocess.run(["dciodvfy", str(sr_path)], capture_output=True, text=True, timeout=120)
    print("DCIODVFY rc", v.returncode, v.stdout + v.stderr)
    assert v.returncode == 0 and "Error" not in v.stdout + v.stderr
    p = subprocess.run(["DicomSRValidator", "-checktemplateid", str(sr_path)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **VALIDATOR_ENV})
    print("DICOMSRVALIDATOR", p.stdout + p.stderr)
    assert "Found Root Template TID_1500" in p.stdout and "Error" not in p.stdout + p.stderr
    back = read_back(str(sr_path))
    assert back["label"] == rec["label"] and back["action"] == rec["action"] == "answer"
    assert back["probabilities"] == pytest.approx(rec["probabilities"], abs=1e-6)
    assert back["referenced_sop_instance_uid"] == _uid(served["good"]["pa"])
    assert f"model sha256 {hashlib.sha256(Path(model).read_bytes()).hexdigest()}" in back["parameters"]
    sr = hd.sr.srread(str(sr_path))
    source = pydicom.dcmread(str(served["good"]["pa"]))
    assert (sr.StudyInstanceUID, sr.PatientID) == (source.StudyInstanceUID, source.PatientID)


def test_listener_gets_each_record_after_its_result_is_written(model, tmp_path):
    from edgecxr.device.backends import open_backend
    from edgecxr.device.classify import Classifier
    from edgecxr.device.service.journal import Journal
    from edgecxr.device.service.service import Service

    clf = Classifier(open_backend(model, None, require_contract=True))
    outbox = tmp_path / "out"
    outbox.mkdir()
    journal = Journal(str(tmp_path / "j.sqlite"))
    seen: list[tuple[dict, object, bool]] = []
    svc = Service(clf, journal, str(outbox), 3, log=lambda m: None, json_out=lambda r: None)
    svc.add_listener(lambda rec, gray: seen.append((rec, gray, (outbox / rec["result"]).exists())))
    svc.add_listener(lambda rec, gray: 1 / 0)  # a broken listener is logged, never the service's end
    src = write(make_dataset(synthetic_gray(1, 48)), tmp_path / "a.dcm")
    journal.receive("k1", "sha", str(src), "inbox:a.dcm")
    svc.process(journal.entry("k1"))
    (rec, gray, existed), = seen
    assert existed and journal.entry("k1").state == "done"
    assert isinstance(gray, np.ndarray) and gray.dtype == np.uint8 and rec["key"] == "k1"


def test_full_spool_answers_out_of_resources_and_keeps_nothing_it_did_not_store(model, tmp_path):
    port = free_port()
    svc = ServeProcess(tmp_path / "svc", model, port)
    svc.wait_ready()
    spool = svc.state / "spool"
    shutil.rmtree(spool)
    spool.write_text("a file where the spool folder was: every write fails, as on a full disk\n")
    src = write(make_dataset(synthetic_gray(2, 48)), tmp_path / "x.dcm")
    r = storescu(port, [src], "-v")
    assert "Received Store Response (Refused: OutOfResources)" in r.stdout + r.stderr, r.stdout + r.stderr
    spool.unlink()
    spool.mkdir()
    r = storescu(port, [src])
    assert r.returncode == 0
    wait_for(lambda: svc.journal_counts().get("done", 0) == 1, 120, "the resent instance to be answered")
    assert svc.stop() == 0
    assert "out of resources" in svc.log() and len(svc.results()) == 1


AARCH64_CACHE = Path(os.environ.get("EDGECXR_AARCH64_CACHE", Path.home() / ".cache" / "edgecxr-aarch64"))
SERVICE_WHEELS = ("pydicom==3.0.2", "pynetdicom==3.0.4", "highdicom==0.28.2", "pillow==13.0.0", "pyjpegls==1.5.1",
                  "packaging==26.4", "typing-extensions==4.16.0")


def _aarch64_service_site() -> Path:
    """PyPI's aarch64 wheels of serve's packages, once, beside aarch64_check.sh's cache."""
    site = AARCH64_CACHE / "site-service-pydicom3.0.2-pynetdicom3.0.4-highdicom0.28.2"
    if (site / ".complete").exists():
        return site
    plats = [a for n in (17, 24, 26, 27, 28) for a in ("--platform", f"manylinux_2_{n}_aarch64")]
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site), "--only-binary=:all:",
                           "--no-deps", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", *plats,
                           "--platform", "manylinux2014_aarch64", *SERVICE_WHEELS], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"pip could not fetch the aarch64 wheels for serve: {proc.stderr.strip().splitlines()[-1:]}")
    (site / ".complete").touch()
    return site


@pytest.mark.slow
@pytest.mark.aarch64
def test_serve_on_emulated_cortex_a72_answers_a_burst_like_x86(model, tmp_path):
    """The service itself (numpy, ai-edge-litert, pydicom, pynetdicom, highdicom: aarch64 wheels) under
    qemu-aarch64-static -cpu cortex-a72, fed by storescu on the host: one SR per instance and the
    INT8 TFLite probabilities of the x86 runner, bit for bit. Correctness only, never timed."""
    qemu, root = shutil.which("qemu-aarch64-static"), AARCH64_CACHE / "root"
    numpy_site = next(iter(sorted(AARCH64_CACHE.glob("site-numpy*-litert*"))), None)
    if qemu is None or not (root / "usr/bin/python3.11").exists() or numpy_site is None:
        pytest.skip("needs qemu-aarch64-static and the arm64 Python of scripts/reproduce/aarch64_check.sh (run it once)")
    site = _aarch64_service_site()
    sent = make_burst(tmp_path / "src", 6)
    env = {"PYTHONPATH": f"{numpy_site}:{site}", "EDGECXR_EMULATED": "1"}
    svc = ServeProcess(tmp_path / "svc", model, free_port(), python=[qemu, "-L", str(root), "-cpu", "cortex-a72",
                                                                      str(root / "usr/bin/python3.11"), "-S"], env=env)
    svc.wait_ready(timeout=900)
    assert storescu(int(svc.proc.args[svc.proc.args.index("--port") + 1]), tmp_path / "src").returncode == 0
    wait_for(lambda: svc.journal_counts().get("done", 0) == len(sent), 900, "the emulated service to answer the burst")
    assert svc.stop() == 0
    arm = {r["key"]: r for r in svc.results()}
    from serve_procs import RUNNER

    proc = subprocess.run([sys.executable, str(RUNNER), "--model", model, "--dir", str(tmp_path / "src"), "--json",
                           "--csv", str(tmp_path / "x86.csv")], capture_output=True, text=True, timeout=300)
    x86 = {_uid(tmp_path / "src" / r["file"]): r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(arm) == set(x86) == set(sent)
    for uid in sent:
        assert arm[uid]["probabilities"] == x86[uid]["probabilities"] and arm[uid]["action"] == x86[uid]["action"]
    assert len(list(svc.outbox.glob("*.sr.dcm"))) == len(sent) and "Traceback" not in svc.log()
    print(f"AARCH64 serve under qemu cortex-a72: {len(sent)} sent, {len(arm)} SRs, probabilities identical to x86")
