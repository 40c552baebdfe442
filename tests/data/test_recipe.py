"""recipe_dataset: the SigLIP 2 recipe's inputs made in tf.data, seeded."""

import numpy as np
import pytest
import tensorflow as tf

from keras_siglip.data import draw_tasks, recipe_dataset, shapes, shapes_recipe_examples
from keras_siglip.models import LocCaPreprocessor, SigLIPImageConverter, SigLIPPreprocessor, SigLIPTokenizer
from keras_siglip.models.cappa.locca_preprocessor import AREF, CAP, GCAP


@pytest.fixture(scope="module")
def setup():
    data = shapes.ShapesDataset(48, seed=5)
    captions = [data[i]["caption"] for i in range(len(data))]
    tokenizer = SigLIPTokenizer.from_texts(captions + ["cap aref gcap"], vocabulary_size=120)
    text = SigLIPPreprocessor(tokenizer, SigLIPImageConverter(image_size=(32, 32)), sequence_length=12)
    decoder = LocCaPreprocessor(tokenizer, None, sequence_length=16, num_loc_tokens=32)
    return data, text, decoder


def batches(setup, seed=0, views=3, count=3):
    data, text, decoder = setup
    dataset = recipe_dataset(shapes_recipe_examples(data), text, decoder, batch_size=8,
                             num_local_views=views, seed=seed)
    return [{k: v.numpy() for k, v in b.items()} for b in dataset.take(count)]


def test_shapes_ranges_and_targets(setup):
    data, _, decoder = setup
    first = batches(setup)[0]
    assert first["images"].shape == first["global_view"].shape == (8, 32, 32, 3)
    assert first["local_views"].shape == (8, 3, 16, 16, 3)
    for key in ("images", "global_view", "local_views"):
        assert -1.0 <= first[key].min() and first[key].max() <= 1.0
    assert first["token_ids"].shape == (8, 12) and first["decoder_token_ids"].shape == (8, 16)
    loc = decoder.loc_offset
    for ids, targets, task in zip(first["decoder_token_ids"], first["decoder_targets"], first["tasks"]):
        scored = targets[targets > 0]
        assert np.all(targets[targets > 0] == ids[targets > 0])
        if task == AREF:  # text -> box: the scored target is 4 location ids and EOS
            assert np.all(scored[:4] >= loc) and scored[4] == 1 and len(scored) == 5
        else:  # captions and grounded captions score text, never a box
            assert np.all(scored < loc)
            assert (task == GCAP) == bool(np.any(ids >= loc))


def test_seeded_and_reproducible(setup):
    a, b, c = batches(setup, seed=1), batches(setup, seed=1), batches(setup, seed=2)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    assert any(not np.array_equal(x["local_views"], y["local_views"]) for x, y in zip(a, c))
    tasks = np.concatenate([x["tasks"] for x in a])
    assert set(tasks) == {CAP, AREF, GCAP}


def test_no_views_for_stage_a(setup):
    first = batches(setup, views=0, count=1)[0]
    assert "global_view" not in first and "local_views" not in first


def test_examples_without_a_region_get_the_caption_task():
    has_region = tf.constant([True, False] * 500)
    tasks = draw_tasks(tf.constant([3, 4], tf.int64), has_region).numpy()
    assert np.all(tasks[1::2] == CAP)
    counts = np.bincount(tasks[0::2], minlength=3) / 500
    np.testing.assert_allclose(counts, [1 / 3] * 3, atol=0.08)
    only_aref = draw_tasks(tf.constant([3, 4], tf.int64), has_region, (0.0, 1.0, 0.0)).numpy()
    assert np.all(only_aref[0::2] == AREF)
