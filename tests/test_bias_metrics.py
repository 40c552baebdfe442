"""Model-level M4 bias metrics (keras_siglip.analysis.bias) against numpy written here."""

import numpy as np
import pytest

from keras_siglip.analysis import (association_bias, association_bias_from_predictions,
                                   representation_bias, zero_shot_predictions)

TEXTS = np.eye(2)  # group / concept prompt embeddings: the two axes


def test_representation_bias_symmetric_and_one_sided():
    # Half the probes lean to group a, half to group b: no bias.
    images = np.array([[1.0, 0.2], [0.2, 1.0]] * 5)
    rb = representation_bias(images, TEXTS)
    np.testing.assert_allclose(rb.shares, [0.5, 0.5])
    assert rb.value == 0.0 and rb.num_probes == 10
    # A model that always picks group a: SigLIP 2's metric is 100% - 50%.
    rb = representation_bias(np.array([[1.0, 0.1]] * 7), TEXTS)
    np.testing.assert_allclose(rb.shares, [1.0, 0.0])
    assert rb.value == pytest.approx(0.5)


def test_representation_bias_matches_numpy_k_groups():
    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(200, 6)), rng.normal(size=(3, 6))
    picks = np.argmax(images @ texts.T, 1)
    shares = np.array([np.mean(picks == k) for k in range(3)])
    rb = representation_bias(images, texts)
    np.testing.assert_allclose(rb.shares, shares)
    assert rb.value == pytest.approx(np.max(np.abs(shares - 1 / 3)))
    targets = np.array([0.5, 0.3, 0.2])
    assert representation_bias(images, texts, targets).value == pytest.approx(np.max(np.abs(shares - targets)))


def test_association_bias_by_construction():
    # Group 0 probes all predicted concept 0, group 1 all concept 1: Cov(s_0, yhat_0) = 1/2 - 1/4.
    images = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
    groups = np.array([0] * 4 + [1] * 4)
    ab = association_bias(images, TEXTS, groups)
    np.testing.assert_allclose(ab.matrix, [[0.25, -0.25], [-0.25, 0.25]])
    assert ab.value == pytest.approx(0.25)
    np.testing.assert_allclose(ab.group_rates, [[1, 0], [0, 1]])
    # Predictions independent of the group: no association.
    ab = association_bias(images, TEXTS, np.array([0, 1] * 4))
    assert ab.value == pytest.approx(0.0)


def test_association_bias_matches_numpy_covariance():
    rng = np.random.default_rng(1)
    images, texts = rng.normal(size=(300, 5)), rng.normal(size=(4, 5))
    groups = rng.integers(3, size=300)
    yhat = np.eye(4)[np.argmax(images @ texts.T, 1)]
    s = np.eye(3)[groups]
    expected = np.array([[np.mean(s[:, k] * yhat[:, r]) - s[:, k].mean() * yhat[:, r].mean()
                          for r in range(4)] for k in range(3)])
    ab = association_bias(images, texts, groups)
    np.testing.assert_allclose(ab.matrix, expected, atol=1e-12)
    assert ab.value == pytest.approx(np.abs(expected).max())
    for k in range(3):
        np.testing.assert_allclose(ab.group_rates[k], yhat[groups == k].mean(0))
    # Two equal groups: Cov = (rate_a - rate_b) / 4.
    g2 = np.arange(300) % 2
    ab2 = association_bias(images, texts, g2)
    np.testing.assert_allclose(ab2.matrix[0], (yhat[g2 == 0].mean(0) - yhat[g2 == 1].mean(0)) / 4, atol=1e-12)


def test_zero_shot_predictions_ties_and_scale_invariance():
    picks = zero_shot_predictions(np.array([[1.0, 1.0], [0.0, 2.0]]), TEXTS)
    np.testing.assert_array_equal(picks, [[1, 0], [0, 1]])
    rng = np.random.default_rng(2)
    images, texts = rng.normal(size=(50, 4)), rng.normal(size=(3, 4))
    np.testing.assert_array_equal(zero_shot_predictions(images, texts), zero_shot_predictions(images, 10 * texts))


@pytest.mark.parametrize("call, message", [
    (lambda: representation_bias(np.zeros((0, 2)), TEXTS), "no probe"),
    (lambda: representation_bias(np.ones((3, 2)), np.ones((1, 2))), "at least 2"),
    (lambda: representation_bias(np.ones((3, 3)), TEXTS), "disagree on D"),
    (lambda: representation_bias(np.ones(3), TEXTS), r"shape \(N, D\)"),
    (lambda: representation_bias(np.ones((3, 2)), TEXTS, [0.5, 0.3, 0.2]), "targets"),
    (lambda: representation_bias(np.full((3, 2), np.nan), TEXTS), "NaN"),
    (lambda: association_bias(np.ones((3, 2)), TEXTS, [0, 1]), "disagree on N"),
    (lambda: association_bias_from_predictions(np.zeros(0, int), np.zeros((0, 2))), "no probe"),
    (lambda: association_bias(np.ones((3, 2)), TEXTS, [0.5, 1.0, 0.0]), "integer"),
])
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
