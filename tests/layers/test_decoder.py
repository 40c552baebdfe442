"""The cross-attention TextDecoder: numpy reference, cached decoding, masks, init."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.layers import DecoderBlock, TextDecoder
from keras_siglip.layers.decoder import causal_mask, shift_right
from tests.helpers import float64

VOCAB, WIDTH, HEADS, MLP, LENGTH, ENC_WIDTH, ENC_TOKENS = 13, 16, 2, 24, 8, 12, 5


def make_decoder(depth=2, masked_pred=True, use_bias=True, seed=0):
    keras.utils.set_random_seed(seed)
    decoder = TextDecoder(
        VOCAB, WIDTH, depth, HEADS, MLP, max_length=LENGTH, masked_pred=masked_pred,
        use_bias=use_bias, encoder_width=ENC_WIDTH,
    )
    decoder.build()
    return decoder


def randomize(layer, rng):
    """Distinct random values in every weight, LayerNorm scales around 1 and
    offsets around 0 (so that a swapped or skipped parameter changes outputs)."""
    for weight in layer.weights:
        shape = tuple(weight.shape)
        if weight.path.endswith("gamma"):
            value = 1.0 + 0.5 * rng.normal(size=shape)
        elif weight.path.endswith("beta") or weight.path.endswith("bias"):
            value = 0.5 * rng.normal(size=shape)
        elif "embedding" in weight.path:
            value = rng.normal(size=shape)
        else:
            value = rng.normal(size=shape) / math.sqrt(np.prod(shape) / shape[-1])
        weight.assign(value.astype("float32"))


# ---- numpy reference (big_vision CapPa EncoderDecoderBlock), float64 ----

def np_layer_norm(x, norm):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + 1e-6) * float64(norm.gamma)
    return y + float64(norm.beta) if norm.beta is not None else y


def np_attention(x, source, attention, mask):
    """Flax MultiHeadDotProductAttention without biases; kernels (E, H, D) and (H, D, E)."""
    q = np.einsum("bte,ehd->bthd", x, float64(attention._query_dense.kernel))
    k = np.einsum("bse,ehd->bshd", source, float64(attention._key_dense.kernel))
    v = np.einsum("bse,ehd->bshd", source, float64(attention._value_dense.kernel))
    logits = np.einsum("bthd,bshd->bhts", q / np.sqrt(q.shape[-1]), k)
    if mask is not None:
        logits = np.where(mask[:, None], logits, -1e30)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhts,bshd->bthd", weights, v)
    return np.einsum("bthd,hde->bte", out, float64(attention._output_dense.kernel))


def np_dense(x, dense):
    y = x @ float64(dense.kernel)
    return y + float64(dense.bias) if dense.bias is not None else y


def np_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_block(t, encoded, mask, block):
    x = np_layer_norm(t, block.norm_1)
    x = np_attention(x, x, block.self_attention, mask) + t
    y = np_attention(np_layer_norm(x, block.norm_2), encoded, block.cross_attention, None) + x
    z = np_dense(np_gelu(np_dense(np_layer_norm(y, block.norm_3), block.mlp.dense_0)), block.mlp.dense_1)
    return y + z


def np_decoder(decoder, targets, encoded, parallel):
    """The whole big_vision Decoder: shift or mask, embed, blocks, LayerNorm, logits."""
    batch, length = targets.shape
    shifted = np.concatenate([np.zeros((batch, 1), targets.dtype), targets[:, :-1]], axis=1)
    inputs = np.where(parallel[:, None], VOCAB, shifted)
    mask = np.tril(np.ones((length, length), bool))[None] | parallel[:, None, None]
    x = float64(decoder.token_embedding.embeddings)[inputs] + float64(decoder.position_embedding)[:, :length]
    for block in decoder.blocks:
        x = np_block(x, encoded, mask, block)
    return np_dense(np_layer_norm(x, decoder.final_norm), decoder.logits_dense)


@pytest.mark.parametrize("use_bias", [True, False])
def test_block_matches_numpy_reference(rng, use_bias):
    """One block on random weights (LayerNorm scales/offsets perturbed, encoder
    width 12 != decoder width 16) equals the big_vision equations in float64,
    with a causal mask and with a per-example mixed mask."""
    block = DecoderBlock(HEADS, MLP, use_bias=use_bias, encoder_width=ENC_WIDTH)
    block.build((None, None, WIDTH))
    randomize(block, rng)
    assert (block.norm_1.beta is not None) == use_bias == (block.mlp.dense_0.bias is not None)
    assert block.self_attention._query_dense.bias is None and block.cross_attention._output_dense.bias is None
    x = rng.normal(size=(3, 6, WIDTH)).astype("float32")
    encoded = rng.normal(size=(3, ENC_TOKENS, ENC_WIDTH)).astype("float32")
    causal = np.broadcast_to(np.tril(np.ones((6, 6), bool)), (3, 6, 6))
    mixed = causal | np.array([True, False, True])[:, None, None]
    for mask in (causal, mixed):
        got = float64(block(x, encoded, attention_mask=mask))
        expected = np_block(x.astype("float64"), encoded.astype("float64"), mask, block)
        assert np.abs(got - expected).max() < 1e-5, np.abs(got - expected).max()


@pytest.mark.parametrize("use_bias", [True, False])
def test_decoder_matches_numpy_reference(rng, use_bias):
    """The full decoder (autoregressive and parallel rows in one batch) equals
    the numpy reference; random weights everywhere, logits included."""
    decoder = make_decoder(use_bias=use_bias)
    randomize(decoder, rng)
    targets = rng.integers(1, VOCAB, (3, 7)).astype("int32")
    encoded = rng.normal(size=(3, ENC_TOKENS, ENC_WIDTH)).astype("float32")
    parallel = np.array([False, True, False])
    got = float64(decoder(targets, encoded, parallel=parallel))
    expected = np_decoder(decoder, targets, encoded.astype("float64"), parallel)
    assert np.abs(got - expected).max() < 1e-5, np.abs(got - expected).max()


def greedy_without_cache(decoder, encoded, steps):
    """Greedy decoding that recomputes the whole sequence at every step.

    Step t runs the teacher-forced forward on `[tokens so far, 0, ...]` (one
    shape for all steps) and reads position t, whose inputs are the pad id and
    tokens 0..t-1 (later positions are masked: see the causal test below).
    """
    batch = encoded.shape[0]
    tokens = np.zeros((batch, steps), "int32")
    all_logits = []
    for t in range(steps):
        logits = float64(decoder(tokens, encoded))[:, t]
        all_logits.append(logits)
        tokens[:, t] = logits.argmax(-1)
    return tokens, np.stack(all_logits, 1)


def compiled(fn):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn


@pytest.mark.parametrize("jit", [False, True])
def test_cached_greedy_decoding_equals_recomputing_the_prefix(rng, jit):
    """7 greedy steps for a batch of 4 with the key/value caches (cross-attention
    keys/values computed once) give the logits and tokens of full recomputation.
    `jit=True` runs the step compiled (XLA on JAX / TensorFlow; eager on torch)
    with the index a tensor, so one compiled step serves every position."""
    decoder = make_decoder(depth=2)
    randomize(decoder, rng)
    # Larger logits weights, no bias, larger encoder tokens: greedy sequences
    # that vary along time and across the batch.
    decoder.logits_dense.kernel.assign(3 * rng.normal(size=(WIDTH, VOCAB)).astype("float32"))
    decoder.logits_dense.bias.assign(np.zeros(VOCAB, "float32"))
    encoded = 3 * rng.normal(size=(4, ENC_TOKENS, ENC_WIDTH)).astype("float32")
    steps = 7
    expected_tokens, expected_logits = greedy_without_cache(decoder, encoded, steps)
    assert len(np.unique(expected_tokens)) > 3 and len({tuple(row) for row in expected_tokens}) > 1

    def step(ids, cache, index, cross):
        logits, _, cache = decoder.call_with_cache(ids, cache, index, cross)
        return logits, cache

    if jit:
        step = compiled(step)
    cache = decoder.initial_cache(4)
    cross = decoder.cross_attention_cache(encoded)
    assert tuple(cache.shape) == (4, 2, 2, LENGTH, HEADS, WIDTH // HEADS)
    assert tuple(cross.shape) == (4, 2, 2, ENC_TOKENS, HEADS, WIDTH // HEADS)
    previous = np.zeros((4, 1), "int32")
    tokens, logits = [], []
    for t in range(steps):
        index = ops.convert_to_tensor(t, "int32") if jit else t
        step_logits, cache = step(previous, cache, index, cross)
        step_logits = float64(step_logits)[:, 0]
        logits.append(step_logits)
        previous = step_logits.argmax(-1)[:, None].astype("int32")
        tokens.append(previous[:, 0])
    # Logits reach about 40 here: float32 rounding allows ~1e-5 absolute.
    np.testing.assert_allclose(np.stack(logits, 1), expected_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.stack(tokens, 1), expected_tokens)


def test_prompt_prefill_then_steps_equals_full_forward(rng):
    """A 3-token prompt written into the cache in one call, then 3 single steps:
    each position's logits equal the full teacher-forced forward."""
    decoder = make_decoder()
    randomize(decoder, rng)
    targets = rng.integers(1, VOCAB, (2, 6)).astype("int32")
    encoded = rng.normal(size=(2, ENC_TOKENS, ENC_WIDTH)).astype("float32")
    expected = float64(decoder(targets, encoded))
    inputs = float64(shift_right(ops.convert_to_tensor(targets))).astype("int32")
    cache, cross = decoder.initial_cache(2), decoder.cross_attention_cache(encoded)
    logits, hidden, cache = decoder.call_with_cache(inputs[:, :3], cache, 0, cross)
    assert tuple(hidden.shape) == (2, 3, WIDTH)
    got = [float64(logits)]
    for t in range(3, 6):
        logits, _, cache = decoder.call_with_cache(inputs[:, t : t + 1], cache, t, cross)
        got.append(float64(logits))
    difference = np.abs(np.concatenate(got, 1) - expected).max()
    assert difference < 1e-5, difference


def test_causal_logits_ignore_later_tokens(rng):
    """Autoregressive: logits at positions <= t are unchanged when targets after
    t change (position t reads targets < t), and later positions do change."""
    decoder = make_decoder()
    randomize(decoder, rng)
    encoded = rng.normal(size=(2, ENC_TOKENS, ENC_WIDTH)).astype("float32")
    targets = rng.integers(1, VOCAB, (2, LENGTH)).astype("int32")
    base = float64(decoder(targets, encoded))
    for t in (0, 3, 6):
        perturbed = targets.copy()
        perturbed[:, t:] = (perturbed[:, t:] + 1 + rng.integers(0, VOCAB - 1, perturbed[:, t:].shape)) % VOCAB
        got = float64(decoder(perturbed, encoded))
        np.testing.assert_allclose(got[:, : t + 1], base[:, : t + 1], atol=1e-6)
        assert np.abs(got[:, t + 1 :] - base[:, t + 1 :]).max() > 1e-3


def test_prepare_inputs_selects_mode_per_example(rng):
    """Parallel rows: every input is [MASK] (id = vocabulary_size) and the mask
    is all ones; autoregressive rows: shifted targets with pad 0 and a causal mask."""
    decoder = make_decoder()
    targets = rng.integers(1, VOCAB, (3, 6)).astype("int32")
    parallel = np.array([True, False, True])
    inputs, mask = decoder.prepare_inputs(targets, parallel)
    inputs, mask = ops.convert_to_numpy(inputs), ops.convert_to_numpy(mask)
    assert decoder.mask_id == VOCAB and decoder.token_embedding.input_dim == VOCAB + 1
    np.testing.assert_array_equal(inputs[[0, 2]], VOCAB)
    np.testing.assert_array_equal(mask[[0, 2]], True)
    np.testing.assert_array_equal(inputs[1], np.concatenate([[0], targets[1, :-1]]))
    np.testing.assert_array_equal(mask[1], np.tril(np.ones((6, 6), bool)))
    all_parallel, full = decoder.prepare_inputs(targets, True)
    np.testing.assert_array_equal(ops.convert_to_numpy(all_parallel), VOCAB)
    np.testing.assert_array_equal(ops.convert_to_numpy(full), True)
    # Partial masking (big_vision masking_ratio < 1): unmasked inputs keep the target.
    positions = rng.random((3, 6)) < 0.5
    partial, _ = decoder.prepare_inputs(targets, parallel, mask_positions=positions)
    np.testing.assert_array_equal(ops.convert_to_numpy(partial)[0], np.where(positions[0], VOCAB, targets[0]))


def test_parallel_rows_equal_single_mode_calls_and_ignore_targets(rng):
    """A mixed batch equals running each mode on its own; parallel logits do not
    depend on the targets (all inputs are [MASK])."""
    decoder = make_decoder()
    randomize(decoder, rng)
    targets = rng.integers(1, VOCAB, (3, 6)).astype("int32")
    encoded = rng.normal(size=(3, ENC_TOKENS, ENC_WIDTH)).astype("float32")
    mixed = float64(decoder(targets, encoded, parallel=np.array([True, False, True])))
    parallel = float64(decoder(targets, encoded, parallel=True))
    causal = float64(decoder(targets, encoded))
    np.testing.assert_allclose(mixed[[0, 2]], parallel[[0, 2]], atol=1e-6)
    np.testing.assert_allclose(mixed[1], causal[1], atol=1e-6)
    other = float64(decoder(rng.integers(1, VOCAB, (3, 6)).astype("int32"), encoded, parallel=True))
    np.testing.assert_allclose(other, parallel, atol=1e-6)
    assert np.abs(parallel - causal).max() > 1e-3


def test_initialisation_matches_big_vision():
    """Zero logits kernel and bias (all logits 0); token embeddings N(0, 1);
    positions N(0, 1/E); attention kernels Flax lecun_normal (variance 1/fan_in
    over the contracted axes); the [MASK] row only with masked_pred."""
    keras.utils.set_random_seed(1)
    decoder = TextDecoder(500, 64, 1, 4, 128, max_length=64, masked_pred=True, encoder_width=32)
    decoder.build()
    assert not np.any(float64(decoder.logits_dense.kernel)) and not np.any(float64(decoder.logits_dense.bias))
    logits = float64(decoder(np.ones((2, 5), "int32"), np.ones((2, 3, 32), "float32")))
    assert logits.shape == (2, 5, 500) and not np.any(logits)
    np.testing.assert_allclose(float64(decoder.token_embedding.embeddings).std(), 1.0, rtol=0.03)
    np.testing.assert_allclose(float64(decoder.position_embedding).std(), 1 / 8, rtol=0.05)
    block = decoder.blocks[0]
    for dense, fan_in in [
        (block.self_attention._query_dense, 64), (block.self_attention._output_dense, 64),
        (block.cross_attention._key_dense, 32), (block.cross_attention._output_dense, 64),
    ]:
        std = float64(dense.kernel).std()
        np.testing.assert_allclose(std, 1 / math.sqrt(fan_in), rtol=0.06, err_msg=dense.name)
    keras.utils.set_random_seed(1)
    assert TextDecoder(500, 64, 1, 4, 128, masked_pred=False).token_embedding.input_dim == 500


def test_errors(rng):
    decoder = make_decoder(masked_pred=False)
    encoded = rng.normal(size=(1, ENC_TOKENS, ENC_WIDTH)).astype("float32")
    with pytest.raises(ValueError, match="no \\[MASK\\] token"):
        decoder(np.ones((1, 4), "int32"), encoded, parallel=True)
    with pytest.raises(ValueError, match="length <= 8"):
        decoder(np.ones((1, 9), "int32"), encoded)
    with pytest.raises(ValueError, match="Token ids must lie in"):
        decoder(np.full((1, 4), VOCAB, "int32"), encoded)


def test_helpers():
    np.testing.assert_array_equal(
        ops.convert_to_numpy(shift_right(ops.convert_to_tensor([[5, 6, 7]]))), [[0, 5, 6]]
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(causal_mask(2, 4, start=1)), [[1, 1, 0, 0], [1, 1, 1, 0]]
    )


def test_config_round_trip(rng):
    decoder = make_decoder(use_bias=False)
    config = decoder.get_config()
    clone = TextDecoder.from_config(config)
    clone.build()
    assert clone.get_config() == config
    clone.set_weights(decoder.get_weights())
    randomize(decoder, rng)
    clone.set_weights(decoder.get_weights())
    targets = rng.integers(1, VOCAB, (2, 5)).astype("int32")
    encoded = rng.normal(size=(2, ENC_TOKENS, ENC_WIDTH)).astype("float32")
    np.testing.assert_array_equal(float64(clone(targets, encoded)), float64(decoder(targets, encoded)))


def test_dropout_acts_in_training_only():
    keras.utils.set_random_seed(0)
    kwargs = dict(vocabulary_size=30, width=32, depth=2, num_heads=4, mlp_dim=64, max_length=8)
    plain, dropped = TextDecoder(**kwargs), TextDecoder(**kwargs, dropout=0.3)
    rng = np.random.default_rng(0)
    token_ids = rng.integers(2, 30, (3, 8)).astype("int32")
    encoded = rng.normal(size=(3, 5, 32)).astype("float32")
    plain(token_ids, encoded)
    dropped(token_ids, encoded)
    dropped.set_weights(plain.get_weights())
    for w in dropped.logits_dense.weights:  # non-zero logits, so dropout shows
        w.assign(rng.normal(size=tuple(w.shape)).astype("float32"))
    plain.set_weights(dropped.get_weights())
    inference = np.asarray(ops.convert_to_numpy(dropped(token_ids, encoded)))
    # Same math; the attention core with dropout takes Keras' own path (float32 reordering).
    np.testing.assert_allclose(inference, ops.convert_to_numpy(plain(token_ids, encoded)), rtol=1e-5, atol=1e-5)
    first = np.asarray(ops.convert_to_numpy(dropped(token_ids, encoded, training=True)))
    second = np.asarray(ops.convert_to_numpy(dropped(token_ids, encoded, training=True)))
    assert not np.allclose(first, inference, atol=1e-3) and not np.allclose(first, second, atol=1e-3)
    np.testing.assert_allclose(ops.convert_to_numpy(plain(token_ids, encoded, training=True)), inference,
                               rtol=1e-5, atol=1e-5)
    assert TextDecoder.from_config(dropped.get_config()).dropout == 0.3
