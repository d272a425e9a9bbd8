"""What the machine says about its own heat and clock while a sustained benchmark runs.

A Pi in a warm clinic room slows down when it gets hot (soft temperature limit at
60 C by default, throttling at 80-85 C) or when its supply sags (under-voltage), and
a latency table without these readings cannot tell a slow model from a hot board.
Each reader returns ``(value, where it came from)``; a machine that does not expose
a reading gets ``None`` and the words "not readable here: ...", never a guess.
Standard library only, so the same code runs on the Pi.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from typing import Any

NOT_READABLE = "not readable here"

# vcgencmd get_throttled (Raspberry Pi firmware): bit -> meaning
THROTTLE_BITS = {
    0: "under-voltage now",
    1: "ARM frequency capped now",
    2: "throttled now",
    3: "soft temperature limit now",
    16: "under-voltage has occurred",
    17: "ARM frequency capping has occurred",
    18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}
# the zone types that are the CPU (Pi: cpu-thermal; Intel: x86_pkg_temp; many ARM boards: soc/cpu_thermal)
CPU_ZONE_TYPES = ("cpu-thermal", "cpu_thermal", "x86_pkg_temp", "soc_thermal", "soc-thermal", "cpu")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def cpu_temperature_c(root: str = "/") -> tuple[float | None, str]:
    """The CPU's temperature in degrees C from ``/sys/class/thermal/thermal_zone*/temp``
    (millidegrees), preferring a zone whose type names the CPU, else the hottest zone."""
    zones = []
    for zone in sorted(glob.glob(os.path.join(root, "sys/class/thermal/thermal_zone*"))):
        raw = _read(os.path.join(zone, "temp"))
        if raw is None or not re.fullmatch(r"-?\d+", raw):
            continue
        zones.append(((_read(os.path.join(zone, "type")) or "?").lower(), int(raw) / 1000.0, os.path.basename(zone)))
    if not zones:
        return None, f"{NOT_READABLE}: no readable /sys/class/thermal/thermal_zone*/temp"
    cpu = [z for z in zones if z[0] in CPU_ZONE_TYPES]
    kind, value, name = cpu[0] if cpu else max(zones, key=lambda z: z[1])
    return value, f"{name} ({kind})" + ("" if cpu else ", hottest zone: none is typed as the CPU")


def cpu_clock_mhz(root: str = "/") -> tuple[float | None, str]:
    """The highest current clock over the cores, in MHz, from ``cpufreq/scaling_cur_freq`` (kHz)."""
    values = []
    for path in sorted(glob.glob(os.path.join(root, "sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"))):
        raw = _read(path)
        if raw and raw.isdigit():
            values.append(int(raw) / 1000.0)
    if not values:
        return None, f"{NOT_READABLE}: no /sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq (no cpufreq driver, e.g. a VM)"
    return max(values), f"scaling_cur_freq, max of {len(values)} core(s)"


def decode_throttled(value: int) -> list[str]:
    """The meanings of the bits set in a ``get_throttled`` value (unknown bits by number)."""
    return [THROTTLE_BITS.get(b, f"bit {b}") for b in range(32) if value >> b & 1]


def throttled(root: str = "/", vcgencmd: str | None = None) -> tuple[int | None, str]:
    """The Pi firmware's throttle word: from the kernel's ``get_throttled`` file where it has
    one, else ``vcgencmd get_throttled``; ``None`` on a machine that is not a Pi."""
    for path in glob.glob(os.path.join(root, "sys/devices/platform/soc/soc:firmware/get_throttled")):
        raw = _read(path)
        if raw is not None and re.fullmatch(r"(0x)?[0-9a-fA-F]+", raw):
            return int(raw, 16), path
    tool = vcgencmd or shutil.which("vcgencmd")
    if not tool:
        return None, f"{NOT_READABLE}: no vcgencmd and no soc:firmware/get_throttled (not a Raspberry Pi)"
    try:
        out = subprocess.run([tool, "get_throttled"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{NOT_READABLE}: vcgencmd failed ({exc})"
    m = re.search(r"throttled=(0x[0-9a-fA-F]+)", out)
    if not m:
        return None, f"{NOT_READABLE}: vcgencmd said {out.strip()[:80]!r}"
    return int(m.group(1), 16), "vcgencmd get_throttled"


def read_all(root: str = "/", vcgencmd: str | None = None) -> dict[str, Any]:
    """One reading of every sensor: ``temp_c``, ``clock_mhz``, ``throttled`` (each None when not readable)."""
    temp, temp_src = cpu_temperature_c(root)
    clock, clock_src = cpu_clock_mhz(root)
    thr, thr_src = throttled(root, vcgencmd)
    return {"temp_c": temp, "clock_mhz": clock, "throttled": thr,
            "sources": {"temp_c": temp_src, "clock_mhz": clock_src, "throttled": thr_src}}
