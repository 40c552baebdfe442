"""The SigLIP sigmoid loss against a direct numpy transcription of big_vision."""

import numpy as np
from keras import ops

from keras_siglip.losses import SigmoidLoss, sigmoid_labels


def reference(logits):
    z = 2 * np.eye(len(logits)) - 1
    return np.mean(-np.sum(np.log(1 / (1 + np.exp(-z * logits))), axis=-1))


def test_matches_big_vision_formula(rng):
    logits = rng.normal(scale=5, size=(7, 7)).astype("float32")
    loss = SigmoidLoss()(sigmoid_labels(7), logits)
    np.testing.assert_allclose(float(ops.convert_to_numpy(loss)), reference(logits.astype("float64")), rtol=1e-6)


def test_per_image_values_sum_over_texts(rng):
    logits = rng.normal(size=(4, 4)).astype("float32")
    per_image = ops.convert_to_numpy(SigmoidLoss(reduction=None)(sigmoid_labels(4), logits))
    assert per_image.shape == (4,)
    np.testing.assert_allclose(per_image.mean(), reference(logits.astype("float64")), rtol=1e-5)


def test_stable_for_large_logits():
    logits = np.array([[200.0, -300.0], [-250.0, 400.0]], "float32")
    assert float(ops.convert_to_numpy(SigmoidLoss()(sigmoid_labels(2), logits))) < 1e-6
    bad = SigmoidLoss()(sigmoid_labels(2), -logits)
    assert np.isfinite(float(ops.convert_to_numpy(bad)))
