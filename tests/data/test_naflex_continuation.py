"""naflex_continuation_dataset: SigLIP 2 stage C batches at a sequence length drawn per batch."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_siglip.data import (draw_sequence_lengths, naflex_batches, naflex_continuation_dataset,
                               per_length_batch_sizes)
from keras_siglip.layers import NaFlexImageConverter
from keras_siglip.models import (SigLIPBackbone, SigLIPImageConverter, SigLIPPreprocessor, SigLIPTextEncoder,
                                 SigLIPTokenizer, SigLIPVisionEncoder)

# The data tests are tf.data and numpy only: they run in one pass (the fit test in every one).
DATA_ONLY = pytest.mark.skipif(keras.backend.backend() != "torch", reason="tf.data only: the same on every backend")
LENGTHS = (8, 16, 1024)  # tiny, plus the paper's longest (half batch)
BATCH_SIZE = 4
SEED = 3
NUM_EXAMPLES = 45
CAPTIONS = [f"example {i}" for i in range(NUM_EXAMPLES)]


def images(count=NUM_EXAMPLES, seed=0):
    """Random uint8 images of varied sizes and aspect ratios (1 x 37 to 40 x 2)."""
    rng = np.random.default_rng(seed)
    sizes = [(1, 37), (40, 2), (1, 1)] + [tuple(rng.integers(1, 48, 2)) for _ in range(count - 3)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


IMAGES = images()


def examples(count=NUM_EXAMPLES):
    """Unbatched `{"image" (H, W, 3) of dynamic shape, "caption", "index"}`."""
    def generate():
        for i in range(count):
            yield {"image": IMAGES[i], "caption": CAPTIONS[i], "index": np.int32(i)}

    return tf.data.Dataset.from_generator(generate, output_signature={
        "image": tf.TensorSpec((None, None, 3), tf.uint8),
        "caption": tf.TensorSpec((), tf.string),
        "index": tf.TensorSpec((), tf.int32),
    })


@pytest.fixture(scope="module")
def preprocessor():
    tokenizer = SigLIPTokenizer.from_texts(CAPTIONS, vocabulary_size=NUM_EXAMPLES + 4)
    return SigLIPPreprocessor(tokenizer, NaFlexImageConverter(patch_size=4, max_num_patches=16), sequence_length=4)


def as_numpy(dataset):
    return [{key: value.numpy() for key, value in batch.items()} for batch in dataset]


def continuation(preprocessor, seed=SEED, count=NUM_EXAMPLES, **kwargs):
    return as_numpy(naflex_continuation_dataset(examples(count), preprocessor, BATCH_SIZE, LENGTHS, seed=seed,
                                                **kwargs))


@pytest.fixture(scope="module")
def batches(preprocessor):
    return continuation(preprocessor)


@DATA_ONLY
def test_lengths_follow_the_seed_and_cover_the_set(batches):
    lengths = [batch["patches"].shape[1] for batch in batches]
    assert len(batches) >= 10
    np.testing.assert_array_equal(lengths, draw_sequence_lengths(len(batches), LENGTHS, seed=SEED))
    assert set(lengths) == set(LENGTHS)
    assert not np.array_equal(draw_sequence_lengths(40, LENGTHS, seed=SEED),
                              draw_sequence_lengths(40, LENGTHS, seed=SEED + 1))
    weighted = draw_sequence_lengths(2000, LENGTHS, weights=(1, 0, 3), seed=0)
    assert 16 not in weighted
    assert abs(np.mean(weighted == 1024) - 0.75) < 0.04


@DATA_ONLY
def test_static_shapes_per_batch_and_half_batch_at_1024(batches):
    for batch in batches:
        size, length = batch["patches"].shape[:2]
        assert size == (BATCH_SIZE // 2 if length == 1024 else BATCH_SIZE)
        assert batch["patches"].shape == (size, length, 4 * 4 * 3) and batch["patches"].dtype == np.float32
        assert batch["patch_mask"].shape == (size, length) and batch["patch_mask"].dtype == np.int32
        assert batch["patch_coords"].shape == (size, length, 2) and batch["patch_coords"].dtype == np.int32
        assert batch["token_ids"].shape == (size, 4) and batch["token_ids"].dtype == np.int32
        assert batch["index"].shape == (size,)
    assert per_length_batch_sizes(8) == {128: 8, 256: 8, 576: 8, 784: 8, 1024: 4}


@DATA_ONLY
def test_batch_sizes_as_dict_or_function(preprocessor):
    sized = continuation(preprocessor, count=30, batch_sizes={16: 3, 1024: 1})
    assert {(b["patches"].shape[1], len(b["index"])) for b in sized} == {(8, BATCH_SIZE), (16, 3), (1024, 1)}
    by_rule = per_length_batch_sizes(BATCH_SIZE, LENGTHS, lambda length: 1 if length > 8 else 5)
    assert by_rule == {8: 5, 16: 1, 1024: 1}


@DATA_ONLY
def test_no_example_lost_or_duplicated(preprocessor, batches):
    raw = as_numpy(naflex_batches(examples(), preprocessor.image_converter, BATCH_SIZE, LENGTHS, seed=SEED))
    captions = [caption.decode() for batch in raw for caption in batch["caption"]]
    taken = len(captions)
    assert captions == CAPTIONS[:taken]  # one stream, in order
    next_length = draw_sequence_lengths(len(raw) + 1, LENGTHS, seed=SEED)[-1]
    assert NUM_EXAMPLES - taken < per_length_batch_sizes(BATCH_SIZE, LENGTHS)[next_length]  # only the tail
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), np.arange(taken))


@DATA_ONLY
def test_batches_equal_the_single_image_converter(preprocessor, batches):
    converter = preprocessor.image_converter
    for batch in batches:
        length = batch["patches"].shape[1]
        for row, index in enumerate(batch["index"]):
            expected = converter(IMAGES[index], max_num_patches=length)
            for key in ("patches", "patch_mask", "patch_coords"):
                np.testing.assert_array_equal(batch[key][row], keras.ops.convert_to_numpy(expected[key]),
                                              err_msg=f"{key} of example {index} at length {length}")
            tokens = preprocessor({"texts": [CAPTIONS[index]]})["token_ids"]
            np.testing.assert_array_equal(batch["token_ids"][row], keras.ops.convert_to_numpy(tokens)[0])
    assert any(b["patch_mask"].sum() < b["patch_mask"].size for b in batches)  # padding is exercised


@DATA_ONLY
def test_same_seed_same_batches(preprocessor, batches):
    again = continuation(preprocessor)
    assert len(again) == len(batches)
    for first, second in zip(batches, again):
        assert first.keys() == second.keys()
        for key in first:
            np.testing.assert_array_equal(first[key], second[key], err_msg=key)


@DATA_ONLY
def test_rejects_bad_arguments(preprocessor):
    fixed = SigLIPPreprocessor(preprocessor.tokenizer, SigLIPImageConverter(image_size=(16, 16)), sequence_length=4)
    with pytest.raises(ValueError, match="NaFlexImageConverter"):
        naflex_continuation_dataset(examples(), fixed, BATCH_SIZE, LENGTHS)
    with pytest.raises(ValueError, match="outside sequence_lengths"):
        naflex_continuation_dataset(examples(), preprocessor, BATCH_SIZE, LENGTHS, batch_sizes={32: 2})
    with pytest.raises(ValueError, match="at sequence length 1024"):
        naflex_continuation_dataset(examples(), preprocessor, 1, LENGTHS)
    with pytest.raises(ValueError, match="weights"):
        naflex_continuation_dataset(examples(), preprocessor, BATCH_SIZE, LENGTHS, weights=(1, 1))
    with pytest.raises(ValueError, match="missing \\['caption'\\]"):
        naflex_continuation_dataset(examples().map(lambda x: {"image": x["image"]}), preprocessor, BATCH_SIZE)
    with pytest.raises(ValueError, match="distinct"):
        naflex_continuation_dataset(examples(), preprocessor, BATCH_SIZE, (8, 8))


@pytest.mark.slow  # two XLA compiles on JAX: ~10 s
def test_fit_on_mixed_lengths_traces_once_per_length(preprocessor):
    keras.utils.set_random_seed(0)
    vision = SigLIPVisionEncoder(4, 32, 1, 2, 48, image_size=16, input_format="naflex")
    text = SigLIPTextEncoder(preprocessor.tokenizer.vocabulary_size(), 32, 1, 2, 48, sequence_length=4)
    backbone = SigLIPBackbone(vision, text)
    traces = []
    train_step = backbone.train_step

    def counting_train_step(*args):  # runs once per trace under jit / tf.function
        traces.append(1)
        return train_step(*args)

    backbone.train_step = counting_train_step
    backbone.compile(optimizer=keras.optimizers.Adam(1e-3))
    dataset = naflex_continuation_dataset(examples(24), preprocessor, BATCH_SIZE, LENGTHS, seed=SEED)
    dataset = dataset.map(lambda batch: {k: v for k, v in batch.items() if k != "index"}).take(4)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(4))
    lengths = set(draw_sequence_lengths(4, LENGTHS, seed=SEED))  # the batches' lengths (tested above)
    assert len(lengths) >= 2  # mixed lengths, so a retrace per batch would show
    history = backbone.fit(dataset, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert int(keras.ops.convert_to_numpy(backbone.optimizer.iterations)) == 4
    backend = keras.backend.backend()
    if backend == "jax":  # jit traces once per input shape: once per length
        assert len(traces) == len(lengths)
    elif backend == "tensorflow":  # one trace (B, N left None); XLA compiles per shape
        assert 1 <= len(traces) <= len(lengths)
    else:  # torch runs eagerly: one call per step
        assert len(traces) == 4
