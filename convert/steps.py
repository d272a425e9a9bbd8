"""One conversion's steps: what was made, how long it took, how big it is, or why it failed.

A failing step is recorded and printed, never raised, so one broken format never
stops the others; the report lists every step with its reason.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgecxr.device.contract import Contract
from edgecxr.device.formats import model_bytes
from edgecxr.errors import EdgecxrError

Echo = Callable[[str], None]


@dataclass
class Step:
    format: str
    precision: str
    file: str
    status: str = "pending"  # ok | failed | skipped | degraded | unverified
    reason: str = ""
    seconds: float = 0.0
    bytes: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    verify: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "precision": self.precision, "file": self.file, "status": self.status,
                "reason": self.reason, "seconds": round(self.seconds, 3), "bytes": self.bytes, "details": self.details,
                "verify": self.verify}


def fail_reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:240] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, EdgecxrError) else text


class Run:
    """The steps of one conversion into ``out_dir``, in the order they ran."""

    def __init__(self, out_dir: str, echo: Echo, threads: int | None) -> None:
        self.out_dir, self.echo, self.threads = out_dir, echo, threads
        self.steps: list[Step] = []
        # Each produced file's contract, held in memory until it is verified and written once
        # (``pipeline._finish``): a file is never stamped, reopened and restamped.
        self.staged: dict[str, Contract] = {}

    def stage(self, path: str, contract: Contract) -> None:
        """The contract ``path`` will carry, written after verification."""
        self.staged[os.path.abspath(path)] = contract

    def contract(self, step: Step) -> Contract | None:
        return self.staged.get(os.path.abspath(self.path(step)))

    def path(self, step: Step) -> str:
        return os.path.join(self.out_dir, step.file)

    def do(self, step: Step, fn: Callable[[], dict[str, Any] | None], extra_seconds: float = 0.0,
           contract: Contract | None = None) -> bool:
        """Run one step; a failure is recorded and printed, never raised.

        ``extra_seconds``: time already spent on this artifact elsewhere (a shared
        child process), so the printed and reported time is the whole cost.
        ``contract``: the file's contract, staged when the step succeeds (a ``fn``
        that builds it from the produced file stages it itself).
        """
        self.steps.append(step)
        t0 = time.perf_counter() - extra_seconds
        try:
            step.details = fn() or {}
            if contract is not None:
                self.stage(self.path(step), contract)
            step.status = "ok"
            step.bytes = model_bytes(self.path(step))
        except Exception as exc:  # each format fails alone; the reason goes into the report
            step.status, step.reason = "failed", fail_reason(exc)
        step.seconds = time.perf_counter() - t0
        self.announce(step)
        return step.status == "ok"

    def skip(self, step: Step, reason: str) -> None:
        step.status, step.reason = "skipped", reason
        self.steps.append(step)
        self.announce(step)

    def announce(self, step: Step) -> None:
        size = f"{step.bytes / 1e6:.2f} MB" if step.status == "ok" else ""
        line = f"  {step.format:<11}{step.precision:<6}{step.status:<8}{step.seconds:>7.1f} s {size:>10}  {step.file}"
        if step.reason:
            line += f"  ({step.reason})"
        self.echo(line)
