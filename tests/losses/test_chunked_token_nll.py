"""The decoder loss chunked over the vocabulary equals a numpy reference, in
value and gradients (SigLIP 2's 256k-vocabulary decoder loss)."""

import numpy as np
import pytest
from keras import ops

from keras_siglip.losses import chunked_token_nll, per_caption_mean
from tests.helpers import value_and_grads

B, L, E, V = 3, 5, 6, 23


def problem(seed):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(B, L, E)).astype("float32")
    kernel = rng.normal(size=(E, V)).astype("float32")
    bias = rng.normal(size=(V,)).astype("float32")
    targets = rng.integers(1, V, size=(B, L)).astype("int32")
    targets[0, 3:] = 0  # padding, not scored
    targets[2, :] = 0  # an all-padding caption adds 0
    return hidden, kernel, bias, targets


def numpy_reference(hidden, kernel, bias, targets):
    """float64 loss (mean over captions of the per-caption mean NLL) and its gradients."""
    h, k, b = (a.astype("float64") for a in (hidden, kernel, bias))
    logits = h @ k + b
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    onehot = np.eye(V)[targets]
    nll = -np.log((probs * onehot).sum(-1))
    weights = (targets != 0).astype("float64")
    coeff = weights / np.maximum(weights.sum(-1, keepdims=True), 2e-38) / B  # dL/dnll
    loss = (nll * coeff).sum()
    g_logits = coeff[..., None] * (probs - onehot)
    return loss, [g_logits @ k.T, np.einsum("ble,blv->ev", h, g_logits), g_logits.sum((0, 1))]


@pytest.mark.parametrize("chunk_size", [None, 4, 7, 23, 100])
def test_equals_numpy_values_and_gradients(chunk_size):
    hidden, kernel, bias, targets = problem(chunk_size or 0)

    def loss(h, k, b):
        return ops.mean(per_caption_mean(chunked_token_nll(h, k, b, targets, chunk_size), targets))

    value, grads = value_and_grads(loss, [hidden, kernel, bias])
    expected, expected_grads = numpy_reference(hidden, kernel, bias, targets)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    for name, got, want in zip(("hidden", "kernel", "bias"), grads, expected_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_per_token_values():
    hidden, kernel, bias, targets = problem(1)
    logits = hidden.astype("float64") @ kernel + bias
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    want = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    got = ops.convert_to_numpy(chunked_token_nll(hidden, kernel, bias, targets, chunk_size=5))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rejects_a_bad_chunk_size():
    hidden, kernel, bias, targets = problem(2)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_nll(hidden, kernel, bias, targets, chunk_size=0)
