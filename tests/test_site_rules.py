"""The go / no-go rules shared by ``edgecxr sitecheck`` and the device (``device/site_rules.py``)."""
from __future__ import annotations

import numpy as np
import pytest

from edgecxr.device.site_rules import GO, NO_GO, Rules, judge, ks_shift


def test_ks_counts_only_a_shift_toward_less_familiar_scores():
    rng = np.random.default_rng(0)
    ref = rng.normal(0.5, 0.1, 300)
    familiar = ks_shift(rng.normal(0.38, 0.1, 200), ref)  # lower scores: more like validation than validation itself
    unfamiliar = ks_shift(rng.normal(0.62, 0.1, 200), ref)
    assert familiar["d_two_sided"] > 0.35 and familiar["d"] < 0.05 and familiar["p"] > 0.5
    assert unfamiliar["d"] > 0.35 and unfamiliar["p"] < 1e-6


def test_ks_p_value_agrees_with_scipy_one_sided_asymptotics():
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(1)
    site, ref = rng.normal(0.1, 1, 400), rng.normal(0, 1, 500)
    ours = ks_shift(site, ref)
    theirs = ks_2samp(site, ref, alternative="less", method="asymp")  # H1: the site's CDF lies below (larger scores)
    # the plain Smirnov limit, a little larger (more cautious) than scipy's corrected one
    assert ours["d"] == pytest.approx(theirs.statistic) and theirs.pvalue <= ours["p"] <= 1.1 * theirs.pvalue


def _measures(d: float, p: float, labelled: dict | None = None) -> dict:
    m = {"n_images": 200, "classes": ["COVID", "Normal"], "refused": {"total": 0.0, "quality": 0.0, "ood": 0.0},
         "ood_score": {"d": d, "p": p, "n_reference": 300}, "train_mix": {"COVID": 0.5, "Normal": 0.5}}
    if labelled:
        m["labelled"] = labelled
    return m


def _lab(sens: float, wrong: float) -> dict:
    return {"class_mix": {"COVID": 0.0, "Normal": 1.0},
            "per_class": {"Normal": {"n": 200, "sensitivity": {"value": sens, "ci95": [sens - 0.02, min(1.0, sens + 0.02)]},
                                     "called": {"COVID": wrong, "Normal": 1 - wrong}}}}


def test_a_shift_the_labels_show_harmless_is_a_warning_not_a_no_go():
    verdict = judge(_measures(0.48, 1e-9, _lab(0.995, 0.005)), Rules())
    assert verdict["verdict"] == GO and verdict["warnings"] and "WARNING" in verdict["line"]


def test_without_labels_the_same_shift_is_a_no_go():
    verdict = judge(_measures(0.48, 1e-9), Rules())
    assert verdict["verdict"] == NO_GO and "toward unfamiliar" in verdict["line"]


def test_with_labels_too_many_wrong_answers_or_low_sensitivity_are_a_no_go():
    wrong = judge(_measures(0.05, 0.5, _lab(0.93, 0.07)), Rules())
    assert wrong["verdict"] == NO_GO and "answered COVID" in wrong["line"]
    low = judge(_measures(0.05, 0.5, _lab(0.85, 0.01)), Rules())
    assert low["verdict"] == NO_GO and "sensitivity 0.85" in low["line"]
