"""What a runtime and a device format are: the rows of the device's table (``runtimes/``).

Stdlib only: every runtime module imports it, and a runtime's own package is imported
only when a model is opened with it (``Runtime.open``), so listing runtimes costs nothing.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ContractReader = Callable[[str], Any]  # path -> device.contract.Contract | None
ContractWriter = Callable[[str, Any], None]  # (path, Contract) -> None, atomically


@dataclass(frozen=True)
class Runtime:
    """One way to run model files: the backend that implements it and how a device installs it.

    ``opens`` names the device formats it runs; a format's default runtime is the first of
    the table's runtimes that opens it. ``install_flag`` is its ``install.sh`` option;
    ``None`` means it is part of the required stack (``requirements.txt``), which is also
    where ``install.sh``, ``requirements.txt`` and the runner's ``--help`` get every line
    about it from, so adding a runtime never means editing them by hand.
    """

    name: str
    module: str  # what must be importable, e.g. "onnxruntime"
    install: str  # the pip command a user types when it is missing
    description: str
    opens: tuple[str, ...]  # device format names
    open: Callable[[str, int | None], Any]  # (path, threads) -> device.backend.Backend
    fallbacks: tuple[str, ...] = ()  # other modules that serve as well when ``module`` is missing
    install_flag: str | None = None  # install.sh option; None: installed by requirements.txt
    needed_for: str = ""  # one line for install.sh --help and requirements.txt: why a user adds it

    @property
    def modules(self) -> tuple[str, ...]:
        """Any one of these importable means the runtime is there (``module`` first)."""
        return (self.module, *self.fallbacks)

    @property
    def packages(self) -> list[str]:
        """The pip arguments of ``install``, for an install line with another Python's ``-m pip``."""
        words = self.install.split()
        return words[2:] if words[:2] == ["pip", "install"] else words


@dataclass(frozen=True)
class DeviceFormat:
    """A kind of model file: its suffix, companion files, and where and how its contract is kept.

    This row is the one door to a model file's contract: ``read_contract``/``write_contract``
    are what the runner, convert, calibrate, bench and the card all call, so a format's
    storage (ONNX metadata, an OpenVINO ``rt_info``, a checkpoint's payload, a ``<file>.json``
    sidecar) is known in exactly one place. ``read``/``write`` are the format's own; ``None``
    means the sidecar.

    Companion files are part of the model (OpenVINO's ``.bin`` beside its ``.xml``):
    they count in its size and travel with it. ``{path}`` is the primary path, ``{stem}``
    the path without its suffix. A contract sidecar (``<file>.json``) travels too but
    is metadata, not model, so it is not counted in the size. ``runtimes`` is filled by
    the table (every runtime whose ``opens`` names this format, the default first); a
    format no runtime here opens (the PyTorch checkpoint on a Pi) still has its row, so
    its contract can be read and written.
    """

    name: str
    suffix: str
    runtimes: tuple[str, ...] = ()  # the first is the default
    companions: tuple[str, ...] = ()  # patterns of the model's other files
    contract_in_file: bool = True  # False: the contract is a sidecar, <file>.json
    extra_suffixes: tuple[str, ...] = ()  # other names of the same format (``.pth`` beside ``.pt``)
    read: ContractReader | None = None  # None: the sidecar
    write: ContractWriter | None = None  # None: the sidecar

    @property
    def suffixes(self) -> tuple[str, ...]:
        return (self.suffix, *self.extra_suffixes)

    def companion_paths(self, path: str) -> list[str]:
        """The model's other files, then the contract sidecar if the format uses one."""
        stem = path[: -len(self.suffix)] if path.lower().endswith(self.suffix) else path
        out = [c.format(path=path, stem=stem) for c in self.companions]
        return out + ([path + ".json"] if not self.contract_in_file else [])

    def read_contract(self, path: str) -> Any:
        """The file's contract, or ``None`` where it has none; ``ContractError`` for a broken one."""
        if self.read is not None:
            return self.read(path)
        from ..contract import read_sidecar

        return read_sidecar(path)

    def write_contract(self, path: str, contract: Any) -> None:
        """Store ``contract`` where this format keeps it, atomically (the model's bytes untouched
        where the contract is a sidecar)."""
        if self.write is not None:
            self.write(path, contract)
            return
        from ..contract import write_sidecar

        write_sidecar(path, contract)
