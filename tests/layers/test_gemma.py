"""Gemma layers: RMSNorm, RoPE convention, prefix-LM / sliding masks, KV cache.

HF / big_vision parity of whole models is in tests/models/pali_gemma.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.presets.pali_gemma import gemma_parameter_count
from keras_siglip.layers.gemma import (
    GemmaDecoder,
    RMSNormalization,
    make_attention_mask,
    prefix_lm_mask,
)

TINY = dict(vocabulary_size=50, num_layers=3, num_query_heads=4, num_key_value_heads=2, hidden_dim=24,
            intermediate_dim=40, head_dim=8)
GEMMA_2 = dict(TINY, query_pre_attn_scalar=6, attention_logit_soft_cap=2.0, final_logit_soft_cap=3.0,
               use_post_norms=True, sliding_window=3)


def test_rms_norm_is_one_plus_scale():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 8)).astype("float32")
    layer = RMSNormalization()
    layer.build(x.shape)
    scale = rng.normal(size=8).astype("float32")
    layer.scale.assign(scale)
    expected = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-6) * (1 + scale)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-6)


def test_rope_is_hf_rotate_half():
    """keras-hub's RotaryEmbedding on `(B, T, N, H)` = HF Gemma's `q cos + rotate_half(q) sin`
    with inverse frequencies `1 / 10000^(2i / H)`, positions from `start_index`."""
    from keras_hub.layers import RotaryEmbedding

    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 5, 3, 8)).astype("float32")
    start = 7
    positions = start + np.arange(5)
    inv_freq = 1.0 / (10_000 ** (np.arange(0, 8, 2) / 8))
    angles = np.concatenate([positions[:, None] * inv_freq] * 2, axis=-1)[None, :, None, :]
    rotated = np.concatenate([-q[..., 4:], q[..., :4]], axis=-1)
    expected = q * np.cos(angles) + rotated * np.sin(angles)
    actual = RotaryEmbedding(max_wavelength=10_000, sequence_axis=1, feature_axis=-1)(q, start_index=start)
    np.testing.assert_allclose(ops.convert_to_numpy(actual), expected, atol=2e-5)


def test_sliding_mask_is_hf_rule():
    """HF: `(j <= i and j > i - W) or (i, j both in the prefix block)`, keys padded out."""
    padding = np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1, 0]], bool)
    ar = np.array([[0, 0, 0, 0, 0, 1, 1, 1, 1, 1]])
    window = 3
    i, j = np.arange(10)[:, None], np.arange(10)[None, :]
    prefix = ar[0] == 0
    expected = ((j <= i) & (j > i - window)) | (prefix[:, None] & prefix[None, :])
    expected = expected & padding[0][None, :] & padding[0][:, None]
    actual = ops.convert_to_numpy(prefix_lm_mask(padding, ar, sliding_window=window))[0]
    np.testing.assert_array_equal(actual, expected)
    # Without a window: big_vision's mask, suffix sees the whole prefix.
    full = ops.convert_to_numpy(make_attention_mask(padding, ar))[0]
    assert full[8, :5].all() and not actual[8, :5].all()


def test_mask_rows_for_cached_queries():
    """Queries `[start, start + T)` get the rows of the full mask, with keys at or
    after `start + T` (unwritten cache slots) hidden even when their ar is 0."""
    padding = np.ones((2, 8), "int32")
    ar = np.array([[0, 0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1]])
    full = ops.convert_to_numpy(prefix_lm_mask(padding, ar, sliding_window=2))
    rows = ops.convert_to_numpy(prefix_lm_mask(padding, ar, query_start=4, query_length=2, sliding_window=2))
    np.testing.assert_array_equal(rows[:, :, :6], full[:, 4:6, :6])
    assert not rows[:, :, 6:].any()


@pytest.mark.parametrize("config", [TINY, GEMMA_2], ids=["gemma1", "gemma2"])
def test_cached_steps_equal_full_sequence(config):
    """A causal LM (ar None): token-by-token cached logits = one full pass."""
    keras.utils.set_random_seed(0)
    decoder = GemmaDecoder(**config)
    decoder.build()
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 50, (2, 7)).astype("int32")
    padding = np.ones((2, 7), "int32")
    embeddings = decoder.embed(ids)
    full = ops.convert_to_numpy(decoder.logits(decoder(embeddings, padding)))
    cache = decoder.initial_cache(2, 7)
    steps = []
    for index in range(7):
        logits, _, cache = decoder.call_with_cache(embeddings[:, index:index + 1], cache, index, padding)
        steps.append(ops.convert_to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)
    if config.get("final_logit_soft_cap"):
        assert np.abs(full).max() < config["final_logit_soft_cap"]


def test_padded_query_rows_stay_finite():
    decoder = GemmaDecoder(**GEMMA_2)
    decoder.build()
    embeddings = decoder.embed(np.array([[3, 4, 5, 0]], "int32"))
    hidden = decoder(embeddings, np.array([[1, 1, 1, 0]]), np.array([[0, 0, 1, 1]]))
    assert np.isfinite(ops.convert_to_numpy(hidden)).all()


@pytest.mark.parametrize("config", [TINY, GEMMA_2], ids=["gemma1", "gemma2"])
def test_parameter_count(config):
    decoder = GemmaDecoder(**config)
    decoder.build()
    assert decoder.count_params() == gemma_parameter_count(config)


def test_serialization_round_trip():
    decoder = GemmaDecoder(**GEMMA_2)
    clone = GemmaDecoder.from_config(decoder.get_config())
    assert clone.get_config() == decoder.get_config()
