"""A new runtime is one module plus one registration: the runner opens files with it, its
``--help`` and ``--list-runtimes`` name it, and ``install.sh``, ``requirements.txt`` and
the device README's runtime table gain its line, without editing any of them.

The demonstration runtime is a real one: ONNX's reference evaluator (numpy only), the
whole of it written below as the module a user would add.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, run_bare_runner, run_cli

RUNTIME_MODULE = '''
"""ONNX's reference evaluator: slow, numpy only, and an independent reading of the ONNX spec."""
from __future__ import annotations

import numpy as np

from edgecxr.device.backend import Backend
from edgecxr.device.contract import read_onnx_contract
from edgecxr.device.runtimes.spec import Runtime


def _dims(value) -> tuple[int, ...]:
    return tuple(d.dim_value if d.dim_value > 0 else -1 for d in value.type.tensor_type.shape.dim)


class ReferenceBackend(Backend):
    format = "onnx"
    runtime_name = "onnx-reference"

    def __init__(self, path: str, threads: int | None = None) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        super().__init__(path, read_onnx_contract(path))
        model = onnx.load(path)
        self.session = ReferenceEvaluator(model)
        self.runtime = f"onnx.reference {onnx.__version__}"
        self.input_name = model.graph.input[0].name
        self.input_shape, self.output_shape = _dims(model.graph.input[0]), _dims(model.graph.output[0])
        self.layout = (self.contract.input.layout if self.contract else None) or "NCHW"
        self.check_contract()

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: prepared})[0]


FORMATS = ()
RUNTIMES = (
    Runtime("onnx-reference", "onnx", "pip install onnx", "ONNX reference evaluator (numpy, slow)", opens=("onnx",),
            open=lambda path, threads: ReferenceBackend(path, threads), install_flag="--onnx-reference",
            needed_for="checking .onnx artifacts against the ONNX spec's own evaluator"),
)
'''


@pytest.fixture
def reference_runtime(tmp_path):
    from edgecxr.device import runtimes

    path = tmp_path / "onnx_reference_runtime.py"
    path.write_text(RUNTIME_MODULE)
    spec = importlib.util.spec_from_file_location("onnx_reference_runtime", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runtimes.register(module)  # the one line a new runtime adds to the table
    yield module
    runtimes.unregister(module)


@pytest.fixture(scope="module")
def onnx_model(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx_export")
    run_cli("convert", str(trained_run / "best.pt"), "--out", str(out), "--formats", "onnx", "--no-verify")
    return out / "mobilenet_v2_fp32.onnx"


def test_a_registered_runtime_opens_files_and_agrees_with_onnxruntime(reference_runtime, onnx_model):
    from edgecxr.device.backends import open_backend
    from edgecxr.device.formats import DEVICE_FORMATS

    assert DEVICE_FORMATS["onnx"].runtimes == ("onnxruntime", "openvino", "onnx-reference")  # appended: the default stays
    ref = open_backend(str(onnx_model), runtime="onnx-reference")
    ort = open_backend(str(onnx_model))
    x = np.random.default_rng(0).standard_normal((2, *ref.input_shape[1:])).astype(np.float32)
    assert ref.runtime_name == "onnx-reference" and ort.runtime_name == "onnxruntime"
    np.testing.assert_allclose(ref.predict(x), ort.predict(x), atol=1e-4)


def test_a_registered_runtime_is_in_the_runner_help_list_and_install_files(reference_runtime):
    from edgecxr.device import install_files
    from edgecxr.device.edgecxr_runner import build_parser
    from edgecxr.device.runtime_help import list_runtimes_lines

    help_text = " ".join(build_parser().format_help().split())
    assert "onnx-reference: ONNX reference evaluator (numpy, slow)" in help_text
    (line,) = [ln for ln in list_runtimes_lines() if ln.startswith("onnx-reference")]
    assert "opens .onnx" in line and "installed (onnx " in line
    assert "    --onnx-reference) EXTRAS+=(onnx); shift ;;" in install_files.render_install_sh()
    (req,) = [ln for ln in install_files.render_requirements().splitlines() if "--onnx-reference" in ln]
    assert req.split()[1:3] == ["--onnx-reference", "onnx"] and req.endswith("the ONNX spec's own evaluator")
    assert "| `onnx-reference` | `.onnx` | `install.sh --onnx-reference` |" in install_files.render_readme_table()


def test_a_runtime_opening_an_undeclared_format_is_refused_and_the_table_is_unchanged():
    from types import ModuleType

    from edgecxr.device import runtimes
    from edgecxr.device.runtimes.spec import Runtime

    before = dict(runtimes.RUNTIMES)
    bad = ModuleType("bad_runtime")
    bad.FORMATS = ()
    bad.RUNTIMES = (Runtime("bad", "numpy", "pip install numpy", "opens nothing known", opens=("nosuch",), open=lambda p, t: None),)
    with pytest.raises(ValueError, match="opens \\['nosuch'\\]"):
        runtimes.register(bad)
    assert runtimes.RUNTIMES == before and bad not in runtimes.TABLE


def test_install_sh_requirements_and_readme_table_are_generated_from_the_runtime_table():
    proc = subprocess.run([sys.executable, "-m", "edgecxr.device.install_files", "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = (ROOT / "device" / "install.sh").read_text()
    assert "--executorch) EXTRAS+=(executorch torch)" in text  # the runtime the hand-kept files had lost
    assert "--executorch" in (ROOT / "device" / "requirements.txt").read_text()
    help_out = subprocess.run(["bash", str(ROOT / "device" / "install.sh"), "--help"], capture_output=True, text=True)
    assert help_out.returncode == 0 and "--executorch" in help_out.stdout and "set -euo" not in help_out.stdout


def test_install_files_check_fails_when_a_generated_file_is_edited_by_hand(tmp_path):
    import shutil

    from edgecxr.device import install_files

    for name in ("install.sh", "requirements.txt", "README.md"):
        shutil.copy(ROOT / "device" / name, tmp_path / name)
    assert install_files.stale(str(tmp_path)) == []
    (tmp_path / "requirements.txt").write_text((tmp_path / "requirements.txt").read_text().replace("--ncnn", "--ncnnn"))
    assert install_files.stale(str(tmp_path)) == [str(tmp_path / "requirements.txt")]


def test_the_bare_runner_lists_every_runtime_of_the_table_with_its_state(tmp_path):
    from edgecxr.device.runtimes import RUNTIMES

    proc = run_bare_runner(tmp_path, "--list-runtimes")
    assert proc.returncode == 0, proc.stderr
    lines = {ln.split()[0]: ln for ln in proc.stdout.splitlines()}
    assert list(lines) == list(RUNTIMES)
    assert "opens .tflite" in lines["litert"] and "installed (ai-edge-litert " in lines["litert"]


def test_a_runtime_that_is_not_installed_is_listed_with_its_install_commands():
    from types import ModuleType

    from edgecxr.device import runtimes
    from edgecxr.device.runtime_help import list_runtimes_lines
    from edgecxr.device.runtimes.spec import Runtime

    absent = ModuleType("absent_runtime")
    absent.FORMATS = ()
    absent.RUNTIMES = (Runtime("absent-rt", "edgecxr_absent_runtime_module", "pip install absent-runtime", "not installed here",
                               opens=("onnx",), open=lambda p, t: None, install_flag="--absent"),)
    runtimes.register(absent)
    try:
        (line,) = [ln for ln in list_runtimes_lines() if ln.startswith("absent-rt")]
    finally:
        runtimes.unregister(absent)
    assert line.endswith("missing: install.sh --absent, or pip install absent-runtime")
