"""The audit trail: every kind of tamper named at the exact line, a cut-off tail and a torn line told
apart, and the runner writing it. The 10,000-record log is generated with the module directly
(no model runs, no fsync) so the whole file stays fast."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from decision_fixtures import BLOCK, png, toy_onnx
from helpers import ROOT

from edgecxr.device.audit import AuditLog, decision_event, device_keygen, input_identity
from edgecxr.device.audit_verify import OK, OPEN_TAIL, TAMPERED, verify_log

RUNNER = str(ROOT / "device" / "edgecxr_runner.py")
N = 10_000


@pytest.fixture(scope="module")
def device_key(tmp_path_factory) -> tuple[str, str]:
    return device_keygen(str(tmp_path_factory.mktemp("device")))


def _write_log(path: Path, key: str, n: int, close: bool) -> list[bytes]:
    log = AuditLog(str(path), key, {"model": "m.tflite", "model_sha256": "ab" * 32, "signature": "signed", "runtime": "litert"},
                   every=100, sync=False)
    for i in range(n):
        log.append({"input_sha256": hashlib.sha256(str(i).encode()).hexdigest(), "action": "answer" if i % 3 else "refer",
                    "probabilities": {"COVID": 0.1, "Normal": 0.9}, "reason": "Normal", "time": "2026-12-07T09:00:00.000Z"})
    if close:
        log.close()
    else:
        log._fh.close()  # a device still writing: no closing checkpoint yet
    return path.read_bytes().split(b"\n")[:-1]


def _forged(lines: list[bytes], pos: int) -> bytes:
    """A new decision line a forger fits in at ``pos``: right seq, right prev hash, no key needed."""
    obj = json.loads(lines[pos])
    obj.update(kind="decision", seq=pos, prev=hashlib.sha256(lines[pos - 1]).hexdigest(), action="answer", input_sha256="f" * 64)
    obj.pop("sig", None)
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _tampered(lines: list[bytes], kind: str, pos: int) -> list[bytes]:
    out = list(lines)
    if kind == "edit":
        obj = json.loads(out[pos])
        obj["action" if obj.get("kind") == "decision" else "time"] = "edited"
        out[pos] = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    elif kind == "insert (copy)":
        out.insert(pos, lines[pos - 7])  # a real earlier record, replayed
    elif kind == "insert (forged)":
        out.insert(pos, _forged(lines, pos))
    elif kind == "delete":
        del out[pos]
    elif kind == "reorder":
        out[pos], out[pos + 1] = out[pos + 1], out[pos]
    return out


KINDS = ("edit", "insert (copy)", "insert (forged)", "delete", "reorder")


def test_each_tamper_kind_at_several_positions_of_a_10000_record_log_is_named_at_the_exact_line(device_key, tmp_path):
    priv, pub = device_key
    closed = _write_log(tmp_path / "closed.log", priv, N, close=True)
    assert verify_log(str(tmp_path / "closed.log"), pub).status == OK
    open_lines = _write_log(tmp_path / "open.log", priv, N + 50, close=False)  # 50 decisions after the last checkpoint
    cases = [("closed", closed, p) for p in (1, 2, 100, 101, 4321, 7777, len(closed) - 3)]  # 101: a signed checkpoint line
    cases += [("open tail", open_lines, p) for p in (len(open_lines) - 40, len(open_lines) - 10)]
    rows = []
    for where, lines, pos in cases:
        for kind in KINDS:
            target = tmp_path / "t.log"
            target.write_bytes(b"\n".join(_tampered(lines, kind, pos)) + b"\n")
            rep = verify_log(str(target), pub)
            assert rep.status == TAMPERED and rep.first_bad == pos, (where, kind, pos, rep.message)
            rows.append(f"| {where} | {kind} | line {pos + 1} | line {rep.first_bad + 1}: {rep.kind} | {rep.message} |")
    print("\n".join(["| log | tamper | at | named | verify-audit says |", "|---|---|---|---|---|", *rows]))


def test_a_tail_cut_after_the_last_checkpoint_is_reported_not_verified(device_key, tmp_path):
    priv, pub = device_key
    lines = _write_log(tmp_path / "a.log", priv, 1050, close=True)
    for keep in (len(lines) - 1, len(lines) - 30):  # the closing checkpoint gone; it and 29 more lines gone
        (tmp_path / "cut.log").write_bytes(b"\n".join(lines[:keep]) + b"\n")
        rep = verify_log(str(tmp_path / "cut.log"), pub)
        assert rep.status == OPEN_TAIL and rep.first_bad == keep and "no closing checkpoint" in rep.message, rep.message
        print(f"cut to {keep} lines: {rep.text()[0]}")


def test_a_torn_last_line_is_reported_and_the_next_session_appends_past_it(device_key, tmp_path):
    priv, pub = device_key
    path = tmp_path / "a.log"
    _write_log(path, priv, 250, close=False)
    with open(path, "ab") as fh:  # the power went mid-append
        fh.write(b'{"action":"answer","input_sha256":"00')
    rep = verify_log(str(path), pub)
    assert rep.status == OPEN_TAIL and any("torn last line" in n for n in rep.notes), rep.text()
    with AuditLog(str(path), priv, {"model": "m.tflite"}, sync=False) as log:
        log.append({"action": "refer", "input_sha256": "1" * 64})
    rep = verify_log(str(path), pub)
    assert rep.status == OK and any("torn by a power cut" in n for n in rep.notes), rep.text()
    print("\n".join(rep.text()))


def test_a_checkpoint_signed_by_another_key_is_refused(device_key, tmp_path):
    priv, _pub = device_key
    _other_priv, other_pub = device_keygen(str(tmp_path / "other"))
    _write_log(tmp_path / "a.log", priv, 120, close=True)
    rep = verify_log(str(tmp_path / "a.log"), other_pub)
    assert rep.status != OK and rep.checkpoints == 0


def test_a_decision_line_holds_hashes_and_uids_never_names_or_pixels(tmp_path):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX image storage
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.PatientName = "1.2.3.4.5", "1.2.3.4", "Doe^Jane"
    path = tmp_path / "Doe_Jane.dcm"
    ds.save_as(str(path), enforce_file_format=True)
    rec = {"file": "Doe_Jane.dcm", "label": "Normal", "action": "answer", "reason": "Normal", "probabilities": {"Normal": 0.9}}
    event = decision_event(rec, "cd" * 32, "unsigned", "litert", str(path))
    assert event["sop_instance_uid"] == "1.2.3.4.5" and event["study_instance_uid"] == "1.2.3.4"
    assert event["input_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "Doe" not in json.dumps(event) and "file" not in event
    assert input_identity({"sha256": "ab", "key": "9.8.7"})["sop_instance_uid"] == "9.8.7"  # serve's record
    # serve's record carries the Study UID the intended-use gate read from the header (gated_record)
    assert input_identity({"sha256": "ab", "key": "9.8.7", "study_instance_uid": "1.2.4"})["study_instance_uid"] == "1.2.4"
    assert "sop_instance_uid" not in input_identity({"sha256": "ab", "key": "file:ab"})


def test_the_runner_appends_every_decision_and_verify_audit_names_an_edit(device_key, tmp_path):
    model = toy_onnx(str(tmp_path / "m.onnx"), BLOCK)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    png(imgs / "a.png", 200)
    png(imgs / "b.png", 128)
    state = tmp_path / "state"
    keygen = subprocess.run([sys.executable, RUNNER, "device-keygen", "--out", str(state)], capture_output=True, text=True)
    assert keygen.returncode == 0, keygen.stderr
    log = state / "audit.log"
    for args in (["--image", str(imgs / "a.png")], ["--dir", str(imgs), "--csv", str(tmp_path / "p.csv")]):
        proc = subprocess.run([sys.executable, RUNNER, "--model", model, *args, "--audit-log", str(log)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    decisions = [x for x in lines if x["kind"] == "decision"]
    assert len(decisions) == 3 and {d["action"] for d in decisions} == {"answer", "refer"}
    assert all(d["signature"] == "unsigned" and d["runtime"] and len(d["model_sha256"]) == 64 for d in decisions)
    assert [x["kind"] for x in lines].count("checkpoint") == 2 and lines[-1].get("final") is True
    pub = str(state / "device_ed25519.pub")
    ok = subprocess.run([sys.executable, RUNNER, "verify-audit", str(log), "--trust", pub], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("OK"), ok.stdout + ok.stderr
    raw = log.read_text().splitlines()
    assert '"action":"answer"' in raw[1]  # line 2: the --image decision
    raw[1] = raw[1].replace('"action":"answer"', '"action":"refer"')
    log.write_text("\n".join(raw) + "\n")
    bad = subprocess.run([sys.executable, RUNNER, "verify-audit", str(log), "--trust", pub], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout.startswith("TAMPERED: line 2 was edited"), bad.stdout
