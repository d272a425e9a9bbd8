"""Metrics against values computed by hand on a tiny example."""
from __future__ import annotations

import numpy as np
import pytest

from edgecxr.eval.metrics import classification_report, paired_delta_ci


@pytest.fixture
def example():
    # 6 images, 3 classes. Predictions (argmax): [0, 0, 1, 2, 2, 2]; truth: [0, 0, 1, 1, 2, 2]
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([
        [0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1],
        [0.1, 0.3, 0.6], [0.1, 0.2, 0.7], [0.2, 0.1, 0.7],
    ])
    return y, probs


def test_point_metrics_match_hand_computation(example):
    y, probs = example
    r = classification_report(y, probs, ["A", "B", "C"], n_boot=0)
    assert r["accuracy"] == pytest.approx(5 / 6)
    # class B: precision 1/1, recall 1/2 -> F1 2/3; class C: precision 2/3, recall 1 -> F1 0.8; class A: F1 1
    assert r["per_class"]["B"]["precision"]["value"] == pytest.approx(1.0)
    assert r["per_class"]["B"]["recall"]["value"] == pytest.approx(0.5)
    assert r["per_class"]["C"]["f1"]["value"] == pytest.approx(0.8)
    assert r["macro_f1"] == pytest.approx((1 + 2 / 3 + 0.8) / 3)
    # specificity of C: TN / (TN + FP) = 3 / (3 + 1)
    assert r["per_class"]["C"]["specificity"]["value"] == pytest.approx(0.75)
    assert r["per_class"]["B"]["sensitivity"]["value"] == pytest.approx(0.5)
    assert r["confusion_matrix"] == [[2, 0, 0], [0, 1, 1], [0, 0, 2]]
    # AUC of A one-vs-rest: scores for A positives {0.8, 0.6} beat all negatives {0.2, 0.1, 0.1, 0.2} -> 1.0
    assert r["per_class"]["A"]["auc"]["value"] == pytest.approx(1.0)
    # AUC of B: positives {0.7, 0.3} vs negatives {0.1, 0.3, 0.2, 0.1}: pairs won 4 + (2 + 0.5 tie) = 7.5 / 8
    assert r["per_class"]["B"]["auc"]["value"] == pytest.approx(7.5 / 8)
    assert r["n_images"] == 6


def test_bootstrap_ci_brackets_the_estimate_and_is_reproducible(example):
    y, probs = example
    y, probs = np.tile(y, 20), np.tile(probs, (20, 1))
    a = classification_report(y, probs, ["A", "B", "C"], n_boot=200, seed=1)
    b = classification_report(y, probs, ["A", "B", "C"], n_boot=200, seed=1)
    lo, hi = a["macro_f1_ci95"]
    assert lo <= a["macro_f1"] <= hi and hi - lo > 0
    assert a["macro_f1_ci95"] == b["macro_f1_ci95"]


def test_eval_json_has_the_documented_keys(example):
    y, probs = example
    r = classification_report(y, probs, ["A", "B", "C"], n_boot=10)
    for key in ("accuracy", "macro_f1", "auc_macro", "per_class", "confusion_matrix", "n_images"):
        assert key in r


def test_paired_delta_is_zero_for_identical_models_and_negative_for_a_worse_one(example):
    y, probs = example
    same = paired_delta_ci(y, probs, probs, 3, n_boot=50)
    assert same["delta_pp"] == 0 and same["top1_agreement"] == 1.0 and same["ci95"] == [0.0, 0.0]
    worse = probs.copy()
    worse[0] = [0.1, 0.8, 0.1]
    d = paired_delta_ci(y, probs, worse, 3, n_boot=50)
    assert d["delta_pp"] < 0 and d["top1_agreement"] == pytest.approx(5 / 6)


def test_vectorised_bootstrap_definitions_equal_sklearn_on_random_resamples():
    from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score

    from edgecxr.eval.metrics import auc_batch, confusion_batch, metrics_from_confusion

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, (12, 40))
    probs = rng.dirichlet(np.ones(4), (12, 40))
    probs[:, :5] = np.round(probs[:, :5], 1)  # ties in the scores
    pred = probs.argmax(-1)
    y[0] = np.where(y[0] == 3, 0, y[0])  # a resample where class 3 is absent
    m = metrics_from_confusion(confusion_batch(y, pred, 4))
    for b in range(12):
        p, r, f, _ = precision_recall_fscore_support(y[b], pred[b], labels=[0, 1, 2, 3], zero_division=0)
        assert np.allclose(m["precision"][b], p) and np.allclose(m["recall"][b], r) and np.allclose(m["f1"][b], f)
        assert m["macro_f1"][b] == pytest.approx(f1_score(y[b], pred[b], labels=[0, 1, 2, 3], average="macro", zero_division=0))
        for c in range(4):
            expected = roc_auc_score(y[b] == c, probs[b, :, c]) if 0 < (y[b] == c).sum() < 40 else np.nan
            assert np.allclose(auc_batch(y[b : b + 1], probs[b : b + 1, :, c], c), expected, equal_nan=True)



def test_paired_delta_matches_sklearn_macro_f1_difference():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    a = np.where(rng.random(200) < 0.8, y, rng.integers(0, 3, 200))
    b = np.where(rng.random(200) < 0.1, 2, a)
    d = paired_delta_ci(y, np.eye(3)[a], np.eye(3)[b], 3, n_boot=300)
    expected = (f1_score(y, b, average="macro") - f1_score(y, a, average="macro")) * 100
    assert d["delta_pp"] == pytest.approx(expected) and d["ci95"][0] <= d["delta_pp"] <= d["ci95"][1]
