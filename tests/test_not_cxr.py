"""The not-a-CXR discriminator: drawn negatives, its fit, and its score inside the head."""
from __future__ import annotations

import numpy as np
import pytest

from edgecxr.decide import negatives, ood_head
from edgecxr.device.ood import ood_scores


def test_drawn_negatives_are_the_same_for_a_seed_and_cover_every_family():
    a = negatives.drawn_negatives(12, seed=5)
    b = negatives.drawn_negatives(12, seed=5)
    c = negatives.drawn_negatives(12, seed=6)
    assert len(a) == 12 and all(g.dtype == np.uint8 and g.ndim == 2 and min(g.shape) >= 112 for g in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, c))
    assert all(float(g.std()) > 0 for g in a)  # none blank: blank frames are the quality checks' job, not this score's


def test_an_unknown_negative_family_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown negative families"):
        negatives.drawn_negatives(2, families=("photos",))


def _clusters(rng: np.random.Generator, n: int, shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Three classes in 32 dims; ``shift`` moves a population along one direction (what drawn images
    and real photos share here, and CXRs do not)."""
    centers = np.array([[3.0] * 4 + [0.0] * 28, [0.0] * 4 + [3.0] * 4 + [0.0] * 24, [0.0] * 8 + [3.0] * 4 + [0.0] * 20])
    y = rng.integers(0, 3, n)
    f = centers[y] + rng.normal(0, 1.0, (n, 32))
    return (f if shift is None else f + shift), y


def _fitted(rng: np.random.Generator):
    shift = np.zeros(32)
    shift[20:] = 1.2  # small in every one of 12 dims: close by distance, far for a linear rule that has seen it
    train, y = _clusters(rng, 1200)
    val, _ = _clusters(rng, 300)
    drawn, _ = _clusters(rng, 300, shift)
    plain = ood_head.fit_numbers(train, y, 3, dims=24, transform="none")
    return plain, ood_head.fit_not_cxr(plain, train, drawn, val), val, shift


def test_the_discriminator_keeps_the_not_a_cxr_cut_and_refuses_what_the_distance_lets_through():
    rng = np.random.default_rng(0)
    plain, numbers, val, shift = _fitted(rng)
    fresh, _ = _clusters(rng, 300)
    unseen_kind, _ = _clusters(rng, 300, shift * 1.35)
    cut = float(ood_head.carried_scores(val, plain).max())
    assert float(ood_head.carried_scores(val, numbers).max()) == pytest.approx(cut)  # the cut stays where the distance put it
    by_distance = np.mean(ood_head.carried_scores(unseen_kind, plain) > cut)
    by_both = np.mean(ood_head.carried_scores(unseen_kind, numbers) > cut)
    assert by_distance < 0.6 and by_both > 0.93, (by_distance, by_both)  # seed 0: 0.44 and 0.97
    assert np.mean(ood_head.carried_scores(fresh, numbers) > cut) < 0.03  # fresh CXRs of the same kind are kept
    d = numbers["not_cxr"]
    assert d["n_cxr"] == 1200 and d["n_drawn"] == 300 and d["val_max_distance"] == pytest.approx(cut)


def test_the_head_carries_the_discriminator_in_the_logits_as_its_numpy_twin_scores_it():
    import torch

    from edgecxr.models.registry import CXRClassifier

    rng = np.random.default_rng(1)
    _plain, numbers, val, shift = _fitted(rng)
    far, _ = _clusters(rng, 40, shift * 2)
    x = np.concatenate([val[:60], far])
    model = ood_head.attach(CXRClassifier(torch.nn.Identity(), 32, 3, dropout=0.0).eval(), numbers)
    with torch.no_grad():
        carried = ood_scores(model(torch.from_numpy(x).float()).double().numpy(), {"method": "feature_mahalanobis"})
    assert model.head.not_cxr is not None
    assert np.allclose(carried, ood_head.carried_scores(x, numbers), rtol=1e-4, atol=1e-4)
    assert np.all(carried[60:] > carried[:60].max())


def test_a_head_fitted_without_the_discriminator_scores_the_distance_alone():
    import torch

    from edgecxr.models.registry import CXRClassifier

    rng = np.random.default_rng(2)
    plain, _numbers, val, _shift = _fitted(rng)
    model = ood_head.attach(CXRClassifier(torch.nn.Identity(), 32, 3, dropout=0.0).eval(), plain)
    with torch.no_grad():
        carried = ood_scores(model(torch.from_numpy(val).float()).double().numpy(), {"method": "feature_mahalanobis"})
    want = np.clip(ood_head.raw_scores(val, plain) / plain["scale"], 0, plain["cap"])
    assert model.head.not_cxr is None and np.allclose(carried, want, rtol=1e-4, atol=1e-4)


def test_the_discriminator_needs_both_sides():
    rng = np.random.default_rng(3)
    plain, _numbers, val, _shift = _fitted(rng)
    with pytest.raises(ValueError, match="needs training CXRs and drawn negatives"):
        ood_head.fit_not_cxr(plain, val, np.zeros((0, 32)), val)


def test_validation_features_that_do_not_vary_are_refused_rather_than_mapped_to_a_division_by_zero():
    rng = np.random.default_rng(4)
    plain, _numbers, _val, shift = _fitted(rng)
    train, _ = _clusters(rng, 200)
    drawn, _ = _clusters(rng, 100, shift)
    with pytest.raises(ValueError, match="same score"):
        ood_head.fit_not_cxr(plain, train, drawn, np.repeat(train[:1], 9, axis=0))
