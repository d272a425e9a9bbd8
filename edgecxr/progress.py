"""Progress bars for a person at a terminal that do not flood a log file.

tqdm redraws its bar with a carriage return many times a second; sent to a file (a
CI log, ``nohup``, ``| tee``) that is one endless line of redraws. Every progress
indicator in edgecxr comes from here, so the choice is made once: a tqdm bar when
its stream is a terminal, otherwise one plain line at most every
``EDGECXR_PROGRESS_INTERVAL`` seconds (default 30), and none for work that ends
sooner. ``EDGECXR_PROGRESS=bar|log|off`` overrides the choice (``auto`` is the
default).
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

DEFAULT_INTERVAL_S = 30.0
MODES = ("auto", "bar", "log", "off")


def mode(stream: TextIO | None = None) -> str:
    """``bar``, ``log`` or ``off``: what a progress indicator on ``stream`` (default stderr) does."""
    wanted = os.environ.get("EDGECXR_PROGRESS", "auto").strip().lower() or "auto"
    if wanted not in MODES:
        wanted = "auto"
    if wanted != "auto":
        return wanted
    stream = stream if stream is not None else sys.stderr
    try:
        return "bar" if stream.isatty() else "log"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "log"


def interval_s() -> float:
    try:
        return max(0.0, float(os.environ.get("EDGECXR_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


class LogProgress:
    """The tqdm calls edgecxr uses (iterate, ``update``, ``close``), as sparse newline-ended lines."""

    def __init__(self, iterable: Iterable | None, desc: str, total: int | None, unit: str, stream: TextIO, every_s: float,
                 enabled: bool) -> None:
        self.iterable, self.desc, self.unit, self.stream, self.every_s = iterable, desc, unit, stream, every_s
        self.enabled = enabled
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n = total, 0
        self.postfix = ""
        self.start = self.last = time.monotonic()

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every_s:
            self.last = now
            of = f"/{self.total}" if self.total else ""
            tail = f" {self.postfix}" if self.postfix else ""
            self.stream.write(f"{self.desc}: {self.n}{of} {self.unit} ({now - self.start:.0f} s){tail}\n")
            self.stream.flush()

    def set_postfix(self, **values: Any) -> None:
        """tqdm's running figures (training loss, accuracy): shown at the end of the next line."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        """Nothing to clear: every line already ended."""


def progress(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None, unit: str = "it",
             enabled: bool = True, leave: bool = False, stream: TextIO | None = None) -> Any:
    """A progress indicator over ``iterable`` (or driven by ``update``), per this module's policy.

    ``enabled=False`` (a command's ``--quiet``) silences it everywhere.
    """
    stream = stream if stream is not None else sys.stderr
    how = mode(stream) if enabled else "off"
    if how == "bar":
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, file=stream)
    return LogProgress(iterable, desc, total, unit, stream, interval_s(), enabled=how == "log")


def write(line: str) -> None:
    """Print a line on stdout without tearing a bar that is being drawn on the terminal."""
    from tqdm import tqdm

    tqdm.write(line)
