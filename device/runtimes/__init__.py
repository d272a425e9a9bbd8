"""The device's runtime table: one module per runtime, one line per module in ``TABLE``.

A runtime module (``onnxruntime_cpu.py``, ``litert.py``, ...) defines its backend
(a :class:`~..backend.Backend`), ``RUNTIMES`` (the :class:`Runtime` rows it provides)
and ``FORMATS`` (the device formats it is the default runtime for: suffix, companion
files, where the contract lives). Everything else is read from here: ``open_backend``,
the runner's ``--runtime``/``--model`` help and ``--list-runtimes``, bench's remote
checks, convert's "is this format producible" check, and the generated ``install.sh``,
``requirements.txt`` and the runtime table of ``device/README.md``
(``install_files.py``). Adding a runtime is one module plus one line below, or, for a
plugin, one :func:`register` call. Each format row also reads and writes its files'
contract (``DeviceFormat.read_contract``/``write_contract``), so ``formats.py`` is the one
door to a model file; the PyTorch checkpoint has a row too (``pytorch_checkpoint.py``),
with no runtime on the device.

The Pi cannot import ``convert/`` (no torch, no TensorFlow), so the device rows live
here and the workstation's export-format table (``edgecxr.convert.formats``) refers to
them. A runtime is a first-class choice: one file can be opened by several (``litert``
with XNNPACK, ``litert-builtin`` without it), and every bench row and runner call
names the one it used.
"""
from __future__ import annotations

from dataclasses import replace
from types import ModuleType

from . import executorch_xnnpack, litert, ncnn_cpu, onnxruntime_cpu, openvino_cpu, pytorch_checkpoint
from .spec import DeviceFormat, Runtime

# Table order: a format's default runtime is the first here that opens it.
TABLE: list[ModuleType] = [onnxruntime_cpu, litert, openvino_cpu, ncnn_cpu, executorch_xnnpack, pytorch_checkpoint]

# Filled from TABLE and kept as the same objects when it grows, so importers hold live views.
RUNTIMES: dict[str, Runtime] = {}
DEVICE_FORMATS: dict[str, DeviceFormat] = {}

__all__ = ["DEVICE_FORMATS", "RUNTIMES", "TABLE", "DeviceFormat", "Runtime", "register", "register_format", "unregister"]


def _rebuild() -> None:
    runtimes = [r for module in TABLE for r in module.RUNTIMES]
    formats = [f for module in TABLE for f in module.FORMATS]
    names = [r.name for r in runtimes]
    if len(set(names)) != len(names):
        raise ValueError(f"two runtimes share a name: {sorted(n for n in names if names.count(n) > 1)}")
    known = {f.name for f in formats}
    for r in runtimes:
        unknown = [f for f in r.opens if f not in known]
        if unknown:
            raise ValueError(f"runtime {r.name!r} opens {unknown}, which no runtime module declares in its FORMATS")
    RUNTIMES.clear()
    RUNTIMES.update((r.name, r) for r in runtimes)
    DEVICE_FORMATS.clear()
    for f in formats:
        openers = tuple(r.name for r in runtimes if f.name in r.opens)
        DEVICE_FORMATS[f.name] = replace(f, runtimes=openers + tuple(n for n in f.runtimes if n not in openers))


def register(module: ModuleType) -> None:
    """Add a runtime module (its ``RUNTIMES`` and ``FORMATS``) after the built-in ones."""
    if module in TABLE:
        return
    TABLE.append(module)
    try:
        _rebuild()
    except ValueError:
        TABLE.remove(module)
        _rebuild()
        raise


def unregister(module: ModuleType) -> None:
    TABLE.remove(module)
    _rebuild()


def register_format(fmt: DeviceFormat) -> ModuleType:
    """Add a file format opened by runtimes already in the table (``fmt.runtimes`` names them),
    e.g. ONNX Runtime's ``.ort``. Returns the ad-hoc module holding it, for :func:`unregister`."""
    missing = [n for n in fmt.runtimes if n not in RUNTIMES]
    if missing or not fmt.runtimes:
        raise ValueError(f"format {fmt.name!r} must name runtimes of the table, not {list(fmt.runtimes) or 'none'}")
    module = ModuleType(f"{__name__}.format_{fmt.name}")
    module.RUNTIMES, module.FORMATS = (), (fmt,)
    register(module)
    return module


_rebuild()
