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
