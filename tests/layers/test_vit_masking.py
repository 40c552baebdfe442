"""Masked patches (SigLIP 2 stage B, TIPS): the ViT never sees what is masked."""

import numpy as np
import pytest
from keras import ops

from keras_siglip.layers import NaFlexImageConverter, VisionTransformer


@pytest.fixture
def vit(rng):
    vit = VisionTransformer(4, 8, 1, 2, 16, grid_size=(4, 4), pooling="map")
    vit.build((None, 16, 16, 3))
    for v in vit.weights:  # perturb zero biases and unit scales
        v.assign(ops.convert_to_numpy(v) + rng.normal(scale=0.1, size=v.shape).astype("float32"))
    return vit


def run(vit, inputs, mask=None, token=None, **kwargs):
    return ops.convert_to_numpy(vit(inputs, masked_patches=mask, mask_token=token, **kwargs))


def mask_of(rng, batch, n):
    mask = np.zeros((batch, n), bool)
    for row in mask:
        row[rng.choice(n, n // 2, replace=False)] = True
    return mask


def test_images_no_mask_is_the_plain_model_and_masked_pixels_are_unseen(vit, rng):
    images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    token = rng.normal(size=(8,)).astype("float32")
    np.testing.assert_array_equal(run(vit, images, np.zeros((2, 16), bool), token), run(vit, images))
    mask = mask_of(rng, 2, 16)
    masked = run(vit, images, mask, token, return_tokens=True)
    # Repaint every masked 4x4 patch: nothing changes. Repaint one visible patch: the output changes.
    repainted = images.copy()
    for b, i in zip(*np.nonzero(mask)):
        repainted[b, 4 * (i // 4):4 * (i // 4) + 4, 4 * (i % 4):4 * (i % 4) + 4] = rng.uniform(-1, 1, (4, 4, 3))
    np.testing.assert_allclose(run(vit, repainted, mask, token, return_tokens=True), masked, atol=1e-6)
    b, i = np.argwhere(~mask)[0]
    repainted[b, 4 * (i // 4):4 * (i // 4) + 4, 4 * (i % 4):4 * (i % 4) + 4] += 0.5
    assert np.abs(run(vit, repainted, mask, token, return_tokens=True) - masked).max() > 1e-3
    # The token is what the model sees instead, with each patch's position added
    # (iBOT's order): with every patch masked, the tokens still differ by position.
    everything = run(vit, images, np.ones((2, 16), bool), token, return_tokens=True)
    assert np.abs(everything[:, 1:] - everything[:, :1]).max() > 1e-3
    other = token + rng.normal(size=(8,)).astype("float32")  # not a constant shift: LayerNorms remove those
    assert np.abs(run(vit, images, mask, other) - run(vit, images, mask, token)).max() > 1e-3


def test_naflex_inputs_hide_masked_patches_too(vit, rng):
    converter = NaFlexImageConverter(4, 16)
    inputs = converter(rng.integers(0, 256, (2, 16, 12, 3)).astype("uint8"))
    token = rng.normal(size=(8,)).astype("float32")
    mask = mask_of(rng, 2, 16) & ops.convert_to_numpy(inputs["patch_mask"]).astype(bool)
    plain = run(vit, inputs)
    np.testing.assert_array_equal(run(vit, inputs, np.zeros((2, 16), bool), token), plain)
    masked = run(vit, inputs, mask, token)
    patches = ops.convert_to_numpy(inputs["patches"]).copy()
    patches[mask] = rng.uniform(-1, 1, patches[mask].shape)
    np.testing.assert_allclose(run(vit, {**inputs, "patches": patches}, mask, token), masked, atol=1e-6)
    assert np.abs(masked - plain).max() > 1e-3


def test_bad_mask_arguments(vit, rng):
    images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    with pytest.raises(ValueError, match="pass both or neither"):
        vit(images, masked_patches=np.zeros((2, 16), bool))
    with pytest.raises(ValueError, match=r"\(batch, num_patches\) = \(2, 16\)"):
        vit(images, masked_patches=np.zeros((2, 15), bool), mask_token=np.zeros(8, "float32"))
