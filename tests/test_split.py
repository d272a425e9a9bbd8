"""The split: stratified, deterministic, duplicates never straddle, written once and reused."""
from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest

from edgecxr.data.folders import Sample, assign_splits, build_index, parse_ratios, read_split_csv, write_split_csv
from edgecxr.errors import EdgecxrError


def _samples(n_per_class: dict[str, int]) -> list[Sample]:
    return [Sample(f"{c}/{i}.png", c, "", f"{c}-{i}") for c, n in n_per_class.items() for i in range(n)]


def test_split_is_stratified_per_class():
    out = assign_splits(_samples({"A": 100, "B": 50}), (0.8, 0.1, 0.1), seed=0)
    counts = Counter((s.label, s.split) for s in out)
    assert counts[("A", "test")] == 10 and counts[("A", "val")] == 10 and counts[("A", "train")] == 80
    assert counts[("B", "test")] == 5 and counts[("B", "val")] == 5 and counts[("B", "train")] == 40


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    s = _samples({"A": 60, "B": 60})
    a, b, c = assign_splits(s, (0.8, 0.1, 0.1), 3), assign_splits(s, (0.8, 0.1, 0.1), 3), assign_splits(s, (0.8, 0.1, 0.1), 4)
    assert a == b and a != c


def test_original_study_96_2_2_split_is_reproducible_with_flags():
    ratios = parse_ratios("96/2/2")
    out = assign_splits(_samples({"COVID": 1000, "Normal": 1000}), ratios, seed=0)
    counts = Counter((s.label, s.split) for s in out)
    assert counts[("COVID", "test")] == 20 and counts[("Normal", "val")] == 20 and counts[("Normal", "train")] == 960
    assert out == assign_splits(_samples({"COVID": 1000, "Normal": 1000}), parse_ratios("0.96,0.02,0.02"), seed=0)


def test_identical_pixels_never_straddle_two_splits():
    base = _samples({"A": 40})
    dupes = [Sample(f"A/dup{i}.png", "A", "", "A-7") for i in range(5)]  # five copies of image 7
    out = assign_splits(base + dupes, (0.5, 0.25, 0.25), seed=1)
    assert len({s.split for s in out if s.pixel_sha256 == "A-7"}) == 1


def test_duplicate_files_on_disk_are_grouped_by_decoded_pixels(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("A", "B"):
        (tmp_path / c).mkdir()
        for i in range(12):
            cv2.imwrite(str(tmp_path / c / f"{i}.png"), rng.integers(0, 255, (16, 16), dtype=np.uint8))
    img = cv2.imread(str(tmp_path / "A" / "0.png"), cv2.IMREAD_GRAYSCALE)
    for k in range(4):
        cv2.imwrite(str(tmp_path / "A" / f"copy{k}.bmp"), img)  # same pixels, other encoder
    for seed in range(5):
        idx = build_index(str(tmp_path), (0.5, 0.25, 0.25), seed, progress=False)
        group = [s.split for s in idx.samples if s.file in {"A/0.png"} | {f"A/copy{k}.bmp" for k in range(4)}]
        assert len(group) == 5 and len(set(group)) == 1


def test_split_csv_roundtrip_keeps_every_row(tmp_path, synthetic_data):
    idx = build_index(str(synthetic_data), (0.8, 0.1, 0.1), 0, progress=False)
    write_split_csv(str(tmp_path / "split.csv"), idx)
    back = read_split_csv(str(tmp_path / "split.csv"), str(synthetic_data))
    assert back.samples == idx.samples and back.classes == idx.classes


def test_corrupt_files_are_skipped_and_listed_not_fatal(tmp_path, synthetic_data):
    import shutil

    data = tmp_path / "d"
    shutil.copytree(synthetic_data, data)
    (data / "Normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    idx = build_index(str(data), (0.8, 0.1, 0.1), 0, progress=False)
    assert [f for f, _ in idx.skipped] == ["Normal/broken.png"]
    assert all(s.file != "Normal/broken.png" for s in idx.samples)


@pytest.mark.parametrize("text", ["80/10", "a/b/c", "-1/50/51"])
def test_bad_ratio_strings_are_refused(text):
    with pytest.raises(EdgecxrError):
        parse_ratios(text)
