"""Carrying a checkpoint's temperature and conformal thresholds over to a rounded file (edgecxr/decide/transfer.py)."""
from __future__ import annotations

import numpy as np
import pytest

from edgecxr.decide.ood_cuts import fit_cuts
from edgecxr.decide.transfer import MIN_AGREEMENT, logit_scale, transfer_decision
from edgecxr.device.decision import calibrated_probabilities


def _logits(n: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.0, (n, 3))
    z[np.arange(n), rng.integers(0, 3, n)] += rng.uniform(1.0, 8.0, n)  # a confident class, with a spread of margins
    return z


def _with_score(z: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Logits whose mean is ``score``: how a feature-head model carries its OOD distance (``ood_head``)."""
    return z - z.mean(axis=1, keepdims=True) + np.asarray(score)[:, None]


def _feature_spec() -> dict:
    return {"method": "feature_mahalanobis", "cap": 4.0, "scale": 1.0, "dims": 8, "features": "sqrt_l2"}


def _checkpoint_block(z: np.ndarray) -> dict:
    return {"schema": "edgecxr.decision/1", "temperature": 0.8,
            "conformal": {"method": "lac", "coverage": 0.95, "qhat": 0.12, "qhat_per_class": [0.1, 0.13, 0.2], "n": len(z)},
            **fit_cuts(_feature_spec(), z)}


def test_logit_scale_recovers_a_uniform_scaling_and_ignores_the_carried_score():
    z = _logits()
    shifted = _with_score(0.93 * z, np.random.default_rng(1).uniform(0, 2, len(z)))
    assert logit_scale(z, shifted) == pytest.approx(0.93, rel=1e-9)


def test_a_rounded_copy_keeps_the_checkpoints_probabilities_and_conformal_thresholds():
    rng = np.random.default_rng(3)
    score = rng.gamma(4.0, 0.15, 300)
    z_ref = _with_score(_logits(), score)
    block = _checkpoint_block(z_ref)
    z_own = _with_score(0.9 * z_ref + rng.normal(0, 0.01, z_ref.shape), 1.05 * score + rng.normal(0, 0.005, 300))
    new, out = transfer_decision(block, z_ref, z_own, "onnx int8")
    assert out["agreement"] == 1.0 and out["logit_scale"] == pytest.approx(0.9, abs=0.005)
    p_ref = calibrated_probabilities(z_ref, block)
    p_own = calibrated_probabilities(z_own, new)
    assert np.abs(p_own - p_ref).max() < 0.01  # T absorbed the scale
    assert new["conformal"]["qhat"] == block["conformal"]["qhat"]
    assert new["conformal"]["qhat_per_class"] == block["conformal"]["qhat_per_class"]
    assert "paired" in new["calibration"]["transferred"] and new["calibration"]["logit_scale"] == out["logit_scale"]
    assert new["ood"] == block["ood"] and new["unfamiliar"] == block["unfamiliar"]  # the cuts are refitted by the caller


def test_a_file_that_answers_differently_is_not_carried_over():
    z_ref = _with_score(_logits(), np.full(300, 0.5))
    block = _checkpoint_block(z_ref)
    z_own = z_ref.copy()
    flip = np.arange(int(300 * (1 - MIN_AGREEMENT)) + 3)
    z_own[flip] = z_own[flip][:, [1, 2, 0]]
    assert np.mean(z_own.argmax(1) == z_ref.argmax(1)) < MIN_AGREEMENT
    assert transfer_decision(block, z_ref, z_own, "tflite int8") is None


def test_a_block_without_a_temperature_has_nothing_to_carry_over():
    z = _with_score(_logits(), np.full(300, 0.5))
    assert transfer_decision({"ood": {"method": "energy", "threshold": 1.0, "tpr": 0.95}}, z, z, "onnx int8") is None


def test_the_model_card_says_a_files_temperature_was_carried_over_and_by_what_scale():
    from types import SimpleNamespace

    from edgecxr.card.render import calibration_section

    z_ref = _with_score(_logits(), np.random.default_rng(4).gamma(4.0, 0.15, 300))
    new, _ = transfer_decision(_checkpoint_block(z_ref), z_ref, 0.95 * z_ref, "tflite int8")
    lines = calibration_section(SimpleNamespace(contract=SimpleNamespace(decision=new), run_dir=None, model="m_int8.tflite", evals=[]))
    carried = next(line for line in lines if "carried over" in line)
    assert "times 0.9500" in carried and "conformal thresholds mean the same" in carried
