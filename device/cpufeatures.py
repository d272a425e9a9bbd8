"""Which integer instructions this CPU has, and whether an INT8 file is exact on it.

INT8 correctness depends on the CPU, not only on the file: ONNX Runtime's x86
kernels for u8 activations x s8 weights use AVX2 ``vpmaddubsw``, which adds two
u8*s8 products into a *saturating* 16-bit lane. Full-range weights overflow it on
every x86 CPU without VNNI (AVX2-only EPYCs, AVX-512 Skylake), and the model
silently computes something else (74-81% top-1 agreement with FP32 was measured on
such a CPU). VNNI (``vpdpbusd``) accumulates in 32 bits and is exact; ARM kernels
widen to 16/32 bits and are exact. 7-bit weights (``reduce_range``) cannot
overflow, so they are exact everywhere.

The features come from CPUID as numpy's dispatcher reads it, because that is what
the runtimes' own dispatchers see, also under ``qemu-x86_64 -cpu Haswell`` (where
``/proc/cpuinfo`` still describes the host). ``/proc/cpuinfo`` only adds what
numpy does not name (``avx_vnni``, ``i8mm``), and only when it agrees with CPUID on
the features both know. Standard library and numpy only: the Pi runner imports it.
"""
from __future__ import annotations

import platform
from typing import Any

# The features that decide integer kernels, in Linux /proc/cpuinfo spelling.
X86_INT8 = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni")
ARM_INT8 = ("asimd", "asimddp", "i8mm")
_NUMPY_NAMES = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512BW": "avx512bw", "AVX512VNNI": "avx512_vnni",
                "ASIMD": "asimd", "ASIMDDP": "asimddp", "NEON": "asimd"}
VNNI = ("avx512_vnni", "avx_vnni")


def machine_arch(machine: str | None = None) -> str:
    """``x86_64`` or ``aarch64`` (other names pass through lower-cased)."""
    m = (machine or platform.machine()).lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(m, m)


def read_proc_text(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read().replace(b"\x00", b"").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def cpuinfo_field(text: str, *keys: str) -> str:
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in keys and value.strip():
            return value.strip()
    return ""


_ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
              "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
              "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
              "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2"}


def cpu_model() -> str:
    """A readable CPU name; ARM cores report only a part number, which is looked up."""
    text = read_proc_text("/proc/cpuinfo")
    name = cpuinfo_field(text, "model name", "hardware", "processor name")
    if name and not name.isdigit():
        return name
    part = cpuinfo_field(text, "cpu part").lower()
    if part:
        return _ARM_PARTS.get(part, f"ARM part {part}")
    return platform.processor() or platform.machine() or "unknown CPU"


def _numpy_features() -> set[str] | None:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats  # numpy >= 2
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as feats  # numpy 1.x
        except ImportError:
            return None
    return {_NUMPY_NAMES[k] for k, on in feats.items() if on and k in _NUMPY_NAMES}


def _cpuinfo_flags(text: str) -> set[str]:
    flags: set[str] = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def int8_features(arch: str | None = None, cpuinfo: str | None = None, cpuid: set[str] | None = None) -> tuple[list[str], str]:
    """(the integer-kernel features this CPU has, where they were read from).

    ``cpuinfo``/``cpuid`` are for tests; by default they are read from the machine.
    """
    arch = machine_arch(arch)
    wanted = X86_INT8 if arch == "x86_64" else ARM_INT8 if arch == "aarch64" else ()
    from_cpuid = _numpy_features() if cpuid is None else set(cpuid)
    flags = _cpuinfo_flags(read_proc_text("/proc/cpuinfo") if cpuinfo is None else cpuinfo) & set(wanted)
    if from_cpuid is None:
        return [f for f in wanted if f in flags], "/proc/cpuinfo"
    shared = {"avx2", "avx512f", "avx512bw", "avx512_vnni"} if arch == "x86_64" else {"asimd", "asimddp"}
    # /proc/cpuinfo describes another CPU under user-mode emulation: then it adds nothing
    consistent = bool(flags) and (flags & shared) == (from_cpuid & shared & set(wanted))
    found = (from_cpuid & set(wanted)) | ((flags - shared) if consistent else set())
    return [f for f in wanted if f in found], "cpuid" + (" + /proc/cpuinfo" if consistent else "")


def cpu_target(arch: str, features: list[str] | tuple[str, ...]) -> str:
    """A short name for the INT8 class of a CPU: x86-vnni, x86-avx512, x86-avx2, x86, arm64-dotprod, arm64."""
    if arch == "x86_64":
        if any(f in features for f in VNNI):
            return "x86-vnni"
        if "avx512bw" in features:
            return "x86-avx512"
        return "x86-avx2" if "avx2" in features else "x86"
    if arch == "aarch64":
        return "arm64-dotprod" if "asimddp" in features else "arm64"
    return arch or "unknown"


def cpu_description(model: str | None = None) -> dict[str, Any]:
    """This CPU as plain data, for reports, contracts and bench rows."""
    arch = machine_arch()
    feats, source = int8_features(arch)
    if model is None:
        model = cpu_model()
    return {"model": model, "arch": arch, "int8_features": feats, "target": cpu_target(arch, feats), "features_from": source}


def features_string(cpu: dict[str, Any]) -> str:
    """'x86_64 avx2 avx512f avx512bw avx512_vnni (x86-vnni)' -- one line for tables."""
    feats = " ".join(cpu.get("int8_features") or []) or "no SIMD integer features"
    return f"{cpu.get('arch', '?')} {feats} ({cpu.get('target', '?')})"


def unmet_requirement(requires: dict[str, Any] | None, cpu: dict[str, Any], runtime: str) -> str | None:
    """Why an artifact is known to compute wrong results here, or ``None`` when it is fine.

    ``requires`` is a contract's ``target`` block: the runtime it applies to and a
    list of CPUs (``valid_on``: ``{"arch": ..., "any_of": [features]}``) where the file is exact.
    A CPU of an architecture the list does not name is accepted (nothing is known).
    """
    if not requires or not requires.get("valid_on"):
        return None
    applies_to = requires.get("runtime")
    if applies_to and not runtime.lower().startswith(str(applies_to).lower()):
        return None
    rules = [r for r in requires["valid_on"] if r.get("arch") == cpu.get("arch")]
    if not rules:
        return None
    have = set(cpu.get("int8_features") or [])
    for rule in rules:
        need = rule.get("any_of") or []
        if not need or have & set(need):
            return None
    need_text = " or ".join(sorted({f for r in rules for f in (r.get("any_of") or [])}))
    return (f"built for INT8 target {requires.get('name', '?')} ({requires.get('why', 'CPU-specific kernels')}); "
            f"this CPU ({cpu.get('model', '?')}, {features_string(cpu)}) lacks {need_text}")
