"""What the service has received and answered, on disk before anyone is told "stored".

One SQLite database in WAL mode with ``synchronous=FULL``: each commit is on disk when it
returns. An instance is recorded (key, sha256 of the file, spool path) **before** its C-STORE
is acknowledged, marked ``written`` only after its result file is durably renamed into the
outbox, and ``done`` after the PACS acknowledged it (or at once without a PACS). A restart
re-queues everything not done, and a key seen before is never queued again, so a study is
neither lost nor answered twice. Stdlib only.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass

RECEIVED, WRITTEN, DONE = "received", "written", "done"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
  key TEXT PRIMARY KEY,          -- SOPInstanceUID, or file:<sha256> for a non-DICOM inbox file
  sha256 TEXT NOT NULL,
  spool TEXT NOT NULL,           -- the received file, kept until done
  origin TEXT NOT NULL,          -- "scp:<calling AE>" or "inbox:<name>"
  state TEXT NOT NULL,
  received_at REAL NOT NULL,
  result_at REAL,
  done_at REAL,
  result TEXT,                   -- the outbox file (SR or JSON)
  send_attempts INTEGER NOT NULL DEFAULT 0,
  duplicates INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class Entry:
    key: str
    sha256: str
    spool: str
    origin: str
    state: str
    result: str | None


class Journal:
    """Thread-safe (one connection behind a lock): the SCP's threads, the inbox watcher, the
    worker and the PACS sender all write to it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def receive(self, key: str, sha256: str, spool: str, origin: str) -> bool:
        """Record a received instance; ``False`` when the key was already known (a resend:
        counted, not answered again). Durable when it returns."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO instances (key, sha256, spool, origin, state, received_at) VALUES (?, ?, ?, ?, ?, ?)",
                (key, sha256, spool, origin, RECEIVED, time.time()))
            if cur.rowcount == 0:
                self._db.execute("UPDATE instances SET duplicates = duplicates + 1 WHERE key = ?", (key,))
                return False
            return True

    def known(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM instances WHERE key = ?", (key,)).fetchone() is not None

    def written(self, key: str, result: str, done: bool) -> None:
        """The result file is durable; ``done`` when nothing more is owed (no PACS)."""
        now = time.time()
        with self._lock:
            self._db.execute("UPDATE instances SET state = ?, result = ?, result_at = ?, done_at = ? WHERE key = ?",
                             (DONE if done else WRITTEN, result, now, now if done else None, key))

    def written_many(self, items: list[tuple[str, str, bool]]) -> None:
        """:meth:`written` for several ``(key, result, done)`` in one transaction: one commit, one fsync."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("UPDATE instances SET state = ?, result = ?, result_at = ?, done_at = ? WHERE key = ?",
                                     [(DONE if done else WRITTEN, result, now, now if done else None, key)
                                      for key, result, done in items])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def sent(self, key: str) -> None:
        with self._lock:
            self._db.execute("UPDATE instances SET state = ?, done_at = ?, send_attempts = send_attempts + 1 WHERE key = ?",
                             (DONE, time.time(), key))

    def send_failed(self, key: str) -> None:
        with self._lock:
            self._db.execute("UPDATE instances SET send_attempts = send_attempts + 1 WHERE key = ?", (key,))

    def entry(self, key: str) -> Entry | None:
        with self._lock:
            row = self._db.execute("SELECT key, sha256, spool, origin, state, result FROM instances WHERE key = ?",
                                   (key,)).fetchone()
        return Entry(*row) if row else None

    def in_state(self, state: str) -> list[Entry]:
        """Entries in ``state``, oldest first: what a restart must finish."""
        with self._lock:
            rows = self._db.execute("SELECT key, sha256, spool, origin, state, result FROM instances WHERE state = ? "
                                    "ORDER BY received_at", (state,)).fetchall()
        return [Entry(*r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state").fetchall()
        return {RECEIVED: 0, WRITTEN: 0, DONE: 0, **dict(rows)}

    def timings(self) -> list[tuple[str, float, float | None]]:
        """(key, received_at, result_at) for every instance: receipt-to-result latency."""
        with self._lock:
            return self._db.execute("SELECT key, received_at, result_at FROM instances ORDER BY received_at").fetchall()
