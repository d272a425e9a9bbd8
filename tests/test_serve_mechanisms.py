"""The service's speed mechanisms keep its contract: the SR rendered from a compiled template is
``sr.build``'s SR, flow control holds only the answer (the image is journaled first) and releases
it in receipt order, and the receiver process never outlives the service.

Real parts as in test_serve.py: the service as a subprocess, dcmtk's ``storescu`` as the X-ray unit.
"""
from __future__ import annotations

import datetime
import io
import os
import socket
import sqlite3
import threading
from pathlib import Path

import pydicom
import pytest
from dicom_fixtures import CR, make_dataset, synthetic_gray, write
from serve_procs import ServeProcess, free_port, missing_tools, stop_all, storescu, wait_for

pytest_plugins = ["bench_fixtures"]  # export_dir: a converted TFLite with its contract

MODEL = {"name": "m.tflite", "model_sha256": "a" * 64, "contract_sha256": "b" * 64, "edgecxr_version": "9.9"}
PROBS = {"COVID": 0.1234567, "Normal": 0.8, "Viral_Pneumonia": 0.0765433}
NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901)


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    yield
    stop_all()


def _source(**changes) -> pydicom.Dataset:
    ds = make_dataset(synthetic_gray(3, 32), patient_id="T1")
    for kw, value in changes.items():
        if value is None:
            delattr(ds, kw)
        else:
            setattr(ds, kw, value)
    return ds


SOURCES = {"dx": _source(), "cr_institution": _source(SOPClassUID=CR, Modality="CR", InstitutionName="St Edge"),
           "no_patient_fields": _source(PatientName=None, PatientAge=None, AccessionNumber=None, StudyTime=None),
           "odd_lengths": _source(PatientID="ABC", PatientName="Odd^Name^X", StudyID="7")}
RECORDS = {"answer": {"label": "Normal", "action": "answer", "decision": "answer: Normal", "probabilities": PROBS},
           "refer_unverified": {"label": "COVID", "action": "refer", "decision": "refer: unfamiliar image",
                                "probabilities": PROBS, "intended_use": {"status": "unverified",
                                                                         "line": "intended use unverified: no ViewPosition"}},
           "refuse": {"label": None, "action": "refuse", "reason": "refused: ViewPosition LL is not PA or AP",
                      "probabilities": None},
           "long_label": {"label": "a class name longer than sixteen", "action": "answer", "decision": "answer",
                          "probabilities": {"a class name longer than sixteen": 0.9, "other": 0.1}}}


@pytest.mark.parametrize("source", list(SOURCES))
@pytest.mark.parametrize("record", list(RECORDS))
def test_sr_rendered_from_the_template_equals_the_sr_highdicom_builds(source, record):
    from edgecxr.device.service import sr
    from edgecxr.device.service.sr_template import Renderer

    renderer = Renderer(MODEL)
    for other in RECORDS.values():  # other shapes compiled first: templates must not leak into each other
        renderer.render(SOURCES["dx"], other, NOW)
    rendered = pydicom.dcmread(io.BytesIO(renderer.render(SOURCES[source], RECORDS[record], NOW)))
    buf = io.BytesIO()
    sr.build(SOURCES[source], RECORDS[record], MODEL, now=NOW).save_as(buf, enforce_file_format=True)
    built = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    assert rendered.file_meta == built.file_meta
    assert rendered == built
    assert sr.read_back_dataset(rendered) == sr.read_back_dataset(built)


def test_sr_template_refuses_what_sr_build_refuses():
    from edgecxr.device.service import sr
    from edgecxr.device.service.sr_template import Renderer

    for broken in (_source(StudyInstanceUID=None), _source(Modality="SR")):
        with pytest.raises((ValueError, AttributeError)):
            sr.build(broken, RECORDS["answer"], MODEL)
        with pytest.raises((ValueError, AttributeError)):
            Renderer(MODEL).render(broken, RECORDS["answer"])


def test_flow_control_holds_an_answer_until_enough_earlier_images_are_answered():
    from edgecxr.device.service.flow import FlowControl

    flow, queued = FlowControl(), []
    tickets = [flow.admit(lambda i=i: queued.append(i)) for i in range(4)]
    assert tickets == [1, 2, 3, 4] and queued == [0, 1, 2, 3]  # tickets follow queue order
    assert flow.hold(1, limit=0) is True  # nothing ahead of the first image
    assert flow.hold(4, limit=1, timeout=0.01) is False  # three ahead, none answered: held until the timeout
    released = threading.Event()
    waiter = threading.Thread(target=lambda: flow.hold(4, limit=1) and released.set())
    waiter.start()
    flow.finished()
    flow.finished()  # two of the three ahead answered: one left, within the limit
    waiter.join(timeout=30)
    assert released.is_set()
    assert "answers held" in flow.summary()


@pytest.fixture(scope="module")
def model(export_dir) -> str:
    if missing_tools("storescu"):
        pytest.skip("dcmtk not installed: apt-get install dcmtk (.ci/run does)")
    return str(export_dir / "mobilenet_v2_int8.tflite")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_each_answer_waits_until_the_images_before_it_are_answered(model, tmp_path):
    """--queue-limit 0, one association: storescu sends image k only after image k-1's answer, which
    is held until every image before k-1 has its SR; so every image older than k-1 has its SR written
    before image k is received (from the journal's receipt and result times)."""
    files = [write(make_dataset(synthetic_gray(i, 48), patient_id=f"F{i}"), tmp_path / "src" / f"f{i:02d}.dcm")
             for i in range(12)]
    port = free_port()
    svc = ServeProcess(tmp_path / "svc", model, port, "--queue-limit", "0")
    svc.wait_ready()
    sent = storescu(port, files)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_for(lambda: svc.journal_counts().get("done", 0) == len(files), 300, "all SRs")
    assert svc.stop() == 0
    with sqlite3.connect(str(svc.state / "journal.sqlite")) as db:
        rows = db.execute("SELECT received_at, result_at FROM instances ORDER BY received_at").fetchall()
    assert len(rows) == len(files)
    for k in range(2, len(rows)):
        assert max(r[1] for r in rows[:k - 1]) <= rows[k][0]
    assert "flow control:" in svc.log()  # how many answers were held depends on the machine's speed, not asserted


def test_receiver_process_dies_with_a_killed_service_and_frees_the_port(model, tmp_path):
    port = free_port()
    svc = ServeProcess(tmp_path / "svc", model, port)
    svc.wait_ready()
    children = _children(svc.proc.pid)
    assert children, "serve --port runs its DICOM receiver in a child process"
    svc.kill()
    wait_for(lambda: not any(_alive(c) for c in children), 60, "the receiver to die with the service")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    assert os.path.exists(svc.state / "journal.sqlite")


def test_group_commit_tells_no_one_before_every_result_of_the_group_is_durable_and_journaled(model, tmp_path):
    """The writer's group: files fsynced and renamed, one folder fsync, one journal transaction; the
    JSON line, the listeners and flow control's done() come only after, for every member."""
    from edgecxr.device.backends import open_backend
    from edgecxr.device.classify import Classifier
    from edgecxr.device.service.journal import Journal
    from edgecxr.device.service.service import Service

    outbox = tmp_path / "out"
    outbox.mkdir()
    journal = Journal(str(tmp_path / "j.sqlite"))
    svc = Service(Classifier(open_backend(model, None, require_contract=True)), journal, str(outbox), 3,
                  log=lambda m: None, json_out=lambda r: None)
    seen, done = [], []

    def listener(rec, gray):
        states = [journal.entry(k).state for k in keys]
        seen.append((rec["key"], states, all((outbox / f"{k}.sr.dcm").exists() for k in keys), len(done)))

    svc.add_listener(listener)
    batch, keys = [], []
    for i in range(3):
        ds = make_dataset(synthetic_gray(i, 48))
        src = write(ds, tmp_path / f"s{i}.dcm")
        journal.receive(ds.SOPInstanceUID, "sha", str(src), "scp:TEST")
        entry = journal.entry(ds.SOPInstanceUID)
        keys.append(entry.key)
        batch.append((lambda k=entry.key: done.append(k), entry, *svc.classify(entry)))
    svc.write_group(batch)
    assert [s[0] for s in seen] == keys and done == keys
    for position, (_key, states, files, dones_before) in enumerate(seen):
        assert states == ["done"] * 3 and files  # the whole group was durable before the first listener ran
        assert dones_before == position  # each done() after its own announcement


def test_classifier_process_answers_in_order_as_the_service_thread_would(model, tmp_path):
    """The classifier process runs the service's own classify_entry: the same record for every
    entry, back in the order sent; the decoded image only when a listener asked for it."""
    from edgecxr.device.backends import open_backend
    from edgecxr.device.classify import Classifier
    from edgecxr.device.digest import file_sha256
    from edgecxr.device.service.journal import RECEIVED, Entry
    from edgecxr.device.service.service import classify_entry
    from edgecxr.device.service.worker import WorkerProcess

    entries = [Entry(f"1.2.3.{i}", "sha", str(write(make_dataset(synthetic_gray(i, 48)), tmp_path / f"s{i}.dcm")),
                     "scp:TEST", RECEIVED, None) for i in range(4)]
    entries.append(Entry("1.2.3.9", "sha", str(tmp_path / "missing.dcm"), "scp:TEST", RECEIVED, None))
    worker = WorkerProcess({"model": model, "threads": None, "check_cpu": True, "runtime": None, "top_k": 3})
    assert worker.wait_ready(file_sha256(model)) is True  # its own self-test passed
    got, stopped = [], threading.Event()
    worker.start(lambda e, done, rec, gray: got.append((e.key, rec, gray)), lambda *a: got.append(a), stopped.set)
    for i, e in enumerate(entries):
        worker.submit(e, None, want_gray=i == 0)
    worker.stop()
    assert stopped.is_set()
    clf = Classifier(open_backend(model, None, require_contract=True))
    assert [k for k, _r, _g in got] == [e.key for e in entries]
    for e, (_key, rec, _gray) in zip(entries, got):
        here = classify_entry(clf, e, 3)[0]
        assert {k: v for k, v in rec.items() if "ms" not in k} == {k: v for k, v in here.items() if "ms" not in k}
    assert got[0][2] is not None and all(g is None for _k, _r, g in got[1:])
    assert got[-1][1]["action"] == "refuse"  # the missing file: a refusal record, as in this process


def test_classifier_process_will_not_serve_a_model_file_other_than_the_services(model):
    from edgecxr.device.service.worker import WorkerProcess

    worker = WorkerProcess({"model": model, "threads": None, "check_cpu": True, "runtime": None, "top_k": 3})
    with pytest.raises(OSError, match="model file changed"):
        worker.wait_ready("0" * 64)
    worker.abandon()


def test_look_ahead_gives_a_lone_sender_one_image_and_none_where_others_keep_the_classifier_busy(tmp_path):
    from types import SimpleNamespace

    from edgecxr.device.service.scp import StoreHandler

    def event(senders: int):
        return SimpleNamespace(assoc=SimpleNamespace(ae=SimpleNamespace(active_associations=[object()] * senders)))

    def handler(limit: int):
        return StoreHandler(None, str(tmp_path), str(tmp_path), lambda e: None, lambda m: None, queue_limit=limit)

    assert [handler(1).look_ahead(event(n)) for n in (1, 2, 4)] == [1, 0, 0]
    assert [handler(3).look_ahead(event(n)) for n in (1, 2, 4)] == [3, 2, 0]
    assert handler(0).look_ahead(event(1)) == 0 and handler(-1).look_ahead(event(4)) == -1


def test_placement_gives_the_classifier_the_last_cpus_and_the_rest_to_everyone_else(monkeypatch):
    from edgecxr.device.service import placement

    monkeypatch.setattr(placement.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert placement.plan(None) == ({3}, {0, 1, 2})
    assert placement.plan(2) == ({2, 3}, {0, 1})
    assert placement.plan(4) is None and placement.plan(1, enabled=False) is None  # no CPU left over / --no-pin
    monkeypatch.setattr(placement.os, "sched_getaffinity", lambda pid: {5}, raising=False)
    assert placement.plan(None) is None


def _allowed_cpus(pid: int) -> str:
    text = Path(f"/proc/{pid}/status").read_text()
    return next(line.split(":")[1].strip() for line in text.splitlines() if line.startswith("Cpus_allowed_list"))


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="pinning needs 2 or more CPUs this process may use")
def test_serve_pins_its_classifier_process_to_a_cpu_of_its_own(model, tmp_path):
    last = str(max(os.sched_getaffinity(0)))
    svc = ServeProcess(tmp_path / "svc", model, free_port())
    svc.wait_ready()
    try:
        if "sched_setaffinity refused" in svc.log():  # a sandbox that forbids it: serve runs unpinned, and says so
            pytest.skip("this machine refuses sched_setaffinity; serve said so and ran unpinned")
        assert f"classifier process on CPU {last}," in svc.log()
        kids = {pid: _allowed_cpus(pid) for pid in _children(svc.proc.pid)}
        assert sorted(kids.values()).count(last) == 1, kids  # the classifier; the receiver shares the service's
        assert last not in _allowed_cpus(svc.proc.pid).replace("-", ",").split(",")
    finally:
        svc.stop()


def test_a_dead_classifier_process_ends_the_service_with_a_reason_and_a_restart_answers_the_rest(model, tmp_path):
    """The classifier process killed (a runtime crash on some image looks the same): the service
    must not go on receiving without answering; it exits 4 with one log line (systemd restarts it)
    and the next start in the same state folder serves again."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    svc = ServeProcess(tmp_path / "svc", model, None, "--inbox", str(inbox), "--poll", "0.1")
    svc.wait_ready()
    (child,) = _children(svc.proc.pid)  # --inbox only: the classifier is the one child
    os.kill(child, 9)
    assert svc.proc.wait(timeout=60) == 4
    assert "the classifier process ended (exit code -9): stopping" in svc.log()
    write(make_dataset(synthetic_gray(1, 48), patient_id="D1"), inbox / "late.dcm")
    again = ServeProcess(tmp_path / "svc", model, None, "--inbox", str(inbox), "--poll", "0.1")
    again.wait_ready()
    wait_for(lambda: again.journal_counts().get("done", 0) == 1, 120, "the image answered after the restart")
    assert again.stop() == 0


def test_an_entry_sent_to_a_classifier_process_already_gone_is_logged_not_a_traceback(model, tmp_path):
    """Between the classifier process's death and the service's stop, entries still arrive: each
    gets one log line and its done() (flow control), and stays "received" for the next start."""
    from edgecxr.device.backends import open_backend
    from edgecxr.device.classify import Classifier
    from edgecxr.device.digest import file_sha256
    from edgecxr.device.service.journal import Journal
    from edgecxr.device.service.service import Service
    from edgecxr.device.service.worker import WorkerProcess

    worker = WorkerProcess({"model": model, "threads": None, "check_cpu": True, "runtime": None, "top_k": 3})
    assert worker.wait_ready(file_sha256(model))
    journal, logs, done = Journal(str(tmp_path / "j.sqlite")), [], threading.Event()
    svc = Service(Classifier(open_backend(model, None, require_contract=True)), journal, str(tmp_path), 3,
                  log=logs.append, json_out=lambda r: None, remote=worker)
    svc.start()
    os.kill(worker.proc.pid, 9)
    wait_for(lambda: svc.fatal is not None, 60, "the service to see the classifier process gone")
    src = write(make_dataset(synthetic_gray(2, 48)), tmp_path / "late.dcm")
    journal.receive("1.2.3.4", "sha", str(src), "scp:TEST")
    svc.enqueue(journal.entry("1.2.3.4"), done.set)
    assert done.wait(30)
    svc.stop()
    assert any("1.2.3.4: not answered (the classifier process is gone)" in line for line in logs), logs
    assert journal.entry("1.2.3.4").state == "received"
