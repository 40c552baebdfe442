"""compiled_forward: the eager model's outputs (bitwise on torch, 1e-5 under XLA),
any batch size from one compilation, and the weights' current values."""

import keras
import numpy as np
import pytest

from keras_siglip.models import SigLIPVisionEncoder
from keras_siglip.utils.compiled_forward import compiled_forward
from tests.helpers import naflex_batch, numpy, tiny_backbone

TORCH = keras.backend.backend() == "torch"


def assert_same(actual, expected):
    for a, e in zip(keras.tree.flatten(actual), keras.tree.flatten(expected), strict=True):
        if TORCH:  # the same aten ops in the same order
            np.testing.assert_array_equal(numpy(a), numpy(e))
        else:  # XLA fuses and reorders float32 sums
            np.testing.assert_allclose(numpy(a), numpy(e), atol=1e-5, rtol=0)


def inputs(batch, seed=0):
    rng = np.random.default_rng(seed)
    return {"images": rng.uniform(-1, 1, (batch, 32, 32, 3)).astype("float32"),
            "token_ids": rng.integers(2, 60, (batch, 8)).astype("int32")}


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone()


@pytest.mark.parametrize("tower", ["vision_encoder", "text_encoder"])
def test_matches_the_eager_model_at_every_batch_size(backbone, tower):
    model = getattr(backbone, tower)
    key = {"vision_encoder": "images", "text_encoder": "token_ids"}[tower]
    forward = compiled_forward(model)
    for batch in (3, 1):
        x = inputs(batch, seed=batch)[key]
        assert_same(forward(x), model(x, training=False))
    if TORCH:  # one export served every batch size
        assert len(forward.graphs) == 1


def test_naflex_dict_inputs():
    model = SigLIPVisionEncoder(4, 32, 1, 2, 48, image_size=16, input_format="naflex")
    forward = compiled_forward(model)
    for grids in ([(4, 4), (2, 7), (1, 9)], [(3, 3)]):
        x = naflex_batch(grids, 20, 48)
        assert_same(forward(x), model(x, training=False))
    if TORCH:  # NaFlex's code fixes the batch size: one export per batch size
        assert len(forward.graphs) == 2 and len(forward.static_batch) == 1


def test_uses_the_weights_current_values(backbone):
    model = backbone.text_encoder
    forward = compiled_forward(model)
    x = inputs(4)["token_ids"]
    before = numpy(forward(x))
    weights = model.get_weights()
    try:
        rng = np.random.default_rng(1)  # new values on the weights' own scale
        model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in weights])
        after = forward(x)
        assert np.max(np.abs(numpy(after) - before)) > 1e-2
        assert_same(after, model(x, training=False))
    finally:
        model.set_weights(weights)


def test_a_model_whose_variables_change_is_compiled_again():
    """Quantizing replaces the kernels and freezing moves variables out of the
    trainable set: the compiled forward follows the eager model after each
    instead of running its old program (TensorFlow's trace kept the float
    kernels it captured, 0.057 away from the int8 model; torch's graph refused
    the new variables)."""
    model = tiny_backbone().text_encoder
    forward = compiled_forward(model)
    x = inputs(3)["token_ids"]
    before = numpy(forward(x))
    model.quantize("int8")
    after = forward(x)
    assert np.max(np.abs(numpy(after) - before)) > 1e-3  # int8 moved the outputs
    assert_same(after, model(x, training=False))
    model.trainable = False
    assert_same(forward(x), model(x, training=False))


def test_keeps_the_casts_that_convert():
    """Only no-op casts leave the torch graph: int -> float and float -> half stay."""
    ids = keras.Input((4,), dtype="int32")
    as_float = keras.ops.cast(ids, "float32") * 0.1
    rounded = keras.ops.cast(keras.ops.cast(as_float, "float16"), "float32")
    model = keras.Model(ids, {"float": as_float, "rounded": rounded})
    x = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], "int32")
    outputs = compiled_forward(model)(x)
    expected = x.astype("float32") * np.float32(0.1)
    np.testing.assert_array_equal(numpy(outputs["float"]), expected)
    np.testing.assert_array_equal(numpy(outputs["rounded"]), expected.astype("float16").astype("float32"))


def test_a_bad_input_raises_and_keeps_the_compiled_path(backbone):
    forward = compiled_forward(backbone.vision_encoder)
    with pytest.raises(ValueError):
        forward(np.zeros((2, 32, 32, 4), "float32"))  # 4 channels
    assert_same(forward(inputs(2)["images"]), backbone.vision_encoder(inputs(2)["images"], training=False))
    assert "eager" not in forward.mode
