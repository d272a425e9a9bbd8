"""Send written SRs to the PACS by C-STORE, and keep retrying while it is down.

One thread, one association kept open between sends. An SR is marked done in the journal only
after the PACS answered success; a refused or failed send waits (backoff doubling up to a
limit, each wait one log line naming how many results are queued) and is tried again, so a PACS
that is down delays results but never loses them. Needs pynetdicom (``install.sh --service``).
"""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Comprehensive3DSRStorage

from .journal import Journal


class PacsError(ValueError):
    """A ``--pacs`` value that is not HOST:PORT:AET."""


def parse_pacs(text: str) -> tuple[str, int, str]:
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2] or len(parts[2]) > 16:
        raise PacsError(f"--pacs {text!r}: expected HOST:PORT:AET (AE title at most 16 characters)")
    return parts[0], int(parts[1]), parts[2]


class PacsSender:
    """Queue of journal keys whose SR is written; :meth:`put` after the SR is durable."""

    def __init__(self, target: tuple[str, int, str], our_aet: str, journal: Journal, log: Callable[[str], None],
                 on_sent: Callable[[str], None], backoff_start: float = 0.5, backoff_max: float = 30.0) -> None:
        self.host, self.port, self.aet = target
        self.journal, self.log, self.on_sent = journal, log, on_sent
        self.backoff_start, self.backoff_max = backoff_start, backoff_max
        self.ae = AE(ae_title=our_aet)
        self.ae.add_requested_context(Comprehensive3DSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 30
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.assoc = None
        self.thread = threading.Thread(target=self._run, name="pacs-sender", daemon=True)
        self._stop = threading.Event()

    def start(self) -> None:
        self.thread.start()

    def put(self, key: str) -> None:
        self.queue.put(key)

    def stop(self) -> None:
        self._stop.set()
        self.queue.put(None)
        self.thread.join(timeout=10)
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()

    def _send(self, path: str) -> str | None:
        """``None`` on success, else why it failed (one phrase)."""
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self.ae.associate(self.host, self.port, ae_title=self.aet)
            if not self.assoc.is_established:
                return "refused the association or is unreachable"
        status = self.assoc.send_c_store(pydicom.dcmread(path))
        code = getattr(status, "Status", None)
        if code is None:
            self.assoc.abort()
            return "did not answer the C-STORE (connection lost)"
        if code not in (0x0000, 0xB000, 0xB007, 0xB006):
            return f"answered C-STORE status 0x{code:04X}"
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get()
            if key is None:
                return
            entry = self.journal.entry(key)
            if entry is None or entry.result is None or not os.path.exists(entry.result):
                self.log(f"cannot send {key}: its result file is missing from the outbox")
                continue
            delay = self.backoff_start
            while not self._stop.is_set():
                try:
                    why = self._send(entry.result)
                except (OSError, RuntimeError, ValueError) as exc:
                    why = f"failed ({type(exc).__name__}: {exc})"
                if why is None:
                    self.journal.sent(key)
                    self.on_sent(key)
                    break
                self.journal.send_failed(key)
                self.log(f"PACS {self.aet}@{self.host}:{self.port} {why}; {self.queue.qsize() + 1} result(s) queued, "
                         f"retry in {delay:.1f} s")
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)
