"""The DICOM receiver in its own process, so that receiving never holds the classifier's GIL.

pynetdicom decodes every PDU and DIMSE message in Python: about 5 ms of interpreter time per
image, which in one process competes for the GIL with the worker's decoding, preprocessing and
SR writing (measured: the service then used one of two cores and kept half of ``--dir``'s
throughput). Here the SCP (``scp.StoreHandler``: spool, journal, then the answer) runs in a child
process forked before the model is opened and before any thread starts; it has its own journal
connection (SQLite WAL serialises the two writers), and a pipe carries each journaled entry to the
service and, back, one ``finished`` per answered entry for flow control (``flow.FlowControl``).

The child dies with the service: it asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``, Linux) and also exits when the pipe closes. A journaled instance whose
entry never reached the service (the service died first) is received-not-done in the journal,
and a restart answers it, as every other.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from typing import Any

from .journal import Entry
from .process_setup import child_setup, fork_child, reap


def _child(conn: Any, params: dict[str, Any]) -> None:
    """The receiver process: wait for "go", listen, forward entries, count answers, stop."""
    child_setup()
    from .flow import FlowControl
    from .journal import Journal
    from .process_setup import log_line, settle
    from .scp import StoreHandler, start_scp

    try:
        if conn.recv() != ("go",):
            os._exit(0)
        journal = Journal(params["journal"])
        flow = FlowControl()
        send_lock = threading.Lock()

        def submit(entry: Entry) -> None:
            with send_lock:
                conn.send(("entry", dataclasses.astuple(entry)))

        limit = params["queue_limit"]
        handler = StoreHandler(journal, params["spool"], params["outbox"], submit, log_line,
                               flow=flow if limit >= 0 else None, queue_limit=limit)
        try:
            server = start_scp(params["aet"], params["bind"], params["port"], handler)
        except OSError as exc:
            conn.send(("error", f"cannot listen on {params['bind']}:{params['port']}: {exc}"))
            os._exit(0)
        settle()
        conn.send(("listening",))
        while True:
            msg = conn.recv()
            if msg == ("finished",):
                flow.finished()
            elif msg == ("stop",):
                server.shutdown()
                journal.close()
                with send_lock:
                    conn.send(("stopped", flow.summary()))
                os._exit(0)
    except (EOFError, OSError):  # the service is gone
        os._exit(0)


class Receiver:
    """The service's end of the receiver process."""

    def __init__(self, params: dict[str, Any]) -> None:
        """Fork now: before the model is opened and before any thread of this process starts."""
        self.conn, self.proc = fork_child(_child, (params,), "edgecxr-receiver")
        self.params = params
        self._send_lock = threading.Lock()
        self.summary = "flow control: receiver did not report"
        self._stopped = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self, enqueue: Callable[[Entry, Callable[[], None]], Any]) -> None:
        """Listen; entries go to ``enqueue(entry, done)``. Raises OSError when the port cannot be bound."""
        self._send(("go",))
        msg = self.conn.recv()
        if msg[0] == "error":
            self.proc.join(timeout=10)
            raise OSError(msg[1])
        self._reader = threading.Thread(target=self._read, args=(enqueue,), name="receiver-link", daemon=True)
        self._reader.start()

    def _read(self, enqueue: Callable[[Entry, Callable[[], None]], Any]) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                return
            if msg[0] == "entry":
                enqueue(Entry(*msg[1]), self.finished)
            elif msg[0] == "stopped":
                self.summary = msg[1]
                self._stopped.set()
                return

    def _send(self, msg: tuple) -> None:
        with self._send_lock:
            self.conn.send(msg)

    def finished(self) -> None:
        """One entry from the receiver is answered (its SR durable): the receiver may release a held answer."""
        try:
            self._send(("finished",))
        except (OSError, ValueError):  # the receiver is gone (stopping)
            pass

    def stop(self) -> None:
        if self._reader is None:  # never started (a failed start-up): the closed pipe ends the child
            self.conn.close()
            reap(self.proc)
            return
        try:
            self._send(("stop",))
            self._stopped.wait(timeout=30)
        except (OSError, ValueError):
            pass
        reap(self.proc)
        self.conn.close()
