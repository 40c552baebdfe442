"""The chunked sigmoid loss equals the plain one, in value and in gradients."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.losses import SigmoidLoss, chunked_sigmoid_loss, sigmoid_labels, sigmoid_loss_from_embeddings
from tests.helpers import value_and_grads


def plain(images, texts, t, b):
    logits = ops.exp(t) * ops.matmul(images, ops.transpose(texts)) + b
    return SigmoidLoss()(sigmoid_labels(images.shape[0]), logits)


def embeddings(batch, dim, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, batch, dim)).astype("float32")
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    # Matching pairs closer than random ones, as after some training.
    x[1] = x[0] + 0.5 * x[1]
    x[1] /= np.linalg.norm(x[1], axis=-1, keepdims=True)
    return x[0], x[1]


@pytest.mark.parametrize("batch,chunk", [(10, 4), (12, 12), (16, 1), (9, 20)])
def test_equals_plain_loss_and_gradients(batch, chunk):
    images, texts = embeddings(batch, 8, seed=batch)
    args = [images, texts, np.array([np.log(10.0)], "float32"), np.array([-10.0], "float32")]
    expected, expected_grads = value_and_grads(plain, args)
    got, grads = value_and_grads(lambda *a: chunked_sigmoid_loss(*a, chunk_size=chunk), args)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    for name, g, e in zip(("images", "texts", "t", "b"), grads, expected_grads):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("offset,chunk", [(0, 5), (6, 4), (18, 7), (24, 24)])
def test_more_texts_than_images(offset, chunk):
    """Image i matches text i + offset among M = 4 B texts (a replica's images
    against the gathered texts; offset 24 leaves every pair a negative)."""
    images, texts = embeddings(24, 8, seed=offset)
    texts = np.concatenate([texts, images[::-1], -texts, images])[: 4 * 6]
    images = images[:6]
    args = [images, texts, np.array([np.log(10.0)], "float32"), np.array([-3.0], "float32")]
    expected, expected_grads = value_and_grads(
        lambda *a: sigmoid_loss_from_embeddings(*a, positive_offset=offset), args
    )
    got, grads = value_and_grads(lambda *a: chunked_sigmoid_loss(*a, chunk, positive_offset=offset), args)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    for name, g, e in zip(("images", "texts", "t", "b"), grads, expected_grads):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6, err_msg=name)


def test_plain_form_from_embeddings_equals_the_loss_on_logits():
    images, texts = embeddings(7, 8, seed=3)
    args = [images, texts, np.array([np.log(10.0)], "float32"), np.array([-10.0], "float32")]
    np.testing.assert_allclose(
        ops.convert_to_numpy(sigmoid_loss_from_embeddings(*args)), ops.convert_to_numpy(plain(*args)), rtol=1e-6
    )


def test_needs_matching_widths_and_static_batches():
    images, texts = embeddings(6, 4, seed=0)
    with pytest.raises(ValueError, match="same width"):
        chunked_sigmoid_loss(images, texts[:, :3], np.zeros(1, "float32"), np.zeros(1, "float32"), 2)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="XLA's compile-time memory analysis (jax)")
def test_chunked_memory_is_a_fraction_of_plain():
    """XLA's temporary memory for value and gradients, B = 2048: the plain loss holds
    B x B blocks; the chunked loop holds B x chunk (measured at B = 16384, D = 768:
    3072 MiB plain, 307 MiB with chunk 1024, 178 MiB with chunk 512)."""
    import jax
    import jax.numpy as jnp

    batch, dim = 2048, 64
    args = [jax.ShapeDtypeStruct((batch, dim), jnp.float32)] * 2 + [jax.ShapeDtypeStruct((1,), jnp.float32)] * 2

    def temp_bytes(fn):
        compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain_bytes = temp_bytes(plain)
    chunked_bytes = temp_bytes(lambda *a: chunked_sigmoid_loss(*a, chunk_size=128))
    assert plain_bytes >= 2 * batch * batch * 4  # at least two B x B float32 arrays
    assert chunked_bytes < 0.15 * plain_bytes


def test_backbone_fit_with_chunked_loss_matches_plain():
    """`compile(loss=SigmoidLoss(chunk_size=...))` trains a backbone exactly as the plain loss."""
    from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder

    rng = np.random.default_rng(0)
    x = {"images": rng.uniform(-1, 1, (6, 16, 16, 3)).astype("float32"),
         "token_ids": rng.integers(2, 40, (6, 5)).astype("int32")}
    losses = {}
    for chunk in (None, 4):
        keras.utils.set_random_seed(0)
        model = SigLIPBackbone(SigLIPVisionEncoder(8, 16, 1, 2, 32, image_size=16),
                               SigLIPTextEncoder(40, 16, 1, 2, 32, sequence_length=5))
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=SigmoidLoss(chunk_size=chunk))
        losses[chunk] = [float(np.ravel(model.train_on_batch(x))[0]) for _ in range(3)]
    np.testing.assert_allclose(losses[4], losses[None], rtol=1e-5)
    assert losses[4][-1] < losses[4][0]
    assert SigmoidLoss.from_config(SigmoidLoss(chunk_size=4).get_config()).chunk_size == 4
