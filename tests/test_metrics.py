"""Retrieval Recall@K."""

import numpy as np
import pytest

from keras_siglip.metrics import retrieval_recall


def test_perfect_and_known_recalls():
    images = np.eye(4, dtype="float32")
    texts = np.eye(4, dtype="float32")[[0, 0, 1, 2, 3]]
    r = retrieval_recall(images, texts, text_to_image=[0, 0, 1, 2, 3], ks=(1,))
    assert r == {"image_to_text": {1: 1.0}, "text_to_image": {1: 1.0}}
    # Text 3 describes image 3 but looks more like image 2.
    texts = np.eye(4, dtype="float32")
    texts[3] = [0, 0, 0.9, 0.5]
    r = retrieval_recall(images, texts, text_to_image=[0, 1, 2, 3], ks=(1, 2))
    assert r["text_to_image"] == {1: 0.75, 2: 1.0}
    assert r["image_to_text"] == {1: 1.0, 2: 1.0}


def test_bad_mapping():
    with pytest.raises(ValueError, match="one entry per text"):
        retrieval_recall(np.eye(2), np.eye(2), [0])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        retrieval_recall(np.eye(2), np.eye(2), [0, 2])


def test_mean_pair_logits_equal_the_explicit_logits():
    from keras import ops

    from keras_siglip.metrics import mean_pair_logits

    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(2, 6, 5)).astype("float32")
    logits = 7.0 * images @ texts.T - 3.0
    positive, negative = mean_pair_logits(images, texts, 7.0, -3.0)
    np.testing.assert_allclose(float(positive), np.mean(np.diag(logits)), rtol=1e-5)
    np.testing.assert_allclose(float(negative), logits[~np.eye(6, dtype=bool)].mean(), rtol=1e-5)
    # Empty packed slots (zero embeddings, mask 0) are left out.
    mask = np.array([1, 1, 0, 1, 0, 1], "float32")
    keep = mask.astype(bool)
    images[~keep], texts[~keep] = 0.0, 0.0
    positive, negative = mean_pair_logits(images, texts, 7.0, -3.0, ops.convert_to_tensor(mask))
    sub = (7.0 * images @ texts.T - 3.0)[keep][:, keep]
    np.testing.assert_allclose(float(positive), np.mean(np.diag(sub)), rtol=1e-5)
    np.testing.assert_allclose(float(negative), sub[~np.eye(4, dtype=bool)].mean(), rtol=1e-5)
