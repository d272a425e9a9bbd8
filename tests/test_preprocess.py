"""The preprocessing spec: one implementation, identical for training and the device."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgecxr.data.folders import Sample
from edgecxr.device.preprocess import PreprocessSpec, normalize, prepare_gray, preprocess, preprocess_file
from edgecxr.train.dataset import CXRDataset


def test_training_tensor_and_runner_array_are_identical(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (300, 260), dtype=np.uint8)
    (tmp_path / "A").mkdir()
    cv2.imwrite(str(tmp_path / "A" / "x.png"), img)
    spec = PreprocessSpec(size=96)
    ds = CXRDataset(str(tmp_path), [Sample("A/x.png", "A")], ["A"], spec, augment_spec=None, progress=False)
    train_side = ds[0][0].numpy()
    runner_side = preprocess_file(str(tmp_path / "A" / "x.png"), spec)
    assert train_side.dtype == runner_side.dtype == np.float32
    assert np.max(np.abs(train_side - runner_side)) == 0


def test_spec_roundtrips_through_plain_dict():
    spec = PreprocessSpec(size=128, equalize="global", gaussian_ksize=5, median_ksize=0)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert all(isinstance(v, (int, float, str, list)) for v in spec.to_dict().values())


@pytest.mark.parametrize("bad", [{"equalize": "magic"}, {"gaussian_ksize": 4}, {"median_ksize": 1}, {"size": 2}, {"channels": 2}])
def test_invalid_spec_fields_are_refused(bad):
    with pytest.raises(ValueError):
        PreprocessSpec(**bad)


def test_unknown_spec_field_from_newer_version_is_refused():
    with pytest.raises(ValueError, match="unknown preprocessing fields"):
        PreprocessSpec.from_dict({**PreprocessSpec().to_dict(), "sharpen": 1})


def test_each_step_follows_the_spec():
    rng = np.random.default_rng(2)
    img = rng.integers(40, 120, (64, 64), dtype=np.uint8)
    plain = prepare_gray(img, PreprocessSpec(size=64, equalize="none", gaussian_ksize=0, median_ksize=0))
    assert np.array_equal(plain, img)
    glob = prepare_gray(img, PreprocessSpec(size=64, equalize="global", gaussian_ksize=0, median_ksize=0))
    assert np.array_equal(glob, cv2.equalizeHist(img))
    clahe = prepare_gray(img, PreprocessSpec(size=64, equalize="clahe", gaussian_ksize=0, median_ksize=0))
    assert np.array_equal(clahe, cv2.createCLAHE(2.0, (8, 8)).apply(img))
    den = prepare_gray(img, PreprocessSpec(size=64, equalize="none", gaussian_ksize=3, median_ksize=3))
    assert np.array_equal(den, cv2.medianBlur(cv2.GaussianBlur(img, (3, 3), 0), 3))


def test_output_is_three_channel_imagenet_normalised():
    img = np.full((50, 70), 128, np.uint8)
    spec = PreprocessSpec(size=32, equalize="none", gaussian_ksize=0, median_ksize=0)
    x = preprocess(img, spec)
    assert x.shape == (3, 32, 32)
    expected = (128 / 255 - np.array(spec.mean)) / np.array(spec.std)
    assert np.allclose(x[:, 0, 0], expected, atol=1e-6)


def test_normalize_single_channel_spec():
    spec = PreprocessSpec(size=16, channels=1, mean=(0.5,), std=(0.25,), equalize="none", gaussian_ksize=0, median_ksize=0)
    x = normalize(np.full((16, 16), 255, np.uint8), spec)
    assert x.shape == (1, 16, 16) and np.allclose(x, 2.0)


def test_prepare_gray_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        prepare_gray(np.zeros((8, 8), np.float32), PreprocessSpec(size=8))
