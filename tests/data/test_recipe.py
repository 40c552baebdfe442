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


def test_naflex_preprocessor_gives_stage_c_batches_that_train(setup):
    """With a NaFlex preprocessor: NaFlex keys at a length drawn per batch, the
    same LocCa targets, no views; a NaFlex pretrainer trains on them."""
    import keras

    from keras_siglip.layers import NaFlexImageConverter
    from keras_siglip.models import SigLIP2Pretrainer, SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder

    data, text, decoder = setup
    # The model first: `set_random_seed` clears TensorFlow's kernels, the tokenizer's with them.
    keras.utils.set_random_seed(0)
    backbone = SigLIPBackbone(
        SigLIPVisionEncoder(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, input_format="naflex"),
        SigLIPTextEncoder(vocabulary_size=text.tokenizer.vocabulary_size(), width=24, depth=2, num_heads=2,
                          mlp_dim=48, sequence_length=12, num_classes=32))
    model = SigLIP2Pretrainer(backbone, total_steps=4, distillation_start=None, num_loc_tokens=32,
                              decoder_sequence_length=16, compile=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    naflex = SigLIPPreprocessor(text.tokenizer, NaFlexImageConverter(patch_size=8, max_num_patches=16),
                                sequence_length=12)
    with pytest.raises(ValueError, match="num_local_views=0"):
        recipe_dataset(shapes_recipe_examples(data), naflex, decoder, batch_size=8)
    dataset = recipe_dataset(shapes_recipe_examples(data), naflex, decoder, batch_size=8, num_local_views=0,
                             sequence_lengths=(4, 16), batch_sizes={16: 4}, seed=1)
    found = [{k: v.numpy() for k, v in b.items()} for b in dataset.take(4)]
    lengths = {b["patches"].shape[1] for b in found}
    assert lengths == {4, 16}, lengths
    for b in found:
        rows, length = b["patches"].shape[:2]
        assert rows == (4 if length == 16 else 8) and b["patches"].shape[2] == 8 * 8 * 3
        assert b["patch_mask"].shape == (rows, length) and b["patch_coords"].shape == (rows, length, 2)
        assert b["token_ids"].shape == (rows, 12) and b["decoder_token_ids"].shape == (rows, 16)
        assert "images" not in b and "local_views" not in b
    history = model.fit(dataset.take(4), epochs=1, verbose=0)
    assert np.isfinite(history.history["decoder_loss"][-1]) and history.history["sigmoid_loss"][-1] > 0
