"""What the service's processes (the service, the classifier, the DICOM receiver) share: the
log line format, the settling once started, and how a child is forked, tied to the service's
life and reaped. Stdlib only."""
from __future__ import annotations

import ctypes
import gc
import multiprocessing
import signal
import sys
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1


def log_line(message: str) -> None:
    sys.stderr.write(f"edgecxr-serve: {message}\n")
    sys.stderr.flush()


def settle() -> None:
    """Once started: move every object made so far (the model, its runtime, pydicom, pynetdicom,
    highdicom: about 126,000 tracked objects) out of the garbage collector's view, so that a full
    collection while serving does not walk them all with every thread stopped (30-165 ms each at
    start-up on the shared 2-core machine; none fell inside a 200-image run either way)."""
    gc.collect()
    gc.freeze()


def fork_child(target: Callable[..., None], args: tuple, name: str) -> tuple[Any, Any]:
    """(this end of a pipe, the started process): ``target(child_end, *args)`` runs in a fork
    (call it before any thread starts and before any model is opened)."""
    ctx = multiprocessing.get_context("fork")
    conn, child_end = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child_end, *args), name=name, daemon=True)
    proc.start()
    child_end.close()
    return conn, proc


def child_setup() -> None:
    """First thing in a child: Ctrl-C reaches the whole process group, so the service stops the
    child instead; and the kernel SIGKILLs the child when the service dies (``PR_SET_PDEATHSIG``,
    Linux; elsewhere the closed pipe ends it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def reap(proc: Any, timeout: float = 10.0) -> None:
    """Wait for a child to end; kill it if it has not after ``timeout`` s."""
    proc.join(timeout=timeout)
    if proc.is_alive():
        proc.kill()
