"""The distillation head against a float64 numpy transcription of DINO's head."""

import keras
import numpy as np
import pytest
from keras import ops
from scipy.special import erf

from keras_siglip.layers import DistillationHead


def gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def reference(head, x):
    x = x.astype("float64")
    for i, dense in enumerate(head.mlp):
        x = x @ ops.convert_to_numpy(dense.kernel).astype("float64") + ops.convert_to_numpy(dense.bias)
        if i < len(head.mlp) - 1:
            x = gelu(x)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    v = ops.convert_to_numpy(head.prototypes).astype("float64")
    kernel = v / np.linalg.norm(v, axis=0, keepdims=True)
    if head.gain is not None:
        kernel = kernel * ops.convert_to_numpy(head.gain)
    return x @ kernel


def perturbed_head(rng, **kwargs):
    head = DistillationHead(num_prototypes=12, hidden_dim=20, bottleneck_dim=6, **kwargs)
    head.build((None, 5, 16))
    for v in head.weights:  # zero biases and unit gains would hide a dropped parameter
        v.assign(rng.normal(scale=0.3, size=v.shape).astype("float32") + (1.0 if v.name == "gain" else 0.0))
    return head


@pytest.mark.parametrize("kwargs", [{}, {"num_layers": 1}, {"norm_last_layer": False}])
def test_matches_reference(rng, kwargs):
    head = perturbed_head(rng, **kwargs)
    x = rng.normal(size=(3, 5, 16)).astype("float32")
    out = ops.convert_to_numpy(head(x))
    assert out.shape == (3, 5, 12) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(head, x), rtol=1e-5, atol=1e-6)
    assert len(head.trainable_weights) == 2 * head.num_layers + 1 + (0 if head.norm_last_layer else 1)


def test_prototype_scale_does_not_matter(rng):
    head = perturbed_head(rng)
    x = rng.normal(size=(2, 16)).astype("float32")
    before = ops.convert_to_numpy(head(x))
    head.prototypes.assign(head.prototypes * np.linspace(0.5, 3.0, 12).astype("float32"))
    np.testing.assert_allclose(ops.convert_to_numpy(head(x)), before, rtol=1e-5, atol=1e-6)
    assert np.abs(before).max() <= 1 + 1e-5  # cosines between unit vectors


def test_config_round_trip(rng):
    head = perturbed_head(rng, norm_last_layer=False, num_layers=2)
    clone = DistillationHead.from_config(head.get_config())
    clone.build((None, 5, 16))
    clone.set_weights(head.get_weights())
    x = rng.normal(size=(2, 5, 16)).astype("float32")
    np.testing.assert_array_equal(ops.convert_to_numpy(clone(x)), ops.convert_to_numpy(head(x)))
    model = keras.Sequential([keras.Input((16,)), DistillationHead(8, hidden_dim=8, bottleneck_dim=4)])
    assert model.output_shape == (None, 8)


def test_bad_depth():
    with pytest.raises(ValueError, match="num_layers"):
        DistillationHead(8, num_layers=0)
