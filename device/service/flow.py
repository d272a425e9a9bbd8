"""Flow control for the DICOM receiver: hold a C-STORE's answer, not the image, while the service is behind.

A modality sends one image per association and waits for each answer. When images arrive faster
than the service answers them, either they wait in the service's queue (receipt-to-SR latency
grows without bound: 10-40 s in a 1000-image burst) or the modality waits for the answer with its
next image. The held instance is already journaled and durable (the answer is the only thing
held), so nothing is at risk. With ``limit`` 0 and one association, image k is answered once every
image before it is answered, so image k+1 travels while k is classified: the worker waits only when
sending an image takes longer than classifying one, and then the sender's own speed is the limit
anyway. Stdlib only.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable


class FlowControl:
    """Tickets in receipt order and a count of images answered, so that a C-STORE's success
    answer can be held while too many images received before it are still unanswered: the
    modality then waits with its next image instead of that image waiting in our queue (a
    modality sends one image per association and waits for each answer). The held instance is
    already journaled and durable; only the answer waits. The worker answers in ticket order."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._admitted = self._finished = 0
        self.held_ms: list[float] = []

    def admit(self, put: Callable[[], None]) -> int:
        with self._cond:
            put()  # under the lock: tickets and queue order agree
            self._admitted += 1
            return self._admitted

    def finished(self) -> None:
        with self._cond:
            self._finished += 1
            self._cond.notify_all()

    def hold(self, ticket: int, limit: int, timeout: float = 30.0) -> bool:
        """Return once at most ``limit`` images received before ``ticket`` are unanswered (True), or
        after ``timeout`` s (False: the instance is durable either way, the modality must not time out)."""
        t = time.perf_counter()
        with self._cond:
            if ticket - 1 - self._finished <= limit:
                return True
            room = self._cond.wait_for(lambda: ticket - 1 - self._finished <= limit, timeout)
        self.held_ms.append((time.perf_counter() - t) * 1e3)
        return room

    def summary(self) -> str:
        if not self.held_ms:
            return f"flow control: no answer held ({self._admitted} received)"
        held = sorted(self.held_ms)
        return (f"flow control: {len(held)} of {self._admitted} answers held, median {held[len(held) // 2]:.0f} ms, "
                f"longest {held[-1]:.0f} ms")
