"""The shared ViT layers: patch order, position grid, pooling, masks."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.layers import MAPHead, PositionEmbedding, VisionTransformer, patchify
from keras_siglip.presets.variants import decode_variant


def test_dense_patch_embedding_equals_valid_conv(rng):
    """A conv kernel (P, P, C, W) reshaped to (P*P*C, W) embeds patchify's patches
    exactly like a stride-P VALID convolution, including the dropped border."""
    images = rng.normal(size=(2, 21, 27, 3)).astype("float32")  # 21x27 -> 5x6 patches of 4
    kernel = rng.normal(size=(4, 4, 3, 5)).astype("float32")
    conv = keras.layers.Conv2D(5, 4, strides=4, padding="valid", use_bias=False)
    conv.build(images.shape)
    conv.kernel.assign(kernel)
    expected = ops.convert_to_numpy(conv(images)).reshape(2, 30, 5)
    patches, grid = patchify(images, 4)
    assert grid == (5, 6)
    got = ops.convert_to_numpy(patches) @ kernel.reshape(-1, 5)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_image_embedding_equals_dense_on_patches(rng):
    """The ViT embeds whole images with a strided conv of the Dense kernel: the
    same values as the Dense layer on patchify's patches (NaFlex's path)."""
    vit = VisionTransformer(4, 8, 1, 2, 16, grid_size=(5, 6), pooling="none")
    images = rng.normal(size=(2, 21, 27, 3)).astype("float32")
    vit.build(images.shape)
    vit.embedding.bias.assign(rng.normal(size=(8,)).astype("float32"))
    got, grid = vit.embed_images(images)
    patches, expected_grid = patchify(images, 4)
    assert grid == expected_grid == (5, 6)
    expected = ops.convert_to_numpy(vit.embedding(patches))
    np.testing.assert_allclose(ops.convert_to_numpy(got), expected, atol=1e-5)
    with pytest.raises(ValueError, match="smaller than one"):
        vit.embed_images(images[:, :3])


def test_patch_vector_order_is_py_px_c(rng):
    images = rng.normal(size=(1, 8, 12, 3)).astype("float32")
    patches, _ = patchify(images, 4)
    np.testing.assert_array_equal(ops.convert_to_numpy(patches)[0, 5], images[0, 4:8, 8:12].reshape(-1))


def test_position_grid_resize_is_identity_at_the_stored_size(rng):
    layer = PositionEmbedding((3, 4))
    layer.build((None, None, 6))
    table = ops.convert_to_numpy(layer.embeddings)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.grid((3, 4))), table.reshape(12, 6))
    resized = ops.convert_to_numpy(layer.grid((6, 8)))
    assert resized.shape == (48, 6)
    # Upsampling by exactly 2 with half-pixel centres averages neighbours: the
    # overall mean is preserved up to border effects.
    np.testing.assert_allclose(resized.mean(0), table.reshape(12, 6).mean(0), atol=0.15)


def test_map_head_ignores_masked_tokens(rng):
    head = MAPHead(num_heads=2, mlp_dim=16)
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], "int32")
    out = ops.convert_to_numpy(head(x, key_mask=mask))
    y = x.copy()
    y[0, 3:] = 100.0  # garbage in masked positions
    out2 = ops.convert_to_numpy(head(y, key_mask=mask))
    np.testing.assert_allclose(out, out2, atol=1e-5)
    short = ops.convert_to_numpy(head(x[:1, :3]))
    np.testing.assert_allclose(out[:1], short, atol=1e-5)


@pytest.mark.parametrize("pooling, shape", [("gap", (2, 16)), ("token", (2, 16)), ("none", (2, 16, 16)), ("map", (2, 16))])
def test_poolings(rng, pooling, shape):
    vit = VisionTransformer(4, 16, 1, 2, 32, grid_size=(4, 4), pooling=pooling)
    out = ops.convert_to_numpy(vit(rng.normal(size=(2, 16, 16, 3)).astype("float32")))
    assert out.shape == shape
    assert vit.compute_output_shape((2, 16, 16, 3))[-1] == shape[-1]


def test_token_pooling_reads_the_class_token(rng):
    vit = VisionTransformer(4, 16, 1, 2, 32, grid_size=(2, 2), pooling="token")
    images = rng.normal(size=(1, 8, 8, 3)).astype("float32")
    pooled = ops.convert_to_numpy(vit(images))
    tokens = ops.convert_to_numpy(vit.encode_tokens(images))
    assert tokens.shape == (1, 5, 16)
    np.testing.assert_allclose(pooled, tokens[:, 0], atol=1e-6)


def test_head_on_tokens_for_none_pooling(rng):
    vit = VisionTransformer(4, 16, 1, 2, 32, grid_size=(2, 2), pooling="none", num_classes=7)
    assert ops.convert_to_numpy(vit(rng.normal(size=(3, 8, 8, 3)).astype("float32"))).shape == (3, 4, 7)


def test_variants():
    assert decode_variant("So400m/14") == dict(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14)
    assert decode_variant("g-opt")["width"] == 1536
    with pytest.raises(ValueError, match="Unknown ViT variant"):
        decode_variant("Z/16")


def test_bad_configs():
    with pytest.raises(ValueError, match="pooling"):
        VisionTransformer(4, 16, 1, 2, 32, grid_size=(2, 2), pooling="cls")
    vit = VisionTransformer(4, 15, 1, 2, 32, grid_size=(2, 2))
    with pytest.raises(ValueError, match="divisible"):
        vit.build((None, 8, 8, 3))
