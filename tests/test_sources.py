"""Training on several sources: the split per source, held-out sources, balanced draws, site augmentation."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import run_cli

from edgecxr.data.folders import HOLDOUT, Sample, assign_splits, build_index, read_split_csv, write_split_csv
from edgecxr.data.synthetic import make_image
from edgecxr.device.preprocess import PreprocessSpec, finish_gray, prepare_gray, resize_gray
from edgecxr.errors import EdgecxrError
from edgecxr.train.dataset import CXRDataset
from edgecxr.train.sampling import BalancedSampler, balance_weights
from edgecxr.train.site_augment import SiteAugmentSpec, image_cdf, match_cdf, site_augment

OFF = SiteAugmentSpec(**{k: 0.0 for k in ("gamma", "window", "match_histogram", "blur", "noise", "jpeg", "crop", "frame", "marker", "erase")})


def _write_source(root: Path, per_class: dict[str, int], seed: int, size: int = 64) -> Path:
    synthetic = {"Normal": "Normal", "COVID": "Opacity_Diffuse", "Other": "Opacity_Focal"}
    for label, n in per_class.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(root / label / f"{label}-{i}.png"), make_image(synthetic[label], i, size, seed))
    return root


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sources")
    a = _write_source(base / "hospital_a", {"COVID": 20, "Normal": 20, "Other": 20}, seed=1)
    b = _write_source(base / "hospital_b", {"Normal": 15, "Other": 10}, seed=2)
    return a, b


def test_adding_a_source_leaves_the_first_sources_split_unchanged(two_sources):
    a, b = two_sources
    alone = build_index(str(a), progress=False)
    both = build_index([str(a), str(b)], progress=False)
    assert both.root == str(a.parent)
    assert {s.file: s.split for s in alone.samples} == {s.file.split("/", 1)[1]: s.split for s in both.samples if s.source == "hospital_a"}
    assert both.sources == ["hospital_a", "hospital_b"]
    # every (source, class) stratum gets its own test and validation images
    strata = Counter((s.source, s.label, s.split) for s in both.samples)
    assert strata[("hospital_b", "Normal", "test")] >= 1 and strata[("hospital_b", "Other", "val")] >= 1


def test_holdout_sends_a_whole_source_or_one_class_of_it_out_of_training(two_sources):
    a, b = two_sources
    index = build_index([str(a), str(b)], progress=False, holdout=("hospital_b",))
    assert {s.split for s in index.samples if s.source == "hospital_b"} == {HOLDOUT}
    assert HOLDOUT not in {s.split for s in index.samples if s.source == "hospital_a"}
    one_class = build_index([str(a), str(b)], progress=False, holdout=("hospital_a/Normal",))
    held = {(s.source, s.label) for s in one_class.samples if s.split == HOLDOUT}
    assert held == {("hospital_a", "Normal")}
    assert any(s.split == "train" and s.label == "Normal" for s in one_class.samples)  # Normal still trains, from hospital_b


def test_holdout_errors_name_the_fix(two_sources):
    a, b = two_sources
    with pytest.raises(EdgecxrError, match="matches no image"):
        build_index([str(a), str(b)], progress=False, holdout=("hospital_c",))
    with pytest.raises(EdgecxrError, match="leaves no training image of COVID"):
        build_index([str(a), str(b)], progress=False, holdout=("hospital_a/COVID",))


def test_classes_keep_only_the_named_folders(two_sources):
    a, b = two_sources
    index = build_index([str(a), str(b)], progress=False, classes=["Normal", "Other"])
    assert index.classes == ["Normal", "Other"] and {s.label for s in index.samples} == {"Normal", "Other"}
    with pytest.raises(EdgecxrError, match="no such class folder"):
        build_index([str(a), str(b)], progress=False, classes=["Normal", "Tuberculosis"])


def test_two_sources_with_one_folder_name_are_refused(tmp_path, two_sources):
    a, _ = two_sources
    twin = _write_source(tmp_path / "x" / "hospital_a", {"Normal": 3, "COVID": 3}, seed=3)
    with pytest.raises(EdgecxrError, match="two folders named 'hospital_a'"):
        build_index([str(a), str(twin)], progress=False)


def test_a_source_of_one_class_trains_beside_others_but_not_alone(tmp_path, two_sources):
    a, _ = two_sources
    clinic = _write_source(tmp_path / "clinic", {"Normal": 10}, seed=4)  # a clinic's own labelled normals
    index = build_index([str(a), str(clinic)], progress=False, holdout=())
    assert index.sources == ["clinic", "hospital_a"] and index.classes == ["COVID", "Normal", "Other"]
    assert {s.label for s in index.samples if s.source == "clinic"} == {"Normal"}
    assert Counter(s.split for s in index.samples if s.source == "clinic")["train"] == 8
    with pytest.raises(EdgecxrError, match="only one class folder"):
        build_index(str(clinic), progress=False)
    other = _write_source(tmp_path / "other_clinic", {"Normal": 4}, seed=5)
    with pytest.raises(EdgecxrError, match="every folder holds only class Normal"):
        build_index([str(clinic), str(other)], progress=False)


def test_split_csv_keeps_the_source_and_reads_files_without_it(tmp_path, two_sources):
    a, b = two_sources
    index = build_index([str(a), str(b)], progress=False)
    path = tmp_path / "split.csv"
    write_split_csv(str(path), index)
    back = read_split_csv(str(path), index.root)
    assert back.samples == index.samples
    old = tmp_path / "old.csv"
    old.write_text("file,label,split,pixel_sha256\nNormal/a.png,Normal,train,abc\nCOVID/b.png,COVID,test,def\n")
    assert [s.source for s in read_split_csv(str(old), str(a)).samples] == ["", ""]


def test_assign_splits_seeds_each_stratum_by_class_only():
    """Same images of a class in another source's stratum get the same permutation: adding a source reshuffles nothing."""
    a = [Sample(f"a/N/{i}.png", "N", "", f"h{i}", "a") for i in range(30)]
    b = [Sample(f"b/N/{i}.png", "N", "", f"g{i}", "b") for i in range(7)]
    assert [s.split for s in assign_splits(a + b, (0.8, 0.1, 0.1), 0)][:30] == [s.split for s in assign_splits(a, (0.8, 0.1, 0.1), 0)]


def test_source_balance_gives_each_class_and_each_source_within_it_equal_mass():
    labels = [0] * 80 + [0] * 20 + [1] * 50
    sources = ["a"] * 80 + ["b"] * 20 + ["a"] * 50
    p = balance_weights(labels, sources, "source")
    assert p[:80].sum() == pytest.approx(0.25) and p[80:100].sum() == pytest.approx(0.25) and p[100:].sum() == pytest.approx(0.5)
    q = balance_weights(labels, sources, "class")
    assert q[:100].sum() == pytest.approx(0.5) and q[0] == pytest.approx(q[90])


def test_balanced_sampler_is_seeded_per_epoch_and_shards_by_rank():
    labels, sources = [0] * 90 + [1] * 10, ["a"] * 100
    s = BalancedSampler(labels, sources, "class", seed=3)
    first = list(s)
    assert first == list(s) and len(first) == 100
    assert 35 <= sum(labels[i] for i in first) <= 65  # 10% of the images, about half of the draws
    s.set_epoch(1)
    assert list(s) != first
    ranks = [BalancedSampler(labels, sources, "class", seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(first)


def test_histogram_matching_moves_an_image_to_the_target_histogram():
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 100, (64, 64)).astype(np.uint8)
    bright = rng.integers(150, 256, (64, 64)).astype(np.uint8)
    out = match_cdf(dark, image_cdf(bright))
    assert abs(float(out.mean()) - float(bright.mean())) < 3
    assert np.abs(image_cdf(out) - image_cdf(bright)).max() < 0.05


@pytest.mark.parametrize("op", ["gamma", "window", "blur", "noise", "jpeg", "crop", "frame", "marker", "erase", "match_histogram",
                                "local_contrast"])
def test_each_site_transform_changes_the_image_and_keeps_its_shape(op):
    img = make_image("Normal", 0, 96)
    other = image_cdf(make_image("Opacity_Focal", 5, 96, seed=9) // 2)
    spec = SiteAugmentSpec(**{**OFF.to_dict(), op: 1.0})
    out = site_augment(img, spec, np.random.default_rng(1), other)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.abs(out.astype(int) - img).mean() > 0.2
    assert np.array_equal(out, site_augment(img, spec, np.random.default_rng(1), other))  # seeded


def test_local_contrast_when_off_draws_nothing_so_the_default_recipe_replays_exactly():
    """Adding an opt-in transform must not change what the measured default recipe draws."""
    img = make_image("Normal", 2, 96)
    other = image_cdf(make_image("Opacity_Focal", 5, 96, seed=9))
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    a = site_augment(img, SiteAugmentSpec(), rng_a, other)
    b = site_augment(img, SiteAugmentSpec(local_contrast=0.0), rng_b, other)
    assert np.array_equal(a, b) and rng_a.random() == rng_b.random()
    c = site_augment(img, SiteAugmentSpec(local_contrast=1.0), np.random.default_rng(7), other)
    assert not np.array_equal(a, c)


def test_site_augment_probabilities_are_set_by_name_and_typos_are_refused():
    spec = SiteAugmentSpec().with_probabilities("local_contrast=0.3, jpeg=0.6")
    assert (spec.local_contrast, spec.jpeg, spec.gamma) == (0.3, 0.6, SiteAugmentSpec().gamma)
    for bad, why in (("local_contrst=0.3", "unknown transform"), ("jpeg=1.5", "between 0 and 1"), ("jpeg", "NAME=PROBABILITY"),
                     ("gamma_range=0.5", "unknown transform")):
        with pytest.raises(EdgecxrError, match=why):
            SiteAugmentSpec().with_probabilities(bad)


def test_train_refuses_site_augment_p_without_site_augment_in_one_line(tmp_path):
    data = _write_source(tmp_path / "a", {"Normal": 3, "COVID": 3}, seed=1)
    res = run_cli("train", "--data", str(data), "--out", str(tmp_path / "run"), "--site-augment-p", "local_contrast=0.3", check=False)
    assert res.returncode == 2 and "add --site-augment" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("train", "--data", str(data), "--out", str(tmp_path / "run"), "--site-augment", "--site-augment-p", "nope=1", check=False)
    assert res.returncode == 2 and "unknown transform" in res.stderr and not (tmp_path / "run" / "split.csv").exists()


def test_site_augment_with_every_probability_zero_is_the_runners_preprocessing(tmp_path):
    """The site stage runs before equalisation; with nothing drawn, training sees exactly what the device computes."""
    img = make_image("Opacity_Diffuse", 3, 80)
    spec = PreprocessSpec(size=48)
    assert np.array_equal(finish_gray(resize_gray(img, spec.size), spec), prepare_gray(img, spec))
    cv2.imwrite(str(tmp_path / "x.png"), img)
    samples = [Sample("x.png", "A", "train", "", "s")]
    plain = CXRDataset(str(tmp_path), samples, ["A"], spec, None, progress=False)
    site = CXRDataset(str(tmp_path), samples, ["A"], spec, None, progress=False, site_spec=OFF)
    assert torch.equal(plain[0][0], site[0][0])
    busy = CXRDataset(str(tmp_path), samples, ["A"], spec, None, progress=False, site_spec=SiteAugmentSpec(gamma=1.0))
    assert not torch.equal(plain[0][0], busy[0][0])


def test_train_on_two_sources_records_them_and_eval_reads_the_held_out_source(two_sources, tmp_path):
    a, b = two_sources
    out = tmp_path / "run"
    run_cli("train", "--data", str(a), "--data", str(b), "--classes", "Normal,Other", "--holdout", "hospital_b/Normal",
            "--balance", "source", "--site-augment", "--arch", "squeezenet1_1", "--epochs", "1", "--img-size", "32",
            "--batch-size", "8", "--out", str(out), "--quiet")
    ckpt = torch.load(out / "best.pt", weights_only=True)
    sources = ckpt["contract"]["source"]["sources"]
    assert sources["hospital_b"] == {"holdout": {"Normal": 15}, "train": {"Other": 8}, "val": {"Other": 1}, "test": {"Other": 1}}
    assert ckpt["train_config"]["balance"] == "source" and ckpt["train_config"]["site_augment"] is True
    proc = run_cli("eval", str(out / "best.pt"), "--split", "holdout", "--bootstrap", "10", "--quiet", "--out", str(tmp_path / "ev"))
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["n_images"] == 15, proc.stdout
    bad = run_cli("train", "--data", str(a), "--method", "protonet", "--balance", "source", "--out", str(tmp_path / "p"), check=False)
    assert bad.returncode == 2 and "class-balanced already" in bad.stderr
