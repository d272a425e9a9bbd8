"""The service's core: received instances in, one durable result each out, listeners told.

One worker classifies (the interpreter is not shared between threads): a thread here, or,
as ``serve`` runs it, a process of its own (``worker.py``) that this thread feeds; either way
through ``classify_entry``: ``gated.classify_path``: the intended-use gate, then the runner's own ``Classifier`` and
decision, and ``runner_io.record`` for the JSON object, so the service can never answer
differently from ``--image``. A DICOM source gets a TID 1500 SR (``sr.py``), anything else a
JSON result; either is written atomically into the outbox, then journaled, then handed to the
listeners (``listener(record, gray)``, gray is None when no image was decoded) and, with a
PACS, to the sender. A listener that raises is logged, never stops the service.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..classify import Classifier
from ..digest import file_sha256
from ..gated import classify_path, gated_record, is_dicom, refused_prediction
from ..image_io import ImageError
from ..intended_use import read_header
from ..refusal import Refusal
from ..runner_io import emit, record
from .journal import Entry, Journal
from .scp import safe_name, write_durable_many
from .sr_template import Renderer

WRITE_GROUP = 8  # most results made durable together (the writer's queue holds 8)

Listener = Callable[[dict[str, Any], "np.ndarray | None"], None]


def model_identity(clf: Classifier) -> dict[str, Any]:
    """What the SR's algorithm identification names: the file, its sha256, the contract's sha256."""
    b, c = clf.backend, clf.backend.contract
    contract_json = json.dumps(c.to_dict(), sort_keys=True, separators=(",", ":"))
    return {"name": os.path.basename(b.path), "model_sha256": file_sha256(b.path),
            "contract_sha256": hashlib.sha256(contract_json.encode()).hexdigest(),
            "edgecxr_version": c.versions.get("edgecxr", "unknown")}


def classify_entry(clf: Classifier, entry: Entry, top_k: int) -> tuple[dict[str, Any], np.ndarray | None]:
    """The runner's record for one spooled file; an unreadable image becomes a refusal record.
    What the worker runs, in this process or in the classifier process."""
    source = entry.origin.split(":", 1)[1] if entry.origin.startswith("inbox:") else entry.key
    try:
        pred, gate, gray = classify_path(clf, entry.spool, source)
        rec = gated_record(pred, gate, top_k)
    except ImageError as exc:
        why = " ".join(str(exc).replace(entry.spool, source).split())
        pred = refused_prediction(clf, source, Refusal("unreadable", f"image rejected: {why}"), {})
        rec, gray = record(pred, top_k), None
    rec.update(key=entry.key, origin=entry.origin, sha256=entry.sha256)
    return rec, gray


class Service:
    """Owns the queue between receivers (SCP, inbox, restart) and the worker."""

    def __init__(self, clf: Classifier, journal: Journal, outbox: str, top_k: int, log: Callable[[str], None],
                 json_out: Callable[[dict[str, Any]], None] = emit, remote: Any = None,
                 identity: dict[str, Any] | None = None) -> None:
        """``remote``: a started-up ``worker.WorkerProcess`` to classify in (else this process's worker thread);
        ``identity``: ``model_identity(clf)`` where the caller already has it (it hashes the model file)."""
        self.clf, self.journal, self.outbox, self.top_k = clf, journal, outbox, top_k
        self.log, self.json_out = log, json_out
        self.model = identity or model_identity(clf)
        self.renderer = Renderer(self.model)  # sr.build's SR from a compiled template: 0.7 ms, not 10-17 ms, of Python
        self.listeners: list[Listener] = []
        self.wants_gray = False  # does any listener use the decoded image (the classifier process then sends it)?
        self.remote = remote
        self.on_fatal: Callable[[], None] = lambda: None  # serve sets it to its stop
        self.sender = None  # a PacsSender, set before start() when --pacs is given
        # (entry, done): done() is called once the entry is answered or given up on (flow control)
        self.queue: queue.Queue[tuple[Entry, Callable[[], None] | None] | None] = queue.Queue()
        # classified, waiting to be written: the next image is classified while this one's SR is fsynced
        self.written_queue: queue.Queue[tuple[Callable[[], None] | None, Entry, dict[str, Any], np.ndarray | None] | None] = \
            queue.Queue(maxsize=8)
        self.thread = threading.Thread(target=self._run, name="worker", daemon=True)
        self.writer = threading.Thread(target=self._write_loop, name="writer", daemon=True)
        self.processed = 0

    @property
    def fatal(self) -> str | None:
        """Why the service cannot go on (the classifier process died unasked), else None."""
        return self.remote.died if self.remote is not None else None

    def add_listener(self, listener: Listener, wants_gray: bool = True) -> None:
        """Called with ``(record, gray)`` after each result is durably written (signing, audit, drift, web page).
        ``wants_gray=False``: the listener ignores the image (then gray may be None), so a classifier
        process need not send it back."""
        self.listeners.append(listener)
        self.wants_gray |= wants_gray

    def enqueue(self, entry: Entry, done: Callable[[], None] | None = None) -> None:
        """Queue a journaled entry; ``done()`` once its result is written (or it failed)."""
        self.queue.put((entry, done))

    def start(self) -> None:
        if self.remote is not None:
            self.remote.start(self._classified, self._not_answered, self._remote_ended, getattr(self.clf, "signature", "unsigned"))
        self.thread.start()
        self.writer.start()

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)
        self.writer.join(timeout=30)

    def resume(self) -> tuple[int, int]:
        """After a restart: re-queue what was received but not answered, and what was answered but
        not yet acknowledged by the PACS. Returns the two counts."""
        from .journal import RECEIVED, WRITTEN

        todo, unsent = self.journal.in_state(RECEIVED), self.journal.in_state(WRITTEN)
        for e in todo:
            self.enqueue(e)
        for e in unsent:
            if self.sender is not None:
                self.sender.put(e.key)
            else:
                self.journal.written(e.key, str(e.result), done=True)
        return len(todo), len(unsent)

    def _run(self) -> None:
        """Worker: classify, then hand over to the writer (in order). With a classifier process,
        only forward: its results reach the writer through ``remote``'s reader thread."""
        while True:
            item = self.queue.get()
            if item is None:
                if self.remote is not None:
                    self.remote.stop()  # it finishes what it was sent, then its reader ends the writer
                else:
                    self.written_queue.put(None)
                return
            entry, done = item
            if self.remote is not None:
                try:
                    self.remote.submit(entry, done, self.wants_gray)
                except (OSError, ValueError):  # it died: its reader ends the service; the entry stays "received"
                    self._not_answered(entry, done, "the classifier process is gone")
                continue
            try:
                rec, gray = self.classify(entry)
            except Exception as exc:  # one bad instance must not stop the service; it stays "received"
                self._not_answered(entry, done, f"{type(exc).__name__}: {exc}")
            else:
                self._classified(entry, done, rec, gray)

    def _classified(self, entry: Entry, done: Callable[[], None] | None, rec: dict[str, Any], gray: np.ndarray | None) -> None:
        """To the writer, in order; ``done()`` (flow control) once the SR is durable."""
        self.written_queue.put((done, entry, rec, gray))

    def _remote_ended(self) -> None:
        """The classifier process is gone: asked to (stop), or not (then ``on_fatal``: serve exits
        non-zero, systemd restarts it and the journal answers what was in flight)."""
        self.written_queue.put(None)
        if self.fatal:
            self.log(f"{self.fatal}: stopping; what was received is journaled and answered at the next start")
            self.on_fatal()

    def _not_answered(self, entry: Entry, done: Callable[[], None] | None, why: str) -> None:
        self.log(f"{entry.key}: not answered ({why}); it is retried at the next start")
        if done is not None:
            done()

    def _write_loop(self) -> None:
        """Writer: results in groups of whatever is ready (one image when the service keeps up)."""
        while True:
            batch = [self.written_queue.get()]
            while batch[-1] is not None and len(batch) < WRITE_GROUP:
                try:
                    batch.append(self.written_queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is None
            self.write_group([item for item in batch if item is not None])
            if stop:
                return

    def write_group(self, batch: list[tuple[Callable[[], None] | None, Entry, dict[str, Any], np.ndarray | None]]) -> None:
        """Group commit: every result file of the group written, fsynced, renamed, the outbox folder
        fsynced once, one journal transaction; only then the JSON lines, the listeners, the PACS
        queue and ``done()`` (flow control). Nothing is journaled as written before its file is
        durable; a group that fails is retried at the next start, as one image was."""
        files = [(done, entry, rec, gray, *self._result_file(entry, rec)) for done, entry, rec, gray in batch]
        try:
            write_durable_many([(path, data) for *_, path, data in files])
            self.journal.written_many([(e.key, path, self.sender is None or not path.endswith(".dcm"))
                                       for _, e, _, _, path, _ in files])
        except Exception as exc:  # not journaled as written: answered again at the next start
            self.log(f"{len(files)} result(s) not written ({type(exc).__name__}: {exc}): "
                     f"{', '.join(f[1].key for f in files)}; they are retried at the next start")
            for done, *_ in files:
                if done is not None:
                    done()
            return
        for done, entry, rec, gray, path, _data in files:
            try:
                self._announce(entry, rec, gray, path)
            finally:
                if done is not None:
                    done()

    def classify(self, entry: Entry) -> tuple[dict[str, Any], np.ndarray | None]:
        return classify_entry(self.clf, entry, self.top_k)

    def process(self, entry: Entry) -> None:
        """One entry start to end, in the caller's thread."""
        self.finish(entry, *self.classify(entry))

    def finish(self, entry: Entry, rec: dict[str, Any], gray: np.ndarray | None) -> None:
        self.write_group([(None, entry, rec, gray)])

    def _announce(self, entry: Entry, rec: dict[str, Any], gray: np.ndarray | None, result: str) -> None:
        """After the result is durable and journaled: JSON line, log, listeners, PACS queue or spool removal."""
        rec["result"] = os.path.basename(result)
        self.json_out(rec)
        if rec.get("action") == "refuse":
            self.log(f"{rec['file']}: {rec.get('decision')}")
        for listener in self.listeners:
            try:
                listener(rec, gray)
            except Exception as exc:  # a listener's bug is logged, never the service's end
                self.log(f"listener {getattr(listener, '__name__', listener)!s} failed on {entry.key}: {type(exc).__name__}: {exc}")
        if self.sender is not None and result.endswith(".dcm"):
            self.sender.put(entry.key)
        elif os.path.exists(entry.spool):
            os.unlink(entry.spool)
        self.processed += 1

    def _result_file(self, entry: Entry, rec: dict[str, Any]) -> tuple[str, bytes]:
        """(path, bytes): an SR where the source is DICOM with a readable header, else a JSON result."""
        name = safe_name(entry.key.replace("file:", "file-"))
        if is_dicom(entry.spool):
            try:
                return os.path.join(self.outbox, f"{name}.sr.dcm"), self.renderer.render(read_header(entry.spool), rec)
            except (ValueError, AttributeError, KeyError, TypeError) as exc:
                self.log(f"{entry.key}: no SR (the source header lacks what an SR needs: {exc}); wrote a JSON result")
                rec["sr_error"] = str(exc)
        return os.path.join(self.outbox, f"{name}.json"), (json.dumps(rec, indent=1) + "\n").encode()

    def remove_spool(self, key: str) -> None:
        entry = self.journal.entry(key)
        if entry is not None and os.path.exists(entry.spool):
            os.unlink(entry.spool)

    def wait_idle(self, timeout: float) -> bool:
        """True once the queue is empty (tests and the benchmark; polling, no timed asserts)."""
        end = time.time() + timeout
        while time.time() < end:
            if self.queue.empty() and not (self.remote is not None and self.remote.busy()):
                return True
            time.sleep(0.05)
        return False

