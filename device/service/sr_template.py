"""The SR of ``sr.build``, rendered from bytes compiled once per model and document shape.

Building the TID 1500 tree with highdicom and encoding it with pydicom took 10-17 ms of Python
per image (GIL held), more than the model itself, and every image's tree differs from the last
only in about 30 leaf values: UIDs, patient and study attributes, the time, the probabilities,
the finding, the action and its reason. So the first image of each *shape* (which classes have
probabilities, whether there is a finding, whether the source names an institution) is built
once by ``sr.build`` itself from prototype inputs whose every per-image value is distinct, the
result is encoded element by element (sequences and items of undefined length, so a value can
change length without touching its parents), and each element whose value is one of the
prototype's per-image values becomes a slot. Rendering an image computes those values with the
same functions (:func:`slot_values`) and encodes only the slots. ``tests/test_serve_sr_template``
checks the rendered SR equals ``sr.build``'s, element for element, on every shape.
"""
from __future__ import annotations

import datetime
import functools
import struct
from typing import Any

import highdicom as hd
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DS

from . import sr

ENCODING = "iso8859"  # what pydicom's write_dataset uses where the dataset names no character set
_LONG_VR = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_UNDEFINED = b"\xff\xff\xff\xff"
_ITEM, _ITEM_END, _SEQ_END = b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00", b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"

PROTO_SOURCE = {"SOPInstanceUID": "1.2.999.7433.1", "SOPClassUID": "1.2.999.7433.2", "StudyInstanceUID": "1.2.999.7433.3",
                "SeriesInstanceUID": "1.2.999.7433.4", "PatientName": "Edgeslot^Patient", "PatientID": "EDGESLOTPID",
                "PatientBirthDate": "19010203", "PatientSex": "ZZ", "PatientAge": "077Y", "StudyDate": "19040506",
                "StudyTime": "070809.123", "ReferringPhysicianName": "Edgeslot^Referrer", "StudyID": "EDGESLOTSTUDY",
                "AccessionNumber": "EDGESLOTACC", "InstitutionName": "Edgeslot Institution"}
PROTO_NOW = datetime.datetime(1999, 9, 9, 9, 9, 9, 909909)
PROTO_LABEL, PROTO_ACTION, PROTO_REASON = "edge slot label prototype", "edge slot action prototype", "edge slot reason"


def shape(source: Dataset, rec: dict[str, Any]) -> tuple:
    """What decides the tree's structure (everything else only changes leaf values)."""
    probs = rec.get("probabilities") or {}
    return (tuple(probs), rec.get("action") == "answer" and bool(rec.get("label")), bool(source.get("InstitutionName")))


def slot_values(source: Dataset, rec: dict[str, Any], model: dict[str, Any], now: datetime.datetime) -> dict[str, Any]:
    """Every per-image value of the SR, by slot name: the one definition the prototype and each
    image use (the same expressions as ``sr.build``)."""
    uid, study, sha = source.SOPInstanceUID, source.StudyInstanceUID, model["model_sha256"]
    out: dict[str, Any] = {kw: source.get(kw, "") for kw in sr.PATIENT_STUDY}
    out.update(sop=sr.sr_uid(uid, sha), series=generate_uid(entropy_srcs=["series", study, sha]),
               track=generate_uid(entropy_srcs=["track", uid]), src_sop=uid, src_class=source.SOPClassUID, study=study,
               src_series=source.SeriesInstanceUID, date=now.strftime("%Y%m%d"), time=now.strftime("%H%M%S.%f"),
               reason=sr.reason_text(rec))
    if source.get("InstitutionName"):
        out["institution"] = source.InstitutionName
    for name in ("label", "action"):
        if rec.get(name):
            code = sr._code(str(rec[name]))
            out[f"{name}_value"], out[f"{name}_meaning"] = code.value, code.meaning
    for i, p in enumerate((rec.get("probabilities") or {}).values()):
        out[f"p{i}_ds"], out[f"p{i}_fd"] = str(DS(float(p), auto_format=True)), float(p)
    return out


def _key(elem: DataElement) -> Any:
    return ("FD", float(elem.value)) if elem.VR == "FD" else ("text", str(elem.value))


def _value_key(value: Any) -> Any:
    return ("FD", value) if isinstance(value, float) else ("text", str(value))


def _fast(tag: int, vr: str, value: Any) -> bytes | None:
    """Explicit VR little endian bytes of an ASCII text or FD value (what pydicom writes for it),
    or None where pydicom must do it (a person name, a non-ASCII value, several values)."""
    if vr == "FD" and isinstance(value, float):
        data = struct.pack("<d", value)
    elif isinstance(value, str) and vr != "PN" and value.isascii() and len(value) < 65534:  # str or pydicom's UID
        data = str.encode(value, "ascii")
        if len(data) % 2:
            data += b"\x00" if vr == "UI" else b" "
    else:
        return None
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    return head + (b"\x00\x00" + struct.pack("<I", len(data)) if vr in _LONG_VR else struct.pack("<H", len(data))) + data


def _slot(tag: int, vr: str, value: Any) -> bytes:
    return _fast(tag, vr, value) or _encode(DataElement(tag, vr, value))


def _encode(elem: DataElement) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem, ENCODING)
    return fp.getvalue()


def compile_dataset(ds: Dataset, slots: dict[Any, str], out: list) -> None:
    """Append ``ds``'s encoding to ``out``: bytes, or ``(slot name, tag, VR)`` where a value is a slot."""
    for elem in ds:
        if elem.VR == "SQ":
            out.append(elem.tag.group.to_bytes(2, "little") + elem.tag.element.to_bytes(2, "little") + b"SQ\x00\x00" + _UNDEFINED)
            for item in elem.value:
                out.append(_ITEM + _UNDEFINED)
                compile_dataset(item, slots, out)
                out.append(_ITEM_END)
            out.append(_SEQ_END)
        elif elem.value not in (None, "") and _key(elem) in slots:
            out.append((slots[_key(elem)], elem.tag, elem.VR))
        else:
            out.append(_encode(elem))


def _merge(parts: list) -> list:
    """Adjacent byte strings joined: a template is a short list of constant runs and slots."""
    out: list = []
    for p in parts:
        if isinstance(p, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += p
        else:
            out.append(p)
    return out


class Renderer:
    """One model's SRs: ``render(source header, record)`` -> the file's bytes (``sr.build``'s SR)."""

    def __init__(self, model: dict[str, Any]) -> None:
        self.model = model
        self.templates: dict[tuple, list] = {}

    def _compile(self, source: Dataset, rec: dict[str, Any]) -> list:
        classes, finding, institution = shape(source, rec)
        proto = Dataset()
        for kw, value in PROTO_SOURCE.items():
            if kw != "InstitutionName" or institution:
                setattr(proto, kw, value)
        proto.Rows, proto.Modality = 1, "DX"  # what highdicom checks a source image by
        prec = {"action": "answer" if finding else PROTO_ACTION, "decision": PROTO_REASON,
                "probabilities": {c: round(0.1234501 + i * 1e-6, 7) for i, c in enumerate(classes)} or None}
        if finding:
            prec["label"] = PROTO_LABEL
        values = slot_values(proto, prec, self.model, PROTO_NOW)
        if finding:  # the shape says the action is "answer": a constant, not a slot
            values.pop("action_value"), values.pop("action_meaning")
        keys = [_value_key(v) for v in values.values() if v != ""]
        if len(set(keys)) != len(keys):
            raise RuntimeError("SR template: two per-image values of the prototype are equal; slots would be ambiguous")
        slots = {_value_key(v): name for name, v in values.items() if v != ""}
        parts: list = []
        compile_dataset(sr.build(proto, prec, self.model, now=PROTO_NOW), slots, parts)
        return _merge(parts)

    def render(self, source: Dataset, rec: dict[str, Any], now: datetime.datetime | None = None) -> bytes:
        """Raises what ``sr.build`` raises for a source an SR cannot be made for (no study UID, not an image)."""
        check_source(source)
        key = shape(source, rec)
        if key not in self.templates:
            self.templates[key] = self._compile(source, rec)
        values = slot_values(source, rec, self.model, now or datetime.datetime.now())
        values["institution"] = values.get("institution", "")
        body = b"".join(p if isinstance(p, bytes) else _slot(p[1], p[2], values[p[0]]) for p in self.templates[key])
        return file_preamble(values["sop"]) + body


_SOURCE_CHECKS: dict[tuple, Exception | None] = {}


def check_source(source: Dataset) -> None:
    """highdicom's own check that a dataset can be an SR's source image, run once per distinct
    answer: it reads only which pixel description attributes are present and the Modality, and
    the content item it builds on the way cost 0.45 ms per image."""
    key = (tuple(kw in source for kw in ("Rows", "Columns", "SamplesPerPixel", "PixelRepresentation")),
           str(source.get("Modality", "")), "Modality" in source)
    if key not in _SOURCE_CHECKS:
        try:
            hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
            _SOURCE_CHECKS[key] = None
        except (ValueError, AttributeError, KeyError, TypeError) as exc:
            _SOURCE_CHECKS[key] = exc
    failed = _SOURCE_CHECKS[key]
    if failed is not None:
        raise type(failed)(*failed.args)  # a fresh one: a raised instance would collect every traceback


def file_preamble(sop_uid: str) -> bytes:
    """Preamble, ``DICM`` and the file meta group, as ``Dataset.save_as(enforce_file_format=True)`` writes them:
    the group without its length element is compiled once, the SOP Instance UID is its one slot."""
    group = _slot(0x00020003, "UI", sop_uid).join(_meta_parts())
    return b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(group)) + group


@functools.lru_cache(maxsize=1)
def _meta_parts() -> list[bytes]:
    full = _meta_bytes(PROTO_SOURCE["SOPInstanceUID"])[12:]  # without (0002,0000) UL: tag, VR, length, value
    return full.split(_slot(0x00020003, "UI", PROTO_SOURCE["SOPInstanceUID"]))


def _meta_bytes(sop_uid: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sr.COMPREHENSIVE_3D_SR
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta, enforce_standard=True)
    return fp.getvalue()

