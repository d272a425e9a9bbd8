"""Every image type a CXR arrives in decodes to the same uint8 grayscale array."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgecxr.device.image_io import ImageError, load_gray, to_uint8


@pytest.fixture
def gray() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 50), dtype=np.uint8)


def test_png_8bit_roundtrips_exactly(tmp_path, gray):
    p = tmp_path / "a.png"
    cv2.imwrite(str(p), gray)
    assert np.array_equal(load_gray(str(p)), gray)


def test_png_16bit_is_minmax_scaled_to_full_8bit_range(tmp_path):
    img = np.linspace(1000, 4000, 40 * 50).reshape(40, 50).astype(np.uint16)  # a 12-bit detector range
    p = tmp_path / "a16.png"
    cv2.imwrite(str(p), img)
    out = load_gray(str(p))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.array_equal(out, to_uint8(img))


def test_rgb_and_rgba_png_become_grayscale(tmp_path, gray):
    rgb = np.dstack([gray] * 3)
    rgba = np.dstack([gray] * 3 + [np.full_like(gray, 255)])
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    assert np.array_equal(load_gray(str(tmp_path / "rgb.png")), gray)
    assert np.array_equal(load_gray(str(tmp_path / "rgba.png")), gray)


def test_jpeg_and_bmp_load(tmp_path, gray):
    cv2.imwrite(str(tmp_path / "a.bmp"), gray)
    cv2.imwrite(str(tmp_path / "a.jpg"), gray, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert np.array_equal(load_gray(str(tmp_path / "a.bmp")), gray)
    jpg = load_gray(str(tmp_path / "a.jpg"))
    assert jpg.shape == gray.shape and np.abs(jpg.astype(int) - gray).mean() < 3


def _write_dicom(path, pixels: np.ndarray, photometric: str, window: tuple[float, float] | None = None) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_dicom_monochrome2_loads_with_full_contrast(tmp_path):
    px = np.tile(np.linspace(0, 4095, 50), (40, 1)).astype(np.uint16)
    _write_dicom(tmp_path / "a.dcm", px, "MONOCHROME2")
    out = load_gray(str(tmp_path / "a.dcm"))
    assert out.shape == (40, 50) and out[:, 0].max() == 0 and out[:, -1].min() == 255


def test_dicom_monochrome1_is_inverted_so_bone_is_bright(tmp_path):
    px = np.tile(np.linspace(0, 4095, 50), (40, 1)).astype(np.uint16)
    _write_dicom(tmp_path / "m1.dcm", px, "MONOCHROME1")
    out = load_gray(str(tmp_path / "m1.dcm"))
    assert out[:, 0].min() == 255 and out[:, -1].max() == 0


def test_dicom_voi_window_is_applied(tmp_path):
    px = np.tile(np.linspace(0, 4095, 50), (40, 1)).astype(np.uint16)
    _write_dicom(tmp_path / "w.dcm", px, "MONOCHROME2", window=(2048, 400))
    out = load_gray(str(tmp_path / "w.dcm"))
    row = out[0]
    # outside the window everything saturates: many columns at 0 and at 255
    assert (row == 0).sum() > 15 and (row == 255).sum() > 15


@pytest.mark.parametrize("content,match", [(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "corrupt|truncated"), (b"", "empty file")])
def test_corrupt_png_gives_one_line_error(tmp_path, content, match):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=match) as err:
        load_gray(str(p))
    assert "\n" not in str(err.value)


def test_truncated_png_is_refused(tmp_path, gray):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), gray)
    bad = tmp_path / "trunc.png"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    with pytest.raises(ImageError):
        load_gray(str(bad))


def test_non_image_and_missing_files_are_named_in_the_error(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(ImageError, match="not an image"):
        load_gray(str(txt))
    with pytest.raises(ImageError, match="no such file"):
        load_gray(str(tmp_path / "missing.png"))
    with pytest.raises(ImageError, match="not a readable DICOM"):
        (tmp_path / "x.dcm").write_bytes(b"garbage")
        load_gray(str(tmp_path / "x.dcm"))
