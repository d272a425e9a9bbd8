"""The DICOM Storage SCP: what the X-ray unit sends its images to.

Accepts CR and Digital X-Ray (for presentation and for processing) and, so that it can refuse
them with a reason instead of failing the association, every other storage class pynetdicom
knows, in any transfer syntax (compressed ones the decoder cannot read get a refusal result).
Each instance is written to the spool (temporary file, fsync, rename) and recorded in the
journal **before** success is answered; a disk that is full or a folder that is not writable
answers 0xA700 "out of resources", so the modality keeps the image and retries. An instance
already in the journal is acknowledged and not answered again. Needs pynetdicom.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from .flow import FlowControl
from .journal import RECEIVED, Entry, Journal

OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210
SUCCESS = 0x0000


def write_durable(path: str, data: bytes) -> None:
    """Temporary file, fsync, rename, fsync the folder."""
    write_durable_many([(path, data)])


def write_durable_many(items: list[tuple[str, bytes]]) -> None:
    """:func:`write_durable` for several files at once: every temporary file written, then each
    fsynced (on a journaling file system the first fsync's commit carries the others' data, so the
    rest return quickly), renamed, and each folder fsynced once. Durable together when it returns."""
    tmps = []
    try:
        for path, data in items:
            tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}")
            fh = open(tmp, "wb")
            tmps.append((fh, tmp, path))
            fh.write(data)
            fh.flush()
        for fh, _tmp, _path in tmps:
            os.fsync(fh.fileno())
    finally:
        for fh, _tmp, _path in tmps:
            fh.close()
    for _fh, tmp, path in tmps:
        os.replace(tmp, path)
    for folder in sorted({os.path.dirname(path) for _fh, _tmp, path in tmps}):
        sync_folder(folder)


def sync_folder(folder: str) -> None:
    """fsync a folder: the names renamed into it are on disk when it returns."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def safe_name(uid: str) -> str:
    """A UID as a file name (UIDs are digits and dots; anything else is replaced)."""
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in uid)[:128] or "unnamed"


class StoreHandler:
    """The C-STORE handler: spool, journal, queue; returns the status the modality sees."""

    def __init__(self, journal: Journal, spool: str, outbox: str, submit: Callable[[Entry], None],
                 log: Callable[[str], None], flow: FlowControl | None = None, queue_limit: int = 0) -> None:
        """``submit(entry)`` hands a journaled entry to the service; with ``flow``, whoever answers
        it must call ``flow.finished()`` (in entry order), and the answer to the modality is held
        while more than ``queue_limit`` entries before it are unanswered."""
        self.journal, self.spool, self.outbox, self.submit, self.log = journal, spool, outbox, submit, log
        self.flow, self.queue_limit = flow, queue_limit

    def look_ahead(self, event: evt.Event) -> int:
        """The queue limit less one for each other sender connected now: a lone sender needs an
        image of look-ahead so that the classifier never waits for the next one to travel, while
        each other sender already keeps one image here (more would only add latency)."""
        if self.queue_limit <= 0:
            return self.queue_limit
        return max(0, self.queue_limit - (len(event.assoc.ae.active_associations) - 1))

    def __call__(self, event: evt.Event) -> int:
        req = event.request
        uid = str(req.AffectedSOPInstanceUID or "")
        caller = event.assoc.requestor.ae_title
        if not uid:
            self.log(f"C-STORE from {caller} without an SOP Instance UID: answered 0x{CANNOT_UNDERSTAND:04X}")
            return CANNOT_UNDERSTAND
        try:
            data = event.encoded_dataset()
        except Exception as exc:  # pynetdicom/pydicom raise many types for a dataset they cannot encode
            self.log(f"C-STORE {uid} from {caller}: cannot read the dataset ({type(exc).__name__}: {exc})")
            return CANNOT_UNDERSTAND
        sha = hashlib.sha256(data).hexdigest()
        path = os.path.join(self.spool, safe_name(uid) + ".dcm")
        try:
            if self.journal.known(uid):
                self.journal.receive(uid, sha, path, f"scp:{caller}")
                self.log(f"{uid} from {caller}: received again, already answered or queued (acknowledged, not answered twice)")
                return SUCCESS
            if not os.access(self.outbox, os.W_OK | os.X_OK) or not os.path.isdir(self.outbox):
                raise OSError(f"outbox {self.outbox} is not a writable folder")
            write_durable(path, data)
            new = self.journal.receive(uid, sha, path, f"scp:{caller}")
        except (OSError, sqlite3.Error) as exc:
            self.log(f"{uid} from {caller}: cannot store it ({exc}); answered 0x{OUT_OF_RESOURCES:04X} out of resources")
            return OUT_OF_RESOURCES
        if new:
            entry = Entry(uid, sha, path, f"scp:{caller}", RECEIVED, None)
            if self.flow is None:
                self.submit(entry)
            else:
                self.flow.hold(self.flow.admit(lambda: self.submit(entry)), self.look_ahead(event))
        return SUCCESS


def make_ae(aet: str) -> AE:
    """Every storage class in every transfer syntax pynetdicom knows, so nothing is rejected at
    association time for a reason the service could state in a result instead."""
    ae = AE(ae_title=aet)
    for ctx in AllStoragePresentationContexts:
        ae.add_supported_context(ctx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.maximum_associations = 16
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    return ae


def start_scp(aet: str, bind: str, port: int, handler: StoreHandler):
    """Start listening (non-blocking); returns the server, whose ``shutdown()`` stops it."""
    ae = make_ae(aet)
    return ae.start_server((bind, port), block=False, evt_handlers=[(evt.EVT_C_STORE, handler)])
