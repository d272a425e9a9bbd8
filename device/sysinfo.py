"""Which machine a latency number came from, as one string and as plain data.

A latency without its machine is meaningless, and the Pi and the workstation must
describe themselves the same way so ``edgecxr bench`` can put their numbers in one
table: this module is shared by the Pi runner's ``--bench`` and ``edgecxr bench``.
Standard library only; every probe is best-effort and never raises.
"""
from __future__ import annotations

import os
import platform
from typing import Any

from .cpufeatures import cpu_description, cpu_model, cpuinfo_field, read_proc_text


def board_model() -> str:
    """The board, e.g. 'Raspberry Pi 4 Model B Rev 1.5' (device tree), or '' on a PC."""
    return read_proc_text("/proc/device-tree/model") or read_proc_text("/sys/firmware/devicetree/base/model")


def os_name() -> str:
    text = read_proc_text("/etc/os-release")
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return f"{platform.system()} {platform.release()}"


def is_emulated() -> bool:
    """True under qemu user emulation, whose timings must never pass for a Pi's.

    The aarch64 check sets EDGECXR_EMULATED and serves a cpuinfo naming qemu; as a
    further guard, an ARM Python that sees an x86 vendor in /proc/cpuinfo is emulated.
    """
    if os.environ.get("EDGECXR_EMULATED"):
        return True
    text = read_proc_text("/proc/cpuinfo")
    if "qemu" in cpuinfo_field(text, "hardware").lower():  # the cpuinfo aarch64_check.sh gives qemu
        return True
    vendor = cpuinfo_field(text, "vendor_id")
    return platform.machine().lower() in ("aarch64", "arm64", "armv7l") and vendor in ("GenuineIntel", "AuthenticAMD")


def device_info(runtime: str | None = None) -> dict[str, Any]:
    """The machine as plain data (for JSON); ``runtime`` e.g. 'ai-edge-litert 2.3.0'."""
    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:  # pragma: no cover - numpy is a hard requirement elsewhere
        numpy_version = "missing"
    cpu = cpu_description(cpu_model())
    return {
        "board": board_model(),
        "cpu": cpu["model"],
        "int8_features": cpu["int8_features"],
        "int8_target": cpu["target"],
        "cores": os.cpu_count() or 0,
        "machine": platform.machine(),
        "os": os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": numpy_version,
        "runtime": runtime or "",
        "emulated": is_emulated(),
    }


def device_string(runtime: str | None = None, info: dict[str, Any] | None = None) -> str:
    """One line naming the machine, e.g. 'Raspberry Pi 4 Model B Rev 1.5 | Cortex-A72 x4 |
    Debian GNU/Linux 12 (bookworm) aarch64 | Python 3.11.2 | ai-edge-litert 2.3.0'."""
    d = info or device_info(runtime)
    parts = [d["board"]] if d["board"] else []
    feats = " ".join(d.get("int8_features") or [])
    cpu = f"{d['cpu']} x{d['cores']}" + (f" ({feats})" if feats else "")
    parts += [cpu, f"{d['os']} {d['machine']}", f"Python {d['python']} numpy {d['numpy']}"]
    if d["runtime"]:
        parts.append(d["runtime"])
    if d["emulated"]:
        parts.append("EMULATED (qemu): timings are not device latency")
    return " | ".join(parts)
