"""A watched folder for PNG, JPEG and DICOM files, taken only when complete.

A file counts as complete when its size and modification time have not changed between two
polls (a copy still being written is left alone), and dot files and ``*.part``/``*.tmp`` names
are never taken. A taken file is hashed, moved into the spool and recorded in the journal; a
DICOM file's key is its SOPInstanceUID (the same study sent over the network and dropped in
the folder is answered once), any other file's key is ``file:<sha256>``. Anything else in the
folder (a PDF, a text file) still gets a refusal result and one log line. Stdlib only, plus
pydicom for the DICOM header.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable

from ..digest import file_sha256
from ..gated import is_dicom
from .journal import RECEIVED, Entry, Journal
from .scp import safe_name, write_durable

SKIP_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial")


def inbox_key(path: str, sha: str) -> str:
    """SOPInstanceUID for a DICOM file with a readable header, else ``file:<sha256>``."""
    if is_dicom(path):
        try:
            import pydicom

            uid = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            if uid:
                return uid
        except Exception:  # an unreadable header: the file is still answered (refused), by content
            pass
    return f"file:{sha}"


class Inbox:
    """Polls ``folder`` every ``interval`` seconds from its own thread."""

    def __init__(self, folder: str, spool: str, journal: Journal, enqueue: Callable[[Entry], int],
                 log: Callable[[str], None], interval: float = 0.5) -> None:
        self.folder, self.spool, self.journal, self.enqueue, self.log = folder, spool, journal, enqueue, log
        self.interval = interval
        self._seen: dict[str, tuple[int, float]] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="inbox", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)

    def _candidates(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.folder))
        except OSError as exc:
            self.log(f"inbox {self.folder}: cannot list it ({exc})")
            return []
        return [os.path.join(self.folder, n) for n in names
                if not n.startswith(".") and not n.lower().endswith(SKIP_SUFFIXES) and os.path.isfile(os.path.join(self.folder, n))]

    def poll(self) -> int:
        """Take every file that is complete; returns how many were taken."""
        taken, current = 0, {}
        for path in self._candidates():
            try:
                st = os.stat(path)
            except OSError:
                continue
            current[path] = (st.st_size, st.st_mtime)
            if self._seen.get(path) == current[path] and self._take(path):
                taken += 1
                current.pop(path)
        self._seen = current
        return taken

    def _take(self, path: str) -> bool:
        name = os.path.basename(path)
        try:
            sha = file_sha256(path)
            key = inbox_key(path, sha)
            if self.journal.known(key):
                self.journal.receive(key, sha, path, f"inbox:{name}")
                os.unlink(path)
                self.log(f"inbox {name}: {key} was already received; not answered twice (file removed)")
                return True
            suffix = ".dcm" if is_dicom(path) else os.path.splitext(name)[1].lower()
            spooled = os.path.join(self.spool, safe_name(key.replace("file:", "file-")) + suffix)
            with open(path, "rb") as fh:  # copy durably, journal, then remove: a crash between steps loses nothing
                write_durable(spooled, fh.read())
            new = self.journal.receive(key, sha, spooled, f"inbox:{name}")
            os.unlink(path)
            if new:
                self.enqueue(Entry(key, sha, spooled, f"inbox:{name}", RECEIVED, None))
            return True
        except OSError as exc:
            self.log(f"inbox {name}: cannot take it ({exc}); will try again")
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

