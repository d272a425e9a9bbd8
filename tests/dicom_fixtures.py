"""DICOM test images with real header variants, made with pydicom from a grey image.

CR and DX, PA/AP/LL views, ages, MONOCHROME1, 16 bit, RLE (compressed, pydicom decodes it)
and a JPEG 2000 stream no decoder here can read, CT and MR, an unknown SOP class, no pixel
data, truncated files. The pixels come from the shared CXRs where present, else from the
synthetic generator, so the tests run without ../shared.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROC = "1.2.840.10008.5.1.4.1.1.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
UNKNOWN_SOP = "1.2.826.0.1.3680043.9.7433.1.99"


def synthetic_gray(seed: int = 0, size: int = 96) -> np.ndarray:
    """A smooth chest-like uint8 image (bright mediastinum, darker lungs), different per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    img = 150 + 60 * np.exp(-((xx - 0.5) ** 2) / 0.01) - 50 * np.exp(-((xx - 0.3) ** 2 + (yy - 0.5) ** 2) / 0.04)
    img -= 50 * np.exp(-((xx - 0.7) ** 2 + (yy - 0.5) ** 2) / 0.04)
    img += rng.normal(0, 6, img.shape) + 20 * np.sin(yy * 9 + seed)
    return np.clip(img, 0, 255).astype(np.uint8)


def _chest_code() -> Sequence:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "43799004", "SCT", "Chest"
    return Sequence([item])


def make_dataset(gray: np.ndarray, *, sop_class: str = DX, modality: str = "DX", view: str | None = "PA",
                 age: str | None = "045Y", body_part: str | None = "CHEST", photometric: str = "MONOCHROME2",
                 bits: int = 8, patient_id: str = "EDGE0001", study_uid: str | None = None,
                 sop_uid: str | None = None) -> Dataset:
    """A complete single-frame image dataset (uncompressed) with the given header variant."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", patient_id, "", "O"
    if age is not None:
        ds.PatientAge = age
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "ACC1"
    ds.ReferringPhysicianName, ds.Manufacturer = "", "edgecxr tests"
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, 1
    ds.PatientOrientation = ["A", "F"] if view != "LL" else ["P", "F"]
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view is not None:
        ds.ViewPosition = view
    if modality == "DX":
        ds.PresentationIntentType = "FOR PROCESSING" if sop_class == DX_PROC else "FOR PRESENTATION"
        ds.ImageType, ds.ImageLaterality, ds.AnatomicRegionSequence = ["ORIGINAL", "PRIMARY"], "U", _chest_code()
        ds.BurnedInAnnotation, ds.LossyImageCompression, ds.PixelIntensityRelationship = "NO", "00", "LIN"
        ds.PixelIntensityRelationshipSign, ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 1, 0, 1, "US"
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if modality in ("CT", "MR") else ["ORIGINAL", "PRIMARY"]
    pixels = gray.astype(np.uint16) * 257 if bits == 16 else gray.astype(np.uint8)
    if photometric == "MONOCHROME1":
        pixels = (65535 if bits == 16 else 255) - pixels
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    ds.PixelData = pixels.tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_rle(ds: Dataset, path: Path) -> Path:
    """RLE Lossless: a compressed transfer syntax pydicom decodes without plugins."""
    ds.compress(RLELossless, encoding_plugin="pydicom")
    return write(ds, path)


def write_undecodable(ds: Dataset, path: Path) -> Path:
    """Claims JPEG 2000 Lossless, holds bytes no decoder accepts: 'a compressed transfer syntax
    it cannot decode' whether or not a JPEG 2000 plugin is installed."""
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 4])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    return write(ds, path)


def write_truncated(ds: Dataset, path: Path, keep: float = 0.6) -> Path:
    write(ds, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_without_pixels(ds: Dataset, path: Path) -> Path:
    del ds.PixelData
    return write(ds, path)


def bad_inputs(folder: Path, gray: np.ndarray) -> dict[str, Path]:
    """Every bad input the service must refuse with a reason, by name."""
    m = make_dataset
    return {
        "truncated": write_truncated(m(gray), folder / "truncated.dcm"),
        "no_pixel_data": write_without_pixels(m(gray), folder / "no_pixels.dcm"),
        "ct": write(m(gray, sop_class=CT, modality="CT", view=None, body_part="CHEST"), folder / "ct.dcm"),
        "mr": write(m(gray, sop_class=MR, modality="MR", view=None, body_part="KNEE"), folder / "mr.dcm"),
        "lateral": write(m(gray, view="LL"), folder / "lateral.dcm"),
        "child": write(m(gray, age="006Y"), folder / "child.dcm"),
        "undecodable": write_undecodable(m(gray), folder / "jpeg2000.dcm"),
        "unknown_sop_class": write(m(gray, sop_class=UNKNOWN_SOP, modality="DX"), folder / "unknown_sop.dcm"),
    }


def read(path: Path) -> Dataset:
    return pydicom.dcmread(str(path))
