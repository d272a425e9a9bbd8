"""The classifier in its own process, so that nothing else in the service ever holds its GIL.

With the receiver in a process of its own (``receiver.py``), the service process still ran the
classifier thread beside the writer (SR, fsync, journal), the receiver link, the listeners and the
PACS sender, all under one GIL: each time the classifier released it (in the runtime's invoke, in
a read) another thread took it and held it for up to the 5 ms switch interval. Measured, the
worker's chain took 15.7 ms of wall time per image for 11.3 ms of CPU, against 9.4 ms per image
for ``--dir`` on the same images. Here the classifier runs alone in a child process that does what
``--dir`` does and nothing else: it opens the same model file the service opened (the sha256 must
match), runs the golden-vector self-test, then classifies each entry it is sent with the
service's own ``classify_entry`` (``gated.classify_path``, the runner's code path) and sends the
record back, in order. The decoded image travels back only when a listener asked for it (the
clinic page's thumbnails).

Forked before the model is opened and before any thread starts (as the receiver); it asks the
kernel for SIGKILL when the service dies and exits when its pipe closes. An entry in flight when
either process dies is "received" in the journal and answered at the next start, as every other.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import threading
from collections.abc import Callable
from typing import Any

from .journal import Entry
from .process_setup import child_setup, fork_child, reap

Result = Callable[[Entry, Callable[[], None] | None, dict[str, Any], Any], None]


def _open(params: dict[str, Any]) -> tuple[Any, str, bool]:
    """(classifier, model sha256, self-test passed?), opened exactly as ``serve`` opens it."""
    from ..backends import open_backend
    from ..classify import Classifier
    from ..digest import file_sha256
    from ..selftest import run_selftest

    clf = Classifier(open_backend(params["model"], params["threads"], require_contract=True,
                                  check_cpu=params["check_cpu"], runtime=params["runtime"]))
    return clf, file_sha256(clf.backend.path), run_selftest(clf.backend).get("passed") is not False


def _child(conn: Any, params: dict[str, Any], inherited: list[Any]) -> None:
    """The classifier process: open, report, then classify what arrives until "stop"."""
    child_setup()
    from .process_setup import settle
    from .service import classify_entry

    if params.get("cpus"):  # before the model opens: the runtime's threads inherit the set
        from .placement import pin

        try:
            pin(0, params["cpus"])
        except OSError:  # the service pinned itself first, so this is not expected; unpinned is still correct
            pass
    for other in inherited:  # the receiver's pipe: only the service may hold its other end
        other.close()
    try:
        try:
            clf, sha, passed = _open(params)
        except Exception as exc:  # reported to the service, which exits with the reason
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            os._exit(0)
        settle()
        conn.send(("ready", sha, passed))
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                conn.send(("stopped",))
                os._exit(0)
            if msg[0] == "signature":  # what the trust session verified in the service (trust.py attach)
                clf.signature = msg[1]
                continue
            _tag, fields, want_gray = msg
            entry = Entry(*fields)
            try:
                rec, gray = classify_entry(clf, entry, params["top_k"])
                conn.send(("result", rec, gray if want_gray else None))
            except Exception as exc:  # one bad instance must not end the process; it stays "received"
                conn.send(("failed", f"{type(exc).__name__}: {exc}"))
    except (EOFError, OSError):  # the service is gone
        os._exit(0)


class WorkerProcess:
    """The service's end of the classifier process: entries out, results back in the same order."""

    def __init__(self, params: dict[str, Any], inherited: list[Any] = ()) -> None:
        """Fork now, before the model is opened and before any thread starts, and let the child
        open the model at once (in parallel with the service's own open and self-test)."""
        self.conn, self.proc = fork_child(_child, (params, list(inherited)), "edgecxr-classifier")
        self.pending: collections.deque[tuple[Entry, Callable[[], None] | None]] = collections.deque()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._stopping = False
        self.died: str | None = None  # why the child ended without being asked to (then on_stopped is called too)

    def wait_ready(self, model_sha256: str) -> bool:
        """The child's self-test result; raises OSError when it could not open the same model."""
        try:
            msg = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise OSError(f"the classifier process ended while opening the model ({exc})") from exc
        if msg[0] == "error":
            raise OSError(f"the classifier process could not open the model: {msg[1]}")
        if msg[1] != model_sha256:
            raise OSError(f"the model file changed while the service started (sha256 {msg[1][:12]} != {model_sha256[:12]})")
        return bool(msg[2])

    def start(self, on_result: Result, on_failed: Callable[[Entry, Callable[[], None] | None, str], None],
              on_stopped: Callable[[], None], signature: str = "unsigned") -> None:
        """Results from now on; ``signature``: the service's classifier's tag (``--trust``), which
        every record carries as ``--image``'s does."""
        self.conn.send(("signature", signature))
        self._reader = threading.Thread(target=self._read, args=(on_result, on_failed, on_stopped),
                                        name="classifier-link", daemon=True)
        self._reader.start()

    def submit(self, entry: Entry, done: Callable[[], None] | None, want_gray: bool) -> None:
        """Send one entry (never waits for its result: the child classifies the next while this one is written)."""
        with self._lock:  # not held while sending: a full pipe must never block the reader too
            self.pending.append((entry, done))
        self.conn.send(("classify", dataclasses.astuple(entry), want_gray))

    def _read(self, on_result: Result, on_failed: Callable[..., None], on_stopped: Callable[[], None]) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                if not self._stopping:  # a crash in the runtime (a signal) or a kill: the service must not go on deaf
                    self.proc.join(timeout=5)
                    self.died = f"the classifier process ended (exit code {self.proc.exitcode})"
                on_stopped()
                return
            if msg[0] == "stopped":
                on_stopped()
                return
            with self._lock:
                entry, done = self.pending.popleft()
            if msg[0] == "result":
                on_result(entry, done, msg[1], msg[2])
            else:
                on_failed(entry, done, msg[1])

    def busy(self) -> bool:
        return bool(self.pending)

    def stop(self) -> None:
        """After the last entry: the child finishes what it was sent, then exits."""
        self._stopping = True
        try:
            self.conn.send(("stop",))  # from the thread that submits: the one sender on this end
        except (OSError, ValueError):
            pass
        if self._reader is not None:
            self._reader.join(timeout=30)
        reap(self.proc)
        self.conn.close()

    def abandon(self) -> None:
        """A start-up that failed: the closed pipe ends the child."""
        self._stopping = True
        self.conn.close()
        reap(self.proc)
