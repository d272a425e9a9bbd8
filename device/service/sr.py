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

import datetime
import hashlib
import io
from typing import Any

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from .scp import write_durable

SCHEME = "99EDGECXR"  # private coding scheme for the classes and the action (dciodvfy: a warning, not an error)
UMLS_QUALITATIVE = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
ACTION = CodedConcept("ACTION", SCHEME, "edgecxr action")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
PROCEDURE = CodedConcept("363679005", "SCT", "Imaging procedure")
SERIES_NUMBER = 9901
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")  # Type 2 where absent: written empty


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


def build(source: Dataset, rec: dict[str, Any], model: dict[str, Any], now: datetime.datetime | None = None) -> Dataset:
    """The SR for one source image (``source``: its header; pixels are not needed). The reference
    ``sr_template.Renderer`` compiles and is checked against; ``now`` fixes the content time."""
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
    return document(source, report, sr_uid(source.SOPInstanceUID, model["model_sha256"]),
                    generate_uid(entropy_srcs=["series", source.StudyInstanceUID, model["model_sha256"]]), now)


def document(source: Dataset, report: Any, sop_uid: str, series_uid: str, now: datetime.datetime | None = None) -> Dataset:
    """The SR document around highdicom's content tree, assembled here: what
    ``hd.sr.Comprehensive3DSR`` writes (patient and study copied from the source, an SR series,
    the evidence, the flags), without its deep copies of the tree, which took 30-130 ms per image
    on a loaded 2-core machine against 5-12 ms for the content itself. Every SR is still checked
    by dciodvfy and DicomSRValidator in the tests."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = COMPREHENSIVE_3D_SR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    now = now or datetime.datetime.now()
    ds.InstanceCreationDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.ContentTime = now.strftime("%H%M%S.%f")
    ds.StudyInstanceUID = source.StudyInstanceUID  # required: without it there is no study to answer in (JSON result)
    for kw in PATIENT_STUDY:
        setattr(ds, kw, source.get(kw, ""))
    if source.get("InstitutionName"):
        ds.InstitutionName = source.InstitutionName
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "SR", series_uid, SERIES_NUMBER, 1
    ds.SeriesDescription, ds.Manufacturer = "edgecxr classification", "edgecxr"
    ds.ReferencedPerformedProcedureStepSequence, ds.PerformedProcedureCodeSequence = [], []
    ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag = "COMPLETE", "UNVERIFIED", "PRELIMINARY"
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID, series.ReferencedSOPSequence = source.SeriesInstanceUID, [ref]
    study = Dataset()
    study.StudyInstanceUID, study.ReferencedSeriesSequence = source.StudyInstanceUID, [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [study]
    for elem in report[0]:  # the root CONTAINER's attributes are the document's own
        ds.add(elem)
    return ds


def write_atomic(ds: Dataset, path: str) -> None:
    """The SR is either whole on disk or absent: encoded in memory, then ``scp.write_durable``
    (temporary file, fsync, rename, fsync the folder), as every other file the service writes."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    write_durable(path, buf.getvalue())


def read_back(path: str) -> dict[str, Any]:
    """What an SR says, read with pydicom: finding, probabilities, action, reason, model sha256 and
    the referenced source instance (used by the tests and by anyone auditing the outbox)."""
    import pydicom

    return read_back_dataset(pydicom.dcmread(path))


def read_back_dataset(ds: Dataset) -> dict[str, Any]:
    """:func:`read_back` on a dataset already read."""
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
