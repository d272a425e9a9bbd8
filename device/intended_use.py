"""Is this DICOM image inside what the model was made for? Header rules, read before the pixels.

A CXR model answers whatever it is shown: a child's film, a lateral view, a CT scout. The
DICOM header says what the image is, so the contract carries an ``intended_use`` block of
header rules (like MONAI Deploy's selection rules) and every DICOM image is checked against
it before the model runs. Headers are often wrong (one audit found BodyPartExamined wrong in
about 15% of images), so the gate only ever **adds** refusals: an accepted header never skips
the image-based refusals, and a missing tag never counts as a pass (the result says
"intended use unverified: no ViewPosition").

Block (``contract.decision["intended_use"]``; :data:`DEFAULT_BLOCK` where a model has none)::

    {"schema": "edgecxr.intended_use/1",
     "rules": [{"field": "ViewPosition", "allowed": ["PA", "AP"]},         # one of these values
               {"field": "BodyPartExamined", "regex": "^(CHEST|THORAX)$"},  # or a full-match regex
               {"field": "PatientAge", "range": [18, 120]},                 # or a numeric range (ages in years)
               {"field": "Modality", "allowed": ["CR", "DX", "DR"], "missing": "refuse"}]}

``missing`` is "unverified" (default: no refusal, but the result says the rule could not be
checked) or "refuse". Comparisons ignore case and surrounding spaces. numpy-free, stdlib only;
pydicom is imported only by :func:`read_header`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "edgecxr.intended_use/1"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SOP_NAMES = {CR_STORAGE: "CR Image Storage", DX_PRESENTATION: "Digital X-Ray Image Storage - For Presentation",
             DX_PROCESSING: "Digital X-Ray Image Storage - For Processing"}
MISSING_MODES = ("unverified", "refuse")

DEFAULT_BLOCK: dict[str, Any] = {
    "schema": SCHEMA,
    "rules": [
        {"field": "Modality", "allowed": ["CR", "DX", "DR"], "missing": "refuse"},
        {"field": "SOPClassUID", "allowed": [CR_STORAGE, DX_PRESENTATION, DX_PROCESSING], "missing": "refuse"},
        {"field": "BodyPartExamined", "allowed": ["CHEST"]},
        {"field": "ViewPosition", "allowed": ["PA", "AP"]},
        {"field": "PatientAge", "range": [18, 120]},
        {"field": "PhotometricInterpretation", "allowed": ["MONOCHROME1", "MONOCHROME2"], "missing": "refuse"},
        {"field": "BitsStored", "range": [8, 16], "missing": "refuse"},
    ],
}

ACCEPTED, UNVERIFIED, REFUSED = "accepted", "unverified", "refused"


class IntendedUseError(ValueError):
    """An intended-use block that cannot be applied (unknown key, bad range, bad regex)."""


@dataclass(frozen=True)
class GateResult:
    """``status``: accepted (every rule checked and passed), unverified (no rule failed, some
    tag missing), refused (``reason`` names the field and its value)."""

    status: str
    reason: str | None = None
    missing: tuple[str, ...] = ()
    source: str = "contract"  # "contract" or "default": where the rules came from
    values: dict[str, str] = field(default_factory=dict)
    uids: dict[str, str] = field(default_factory=dict)  # SOP / Study instance UIDs: for the audit line, never names

    def line(self) -> str:
        if self.status == REFUSED:
            return str(self.reason)
        if self.status == UNVERIFIED:
            return "intended use unverified: " + ", ".join(f"no {f}" for f in self.missing)
        return "intended use: header checked"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "line": self.line(), "rules": self.source, "header": dict(self.values)}


def age_years(value: str) -> float | None:
    """DICOM AS ("045Y", "006M", "010W", "003D") -> years; ``None`` when it is not an age string."""
    m = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY]?)\s*", str(value).upper())
    if not m:
        return None
    n = float(m.group(1))
    return n * {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0, "": 1.0}[m.group(2)]


def _number(field_name: str, value: str) -> float | None:
    if field_name == "PatientAge":
        return age_years(value)
    try:
        return float(value)
    except ValueError:
        return None


def _fmt(x: float) -> str:
    return f"{x:g}"


def _failure(rule: dict[str, Any], value: str) -> str | None:
    """Why ``value`` breaks ``rule`` (one phrase), or ``None`` when it passes."""
    name = rule["field"]
    if "allowed" in rule:
        allowed = [str(v).strip().upper() for v in rule["allowed"]]
        if value.strip().upper() not in allowed:
            shown = [SOP_NAMES.get(v, v) for v in rule["allowed"]]
            return f"{name} {value} is not {' or '.join(shown)}"
    if "regex" in rule and not re.fullmatch(str(rule["regex"]), value.strip(), flags=re.IGNORECASE):
        return f"{name} {value} does not match {rule['regex']}"
    if "range" in rule:
        lo, hi = (float(v) for v in rule["range"])
        x = _number(name, value)
        unit = " years" if name == "PatientAge" else ""
        if x is None:
            return f"{name} {value!r} is not a number"
        if not lo <= x <= hi:
            shown = f" ({_fmt(round(x, 2))}{unit})" if name == "PatientAge" else ""
            return f"{name} {value}{shown} is outside {_fmt(lo)}-{_fmt(hi)}{unit}"
    return None


def validate_block(block: dict[str, Any]) -> dict[str, Any]:
    """``block`` itself when it can be applied; :class:`IntendedUseError` (one line) when not."""
    if not isinstance(block, dict) or not isinstance(block.get("rules"), list):
        raise IntendedUseError("intended_use block needs a 'rules' list")
    for i, rule in enumerate(block["rules"]):
        if not isinstance(rule, dict) or not isinstance(rule.get("field"), str):
            raise IntendedUseError(f"intended_use rule {i} needs a 'field' (a DICOM keyword)")
        unknown = set(rule) - {"field", "allowed", "regex", "range", "missing"}
        if unknown:
            raise IntendedUseError(f"intended_use rule {i} ({rule['field']}): unknown key(s) {sorted(unknown)}")
        if not {"allowed", "regex", "range"} & set(rule):
            raise IntendedUseError(f"intended_use rule {i} ({rule['field']}): give 'allowed', 'regex' or 'range'")
        if rule.get("missing", "unverified") not in MISSING_MODES:
            raise IntendedUseError(f"intended_use rule {i} ({rule['field']}): 'missing' must be one of {MISSING_MODES}")
        if "range" in rule and (len(rule["range"]) != 2 or float(rule["range"][0]) > float(rule["range"][1])):
            raise IntendedUseError(f"intended_use rule {i} ({rule['field']}): 'range' must be [low, high]")
        if "regex" in rule:
            try:
                re.compile(str(rule["regex"]))
            except re.error as exc:
                raise IntendedUseError(f"intended_use rule {i} ({rule['field']}): bad regex ({exc})") from exc
    return block


def block_in_force(decision: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """The contract's block (from its decision block) or the CXR defaults, and which it was."""
    own = (decision or {}).get("intended_use")
    return (validate_block(own), "contract") if own else (DEFAULT_BLOCK, "default")


def header_value(header: Any, name: str) -> str | None:
    """A tag's value as text; ``None`` when absent or empty (a dict or a pydicom Dataset)."""
    value = header.get(name) if isinstance(header, dict) else getattr(header, name, None)
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def check(header: Any, block: dict[str, Any], source: str = "contract") -> GateResult:
    """Apply every rule; the first failing rule refuses. A header is a pydicom Dataset or a dict."""
    missing, values = [], {}
    for rule in block["rules"]:
        name = rule["field"]
        value = header_value(header, name)
        if value is None:
            if rule.get("missing", "unverified") == "refuse":
                return GateResult(REFUSED, f"refused: no {name} in the DICOM header", tuple(missing), source, values)
            missing.append(name)
            continue
        values[name] = value
        why = _failure(rule, value)
        if why is not None:
            return GateResult(REFUSED, f"refused: {why}", tuple(missing), source, values)
    return GateResult(UNVERIFIED if missing else ACCEPTED, None, tuple(missing), source, values)


def load_block(path: str) -> dict[str, Any]:
    """A JSON file holding an intended-use block (or ``{"intended_use": {...}}``)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise IntendedUseError(f"{path}: cannot read the intended-use file ({exc})") from exc
    block = data.get("intended_use", data) if isinstance(data, dict) else data
    if isinstance(block, dict):
        block = {"schema": SCHEMA, **block}
    return validate_block(block)


def read_header(path: str) -> Any:
    """The DICOM header of ``path`` without decoding its pixels (large elements read lazily).
    Raises ``ValueError`` (one line) for a file pydicom cannot parse."""
    import pydicom

    try:
        return pydicom.dcmread(path, defer_size=4096)
    except Exception as exc:  # pydicom raises many types for broken files
        raise ValueError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
