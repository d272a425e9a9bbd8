"""The result a PACS can store: a Comprehensive 3D SR following TID 1500, one per source image.

Same patient and study as the source, a new series, and one measurement group (TID 1501) that
references the source SOP instance and holds: the finding (the answered class), the calibrated
probability of every class, the action (answer / refer / refuse) and its reason, and the
algorithm identification (TID 4019: model file, edgecxr version, model and contract sha256).
Everything is read from the runner's JSON record (``runner_io.record``), never re-derived, so
new actions and reasons reach the SR without changes here.

The SR's SOP Instance UID is derived from the source instance and the model, so a result
written twice (a restart between writing and journaling) is the same object, stored once.
Needs highdicom (``install.sh --service``).
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

SCHEME = "99EDGECXR"  # private coding scheme for the classes and the action (dciodvfy: a warning, not an error)
UMLS_QUALITATIVE = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
ACTION = CodedConcept("ACTION", SCHEME, "edgecxr action")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
PROCEDURE = CodedConcept("363679005", "SCT", "Imaging procedure")
SERIES_NUMBER = 9901


def _code(value: str, meaning: str | None = None) -> CodedConcept:
    """A private code for a class or action name (code values hold at most 16 characters)."""
    short = value if len(value) <= 16 and value.isascii() else hashlib.sha256(value.encode()).hexdigest()[:16]
    return CodedConcept(short, SCHEME, meaning or value)


def sr_uid(source_uid: str, model_sha256: str) -> str:
    return generate_uid(entropy_srcs=["edgecxr-sr", source_uid, model_sha256])


def algorithm(model: dict[str, Any]) -> hd.sr.AlgorithmIdentification:
    params = [f"model sha256 {model['model_sha256']}", f"contract sha256 {model['contract_sha256']}"]
    return hd.sr.AlgorithmIdentification(name=f"edgecxr {model['name']}", version=str(model["edgecxr_version"]),
                                         parameters=params)


def _measurements(rec: dict[str, Any]) -> list[hd.sr.Measurement]:
    probs = rec.get("probabilities") or {}
    return [hd.sr.Measurement(name=_code(f"P {c}", f"Probability of {c}"), value=float(p), unit=NO_UNITS)
            for c, p in probs.items()]


def _evaluations(rec: dict[str, Any]) -> list[hd.sr.QualitativeEvaluation]:
    out = []
    if rec.get("action") == "answer" and rec.get("label"):
        out.append(hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=_code(str(rec["label"]))))
    out.append(hd.sr.QualitativeEvaluation(name=ACTION, value=_code(str(rec.get("action", "answer")))))
    return out


def reason_text(rec: dict[str, Any]) -> str:
    """The action's reason as one line: the record's ``reason`` where the runner gives one, else its
    ``decision`` line, with the intended-use line where the header left a rule unchecked."""
    parts = [str(rec.get("reason") or rec.get("decision") or rec.get("action", ""))]
    gate = rec.get("intended_use") or {}
    if gate.get("status") == "unverified":
        parts.append(str(gate["line"]))
    return "; ".join(p for p in parts if p)[:1024]


def build(source: Dataset, rec: dict[str, Any], model: dict[str, Any]) -> hd.sr.Comprehensive3DSR:
    """The SR for one source image (``source``: its header; pixels are not needed)."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=["track", source.SOPInstanceUID]),
                                                     identifier="edgecxr classification"),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        algorithm_id=algorithm(model), measurements=_measurements(rec) or None,
        qualitative_evaluations=_evaluations(rec))
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=UMLS_QUALITATIVE, value=reason_text(rec), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["device", model["model_sha256"]]), name=f"edgecxr {model['name']}"))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_person_context=None,
                                                                                 observer_device_context=observer),
                                     procedure_reported=PROCEDURE, imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(
        evidence=[_known_class(source)], content=report, series_number=SERIES_NUMBER,
        series_instance_uid=generate_uid(entropy_srcs=["series", source.StudyInstanceUID, model["model_sha256"]]),
        sop_instance_uid=sr_uid(source.SOPInstanceUID, model["model_sha256"]), instance_number=1,
        manufacturer="edgecxr", series_description="edgecxr classification", is_complete=True, is_final=False,
        is_verified=False, institution_name=getattr(source, "InstitutionName", None))
    for kind in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in sr.get(kind, []):
            for series in study.ReferencedSeriesSequence:
                for ref in series.ReferencedSOPSequence:
                    ref.ReferencedSOPClassUID = source.SOPClassUID  # the real class, also where _known_class stood in
    return sr


def _known_class(source: Dataset) -> Dataset:
    """highdicom copies the patient and study modules by the source's IOD, so a storage class it
    does not know (refused, but still answered with an SR) is presented as Secondary Capture for
    that copy only; :func:`build` puts the real class back into the evidence."""
    from highdicom._standard_utils import get_sop_class_iod_map  # the map highdicom's copy looks classes up in

    if source.SOPClassUID in get_sop_class_iod_map():
        return source
    proxy = Dataset()
    for elem in source:  # new dataset, shared elements except the class, which gets a new one
        if elem.keyword not in ("SOPClassUID", "PixelData"):
            proxy.add(elem)
    proxy.file_meta = getattr(source, "file_meta", Dataset())
    proxy.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    return proxy


def write_atomic(ds: Dataset, path: str) -> None:
    """Temporary file, fsync, rename, fsync the folder: the SR is either whole on disk or absent."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.path.basename(path)}")
    ds.save_as(tmp, enforce_file_format=True)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_back(path: str) -> dict[str, Any]:
    """What an SR says, read with pydicom: finding, probabilities, action, reason, model sha256 and
    the referenced source instance (used by the tests and by anyone auditing the outbox)."""
    import pydicom

    ds = pydicom.dcmread(path)
    out: dict[str, Any] = {"sop_instance_uid": ds.SOPInstanceUID, "probabilities": {}, "parameters": []}
    stack = list(ds.ContentSequence)
    while stack:
        item = stack.pop(0)
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        if item.ValueType == "NUM":
            out["probabilities"][name.replace("Probability of ", "")] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "CODE" and name in ("Finding", ACTION.meaning):
            out["label" if name == "Finding" else "action"] = item.ConceptCodeSequence[0].CodeMeaning
        elif item.ValueType == "TEXT" and name == UMLS_QUALITATIVE.meaning:
            out["reason"] = item.TextValue
        elif item.ValueType == "TEXT" and name == "Algorithm Parameters":
            out["parameters"].append(item.TextValue)
        elif item.ValueType == "IMAGE":
            out["referenced_sop_instance_uid"] = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        stack.extend(getattr(item, "ContentSequence", []))
    return out
