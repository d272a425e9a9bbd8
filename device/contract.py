"""The model contract: what a model file needs to be used correctly, as plain data.

Like torchxrayvision's weight entries, every edgecxr model (checkpoint, ONNX or
TFLite) carries its class names, input tensor description, integer quantization
parameters and preprocessing spec. The device runner reads only this, so a model
can be copied to a Pi alone (plus its sidecar for TFLite) and still be run right.

An optional ``decision`` block (temperature, conformal threshold, refusals; see
``decision.py``) travels the same way; contracts without it read as before.

Storage: checkpoints hold ``contract`` as a dict; ONNX files hold the JSON in
``metadata_props[CONTRACT_KEY]``; TFLite files get a sidecar ``<file>.json``. Which is
which is each format's row (``runtimes/``), read and written through ``formats.py``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .preprocess import PreprocessSpec

SCHEMA = "edgecxr.contract/1"
CONTRACT_KEY = "edgecxr_contract"
LAYOUTS = ("NCHW", "NHWC")


class ContractError(ValueError):
    """A model whose contract is missing or does not fit the model."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str | None = None
    scale: float | None = None
    zero_point: int | None = None

    @property
    def is_quantized(self) -> bool:
        return self.dtype in ("int8", "uint8") and self.scale is not None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(
            name=str(d["name"]),
            shape=tuple(int(v) for v in d["shape"]),
            dtype=str(d.get("dtype", "float32")),
            layout=d.get("layout"),
            scale=None if d.get("scale") is None else float(d["scale"]),
            zero_point=None if d.get("zero_point") is None else int(d["zero_point"]),
        )


@dataclass(frozen=True)
class Contract:
    arch: str
    classes: tuple[str, ...]
    preprocess: PreprocessSpec
    input: TensorSpec
    output: TensorSpec
    format: str = "pytorch"
    precision: str = "fp32"
    method: str = "supervised"
    source: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    # Where the file is exact (INT8 kernels differ by CPU) and the conversion host's CPU;
    # see cpufeatures.unmet_requirement. Empty where nothing CPU-specific is known.
    target: dict[str, Any] = field(default_factory=dict)
    # Golden vectors: a few real images and the outputs expected on them (selftest.py).
    selftest: dict[str, Any] | None = None
    # When not to answer: temperature, conformal threshold, OOD and image-quality refusals
    # (schema in decision.py). Kept across formats by with_io: it describes the model, not the file.
    decision: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> int:
        return self.preprocess.size

    def model_input_shape(self, batch: int = 1, layout: str = "NCHW") -> tuple[int, ...]:
        """The float input tensor the preprocessing produces, in ``layout``: the one place it is derived."""
        c, s = self.preprocess.channels, self.preprocess.size
        return (batch, c, s, s) if layout == "NCHW" else (batch, s, s, c)

    def with_io(self, *, format: str, precision: str, input: TensorSpec, output: TensorSpec, **extra: Any) -> Contract:
        """The same model in another file format: only IO and provenance change."""
        source = dict(self.source)
        source.update(extra.pop("source", {}))
        versions = dict(self.versions)
        versions.update(extra.pop("versions", {}))
        return replace(self, format=format, precision=precision, input=input, output=output, source=source, versions=versions,
                       target=dict(extra.pop("target", {})), selftest=None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["schema"] = SCHEMA
        d["classes"] = list(self.classes)
        d["preprocess"] = self.preprocess.to_dict()
        for key in ("input", "output"):
            d[key]["shape"] = list(d[key]["shape"])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Contract:
        if d.get("schema") != SCHEMA:
            raise ContractError(f"contract schema {d.get('schema')!r} is not {SCHEMA!r}")
        try:
            classes = tuple(str(c) for c in d["classes"])
            if len(classes) < 2:
                raise ContractError("a contract needs at least two classes")
            inp = TensorSpec.from_dict(d["input"])
            if inp.layout is not None and inp.layout not in LAYOUTS:
                raise ContractError(f"input layout {inp.layout!r} is not one of {LAYOUTS}")
            return cls(
                arch=str(d["arch"]),
                classes=classes,
                preprocess=PreprocessSpec.from_dict(d["preprocess"]),
                input=inp,
                output=TensorSpec.from_dict(d["output"]),
                format=str(d.get("format", "pytorch")),
                precision=str(d.get("precision", "fp32")),
                method=str(d.get("method", "supervised")),
                source=dict(d.get("source", {})),
                versions={str(k): str(v) for k, v in d.get("versions", {}).items()},
                target=dict(d.get("target") or {}),
                selftest=d.get("selftest") or None,
                decision=d.get("decision") or None,
            )
        except (KeyError, TypeError) as exc:
            raise ContractError(f"contract is incomplete: missing or bad field {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> Contract:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ContractError(f"contract is not valid JSON ({exc})") from exc


def sidecar_path(model_path: str) -> str:
    """``model.tflite`` -> ``model.tflite.json``: found by name, so it travels with the file."""
    return model_path + ".json"


def read_sidecar(model_path: str) -> Contract | None:
    path = sidecar_path(model_path)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return Contract.from_json(fh.read())


def write_sidecar(model_path: str, contract: Contract) -> None:
    """The contract beside the file as ``<file>.json``, atomically."""
    from .atomic import write_text

    write_text(sidecar_path(model_path), contract.to_json() + "\n")


def read_onnx_contract(model_path: str) -> Contract | None:
    """From ``metadata_props``: with the onnx package where it is installed (no session is
    started), else through onnxruntime, so the device needs no onnx package; a sidecar when
    the file holds none."""
    try:
        import onnx
    except ImportError:
        onnx = None
    meta = None
    if onnx is not None:
        try:
            meta = {m.key: m.value for m in onnx.load(model_path, load_external_data=False).metadata_props}
        except Exception:  # protobuf errors for a truncated or foreign file (or an ORT flatbuffer): ask the runtime
            meta = None
    if meta is None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            meta = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ContractError(f"not a readable ONNX file ({type(exc).__name__})") from exc
    return contract_in_onnx_metadata(meta, model_path)


def contract_in_onnx_metadata(meta: dict[str, str], model_path: str) -> Contract | None:
    """The contract in an ONNX file's ``metadata_props`` map (from the onnx package or from a
    session already open), else its sidecar."""
    if CONTRACT_KEY not in meta:
        return read_sidecar(model_path)
    return Contract.from_json(meta[CONTRACT_KEY])


def embed_onnx_contract(model: Any, contract: Contract) -> None:
    """Put the contract JSON into an in-memory ONNX model's ``metadata_props`` (replacing an older one)."""
    keep = [p for p in model.metadata_props if p.key != CONTRACT_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key, entry.value = CONTRACT_KEY, contract.to_json()


def write_onnx_contract(model_path: str, contract: Contract) -> None:
    """Replace the contract in ``metadata_props`` (the graph untouched) and rewrite the file
    atomically; needs the onnx package (a workstation's, not a Pi's)."""
    import onnx

    from .atomic import atomic_path

    model = onnx.load(model_path)
    embed_onnx_contract(model, contract)
    onnx.checker.check_model(model)
    with atomic_path(model_path) as tmp:
        onnx.save(model, tmp)


def check_matches(contract: Contract, input_shape: tuple[int, ...], input_dtype: str, output_shape: tuple[int, ...]) -> None:
    """Refuse a contract that disagrees with the tensors it claims to describe."""
    want = tuple(contract.input.shape)
    got = tuple(int(v) for v in input_shape)
    if len(want) != len(got) or any(w != g and g > 0 and w > 0 for w, g in zip(want[1:], got[1:])):
        raise ContractError(f"contract says input shape {list(want)} but the model takes {list(got)}")
    if contract.input.dtype != input_dtype:
        raise ContractError(f"contract says input dtype {contract.input.dtype} but the model takes {input_dtype}")
    if output_shape and int(output_shape[-1]) > 0 and int(output_shape[-1]) != contract.num_classes:
        raise ContractError(
            f"contract lists {contract.num_classes} classes but the model outputs {int(output_shape[-1])} values"
        )
