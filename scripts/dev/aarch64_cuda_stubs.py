#!/usr/bin/env python3
"""Stub libraries for the NVIDIA libraries PyPI's aarch64 ``torch`` wheel links against
(used by scripts/reproduce/aarch64_check.sh for ExecuTorch ``.pte`` files).

usage: aarch64_cuda_stubs.py SITE ROOT [CC]

PyPI's aarch64 torch (2.14.1) is a CUDA 13 build: libtorch_cpu/libtorch_python link
libcudart, libcupti, cuDNN, NCCL, ... and its pinned ``nvidia-*`` dependencies have no
aarch64 wheel on the index reachable here, so ``import torch`` fails, and with it the
ExecuTorch pybindings, which link libtorch. A Pi installs the CPU build from PyTorch's own
index instead (``pip install torch --index-url https://download.pytorch.org/whl/cpu``).
To run the same check here, every missing library gets a stub with its soname and the
symbols (and symbol versions) the torch libraries import from it; each stub function
returns an error code. Nothing on the CPU path calls them: they only let the dynamic
linker finish, and the XNNPACK kernels that compute the model are the wheel's own.

SITE is the aarch64 --target folder holding torch/ and executorch/; ROOT the arm64
root with its system libraries. The stubs are written into SITE/torch/lib, where the
torch libraries' RUNPATH ($ORIGIN) finds them. Prints how many were written.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict

# unversioned imports, assigned to their library by name
_PREFIXES = {"libcufile.so.0": "cuFile", "libnccl.so.2": "nccl", "libcusparseLt.so.0": "cusparseLt",
             "libnvshmem_host.so.3": "nvshmem", "libcurand.so.10": "curand"}


def _readelf(flag: str, path: str) -> str:
    return subprocess.run(["readelf", flag, "-W", path], capture_output=True, text=True, check=False).stdout


def _closure(site: str, root: str) -> tuple[list[str], set[str]]:
    """Every library the torch and ExecuTorch extensions load, and the sonames found nowhere."""
    dirs = [f"{site}/torch/lib", f"{site}/executorch/lib", f"{root}/lib/aarch64-linux-gnu", f"{root}/usr/lib/aarch64-linux-gnu"]
    todo = glob.glob(f"{site}/executorch/extension/pybindings/_C*.so") + glob.glob(f"{site}/torch/_C*.so") + glob.glob(f"{site}/torch/lib/*.so*")
    seen: list[str] = []
    missing: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.append(path)
        for so in re.findall(r"\(NEEDED\).*\[(.*)\]", _readelf("-d", path)):
            found = next((os.path.join(d, so) for d in dirs if os.path.exists(os.path.join(d, so))), None)
            if found:
                todo.append(found)
            else:
                missing.add(so)
    return seen, missing


def _imports(libs: list[str], missing: set[str]) -> tuple[dict[str, dict[str, set[str]]], dict[str, set[str]]]:
    """Per missing soname: {version: symbols} imported with a version, and the unversioned imports it must define."""
    version_file: dict[str, str] = {}
    for path in libs:
        current = None
        for line in _readelf("-V", path).splitlines():
            m = re.search(r"File: (\S+)", line)
            if m:
                current = m.group(1)
            m = re.search(r"Name: (\S+)", line)
            if m and current:
                version_file.setdefault(m.group(1), current)
    versioned: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    plain_undefined: set[str] = set()
    defined: set[str] = set()
    for path in libs:
        for line in _readelf("--dyn-syms", path).splitlines():
            parts = line.split()
            if len(parts) < 8 or not parts[0].rstrip(":").isdigit():
                continue
            bind, ndx, name = parts[4], parts[6], parts[7]
            if ndx != "UND":
                defined.add(name.split("@")[0])
            elif bind != "WEAK":
                m = re.match(r"(.*?)@(\S+)", name)
                if m and version_file.get(m.group(2)) in missing:
                    versioned[version_file[m.group(2)]][m.group(2)].add(m.group(1))
                elif not m:
                    plain_undefined.add(name)
    plain: dict[str, set[str]] = defaultdict(set)
    for name in plain_undefined - defined:
        for so, prefix in _PREFIXES.items():
            if so in missing and name.startswith(prefix) and not (prefix != "cusparseLt" and name.startswith("cusparseLt")):
                plain[so].add(name)
    return versioned, plain


def main(argv: list[str]) -> int:
    site, root = argv[0], argv[1]
    cc = argv[2] if len(argv) > 2 else "aarch64-linux-gnu-gcc"
    libs, missing = _closure(site, root)
    versioned, plain = _imports(libs, missing)
    out = os.path.join(site, "torch", "lib")
    with tempfile.TemporaryDirectory() as work:
        for so in sorted(missing):
            symbols = sorted({s for names in versioned[so].values() for s in names} | plain[so])
            src = os.path.join(work, so + ".c")
            with open(src, "w", encoding="utf-8") as fh:
                fh.write("".join(f"long {s}(void) {{ return 999; }}\n" for s in symbols))
            cmd = [cc, "-shared", "-fPIC", "-o", os.path.join(out, so), src, f"-Wl,-soname,{so}"]
            if versioned[so]:
                script = os.path.join(work, so + ".map")
                with open(script, "w", encoding="utf-8") as fh:
                    for version, names in versioned[so].items():
                        fh.write(f"{version} {{ global: {' '.join(n + ';' for n in sorted(names))} }};\n")
                    if plain[so]:
                        fh.write(f"{{ global: {' '.join(n + ';' for n in sorted(plain[so]))} }};\n")
                cmd.append(f"-Wl,--version-script={script}")
            subprocess.run(cmd, check=True)
    print(f"{len(missing)} stub libraries in {out}: {' '.join(sorted(missing))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
