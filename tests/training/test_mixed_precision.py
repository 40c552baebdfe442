"""`mixed_bfloat16` on every backend: builds, fits, predicts close to float32, and
keeps the numerically sensitive parts in float32.

Tolerances against the same weights in float32 (tiny towers, 2 blocks each;
bfloat16 keeps 8 significant bits, relative rounding 2^-9): embeddings ATOL
2e-2 (measured <= 5.1e-3 on JAX, TensorFlow and torch), logits ATOL 0.2 =
exp(t) * 2e-2 (measured <= 5.2e-2). Float32 parts are checked exactly or to
float32 tolerance.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.layers.vit import EncoderBlock, MultiHeadAttention
from keras_siglip.losses import SigmoidLoss
from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder
from tests.helpers import tiny_backbone


def data(batch=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "images": rng.uniform(-1, 1, (batch, 32, 32, 3)).astype("float32"),
        "token_ids": rng.integers(0, 60, (batch, 8)).astype("int32"),
    }


def bf16_backbone(how):
    if how == "global policy":
        keras.config.set_dtype_policy("mixed_bfloat16")
        return tiny_backbone()
    keras.utils.set_random_seed(0)
    dtype = "mixed_bfloat16"
    vision = SigLIPVisionEncoder(8, 32, 2, 2, 64, image_size=32, dtype=dtype)
    text = SigLIPTextEncoder(60, 24, 2, 2, 48, sequence_length=8, num_classes=32, dtype=dtype)
    return SigLIPBackbone(vision, text, dtype=dtype)


@pytest.mark.parametrize("how", ["global policy", "dtype argument"])
def test_mixed_bfloat16_builds_predicts_and_fits(how):
    x = data()
    reference = tiny_backbone()
    expected = reference.predict(x, verbose=0)
    model = bf16_backbone(how)
    model.set_weights(reference.get_weights())
    assert all(v.dtype == "float32" for v in model.weights)
    dense = model.vision_encoder.vit.encoder.blocks[0].mlp.dense_0
    assert dense.compute_dtype == "bfloat16"  # the towers do compute in bfloat16
    assert str(ops.convert_to_numpy(dense(np.ones((1, 32), "float32"))).dtype) == "bfloat16"

    out = model.predict(x, verbose=0)
    for name in ("image_embeddings", "text_embeddings", "logits"):
        assert str(out[name].dtype) == "float32", name
    np.testing.assert_allclose(out["image_embeddings"], expected["image_embeddings"], atol=2e-2)
    np.testing.assert_allclose(out["text_embeddings"], expected["text_embeddings"], atol=2e-2)
    np.testing.assert_allclose(out["logits"], expected["logits"], atol=0.2)

    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    losses = model.fit(x, batch_size=8, epochs=10, shuffle=False, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
    assert all(v.dtype == "float32" for v in model.weights)  # master weights stay float32


def test_head_normalisation_logits_and_loss_stay_float32():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = tiny_backbone()
    x = data(batch=4)
    out = {k: ops.convert_to_numpy(v) for k, v in model(x).items()}
    # float32 L2 normalisation: unit norms to float32 precision (bfloat16: ~4e-3).
    for name in ("image_embeddings", "text_embeddings"):
        assert out[name].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out[name], axis=-1), 1, atol=1e-6)
    # float32 logits: exp(t) cos + b from the float32 embeddings (bfloat16 logits
    # near b = -10 are multiples of 1/16).
    expected = 10.0 * out["image_embeddings"] @ out["text_embeddings"].T - 10.0
    assert out["logits"].dtype == np.float32
    np.testing.assert_allclose(out["logits"], expected, atol=1e-5)
    model.compile()
    loss = model.compute_loss(x, None, model(x))
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    labels = 2 * np.eye(4, dtype="float32") - 1
    expected_loss = np.mean(np.sum(np.logaddexp(0, -labels * out["logits"]), axis=-1))
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
    assert SigmoidLoss().dtype == "float32"


def test_layer_norm_is_computed_in_float32():
    keras.config.set_dtype_policy("mixed_bfloat16")
    block = EncoderBlock(2, 64)
    block.build((None, 5, 32))
    gamma = np.random.default_rng(1).normal(size=32).astype("float32")
    block.norm_0.gamma.assign(gamma)
    x = np.random.default_rng(0).normal(3.0, 2.0, (2, 5, 32)).astype("float32")
    x = ops.convert_to_numpy(ops.cast(ops.cast(x, "bfloat16"), "float32"))  # bfloat16 inputs
    out = ops.convert_to_numpy(ops.cast(block.norm_0(ops.cast(x, "bfloat16")), "float32"))
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    float32_norm = (x - mean) / np.sqrt(var + 1e-6) * gamma
    rounded = ops.convert_to_numpy(ops.cast(ops.cast(float32_norm, "bfloat16"), "float32"))
    # Computed in float32 then rounded once: at most one bfloat16 step (2^-8 relative) away.
    np.testing.assert_allclose(out, rounded, rtol=2**-8, atol=1e-6)


def test_attention_softmax_is_float32():
    """The attention core under mixed_bfloat16 (on this backend's own path, with a
    mask) equals float32 attention of the same bfloat16 q, k, v up to bfloat16
    rounding of its output and probabilities; bfloat16 logits are far off."""
    keras.config.set_dtype_policy("mixed_bfloat16")
    layer = MultiHeadAttention(num_heads=2, key_dim=16)
    layer.build((None, 24, 32), (None, 24, 32))
    assert layer._softmax.compute_dtype == "float32"
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(0, 3, (2, 24, 2, 16)).astype("float32") for _ in range(3))
    q, k, v = (ops.convert_to_numpy(ops.cast(ops.cast(t, "bfloat16"), "float32")) for t in (q, k, v))
    mask = rng.uniform(size=(2, 24, 24)) < 0.8
    mask[:, :, 0] = True
    out, _ = layer._compute_attention(*(ops.cast(t, "bfloat16") for t in (q, k, v)), attention_mask=mask)
    out = ops.convert_to_numpy(ops.cast(out, "float32"))
    logits = np.einsum("bthd,bshd->bhts", q, k) / 4.0
    logits = np.where(mask[:, None], logits, -1e9)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = np.einsum("bhts,bshd->bthd", weights, v)
    rounding = np.abs(ops.convert_to_numpy(ops.cast(ops.cast(expected, "bfloat16"), "float32")) - expected)
    # Allowed: rounding the output once, and the probabilities once before
    # `probs @ v` (<= 2^-9 relative each, times |v|). Measured: 0.043 (JAX),
    # 3e-6 (TensorFlow: float32 core), 0.028 (torch) against a bound of 0.047;
    # TensorFlow's fused attention with its bfloat16-rounded logits: 0.19.
    bound = rounding.max() + 2**-9 * np.abs(v).max() + 1e-5
    assert np.abs(out - expected).max() <= bound
