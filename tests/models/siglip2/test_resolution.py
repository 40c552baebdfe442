"""Stage C helpers: FlexiViT PI-resize, continuing at a new resolution, the
stretched schedule."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_siglip.models.siglip2 import StretchedSchedule, at_resolution, pi_resize_patch_kernel
from tests.helpers import tiny_backbone


def resize(patches, size):
    """(n, P, P, C) -> (n, size, size, C), TensorFlow bilinear (FlexiViT's)."""
    return tf.image.resize(patches, (size, size), method="bilinear").numpy().astype(np.float64)


def test_growing_the_patch_keeps_every_token():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(8, 8, 3, 5))
    new = pi_resize_patch_kernel(kernel, 12)
    x = rng.normal(size=(10, 8, 8, 3)).astype("float32")
    before = np.einsum("nyxc,yxcw->nw", x, kernel)
    after = np.einsum("nyxc,yxcw->nw", resize(x, 12), new)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)


def test_shrinking_16_to_14_is_the_least_squares_kernel():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(16, 16, 3, 4))
    new = pi_resize_patch_kernel(kernel, 14).astype(np.float64)
    # Per channel and unit: argmin_w' || B^T w' - w || with B the 16 -> 14 resize.
    basis = np.eye(256).reshape(256, 16, 16, 1)
    resize_matrix = resize(basis, 14).reshape(256, 196).T  # (196, 256)
    for c in range(3):
        for unit in range(4):
            want = np.linalg.lstsq(resize_matrix.T, kernel[:, :, c, unit].reshape(-1), rcond=None)[0]
            np.testing.assert_allclose(new[:, :, c, unit].reshape(-1), want, rtol=1e-4, atol=1e-5)
    assert pi_resize_patch_kernel(kernel, 16).shape == (16, 16, 3, 4)


def test_at_resolution_equals_the_model_run_at_that_size():
    backbone = tiny_backbone()
    for w in backbone.vision_encoder.vit.position_embedding.weights:
        w.assign(np.random.default_rng(2).normal(size=w.shape).astype("float32"))
    bigger = at_resolution(backbone, 48)
    assert bigger.vision_encoder.vit.grid_size == (6, 6)
    images = np.random.default_rng(3).uniform(-1, 1, (2, 48, 48, 3)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(bigger.encode_images(images)),
                               ops.convert_to_numpy(backbone.encode_images(images)), atol=1e-5)
    tokens = np.random.default_rng(4).integers(2, 60, (2, 8)).astype("int32")
    np.testing.assert_array_equal(ops.convert_to_numpy(bigger.encode_texts(tokens)),
                                  ops.convert_to_numpy(backbone.encode_texts(tokens)))
    smaller_patch = at_resolution(backbone, 48, patch_size=12)
    assert smaller_patch.vision_encoder.patch_size == 12
    assert tuple(smaller_patch.vision_encoder.vit.embedding.kernel.shape) == (12 * 12 * 3, 32)
    with pytest.raises(ValueError, match="multiple"):
        at_resolution(backbone, 50)
    backbone.quantize("int8")  # its patch kernel would be read as floats
    with pytest.raises(ValueError, match=r"at_resolution reads float kernels; this model is quantized \(int8\)"):
        at_resolution(backbone, 48)


def test_stretched_schedule():
    base = keras.optimizers.schedules.PolynomialDecay(1.0, decay_steps=100, end_learning_rate=0.0)
    stretched = StretchedSchedule(base, start_step=90, factor=3.75)
    value = lambda s, step: float(ops.convert_to_numpy(s(step)))  # noqa: E731
    assert value(stretched, 50) == pytest.approx(value(base, 50))
    assert value(stretched, 90 + 3.75 * 4) == pytest.approx(value(base, 94), rel=1e-5)
    assert value(stretched, 90 + 37.5) == pytest.approx(0.0, abs=1e-6)
    again = StretchedSchedule.from_config(stretched.get_config())
    assert value(again, 100) == pytest.approx(value(stretched, 100))
