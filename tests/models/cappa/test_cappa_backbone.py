"""CapPaBackbone: ViT encoder tokens into the TextDecoder, config, counts, saving."""


import keras
import numpy as np
import pytest

from keras_siglip.models import CapPaBackbone
from keras_siglip.models.cappa import cappa_parameter_count
from tests.helpers import numpy

TINY = dict(
    vocabulary_size=20, patch_size=8, width=16, depth=2, num_heads=2, mlp_dim=32,
    image_size=32, max_length=8, decoder_depth=1,
)


def tiny(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return CapPaBackbone(**{**TINY, **overrides})


def randomize(model, rng):
    """Random values everywhere, the zero-initialised logits Dense included."""
    for weight in model.weights:
        scale = 1.0 if "embedding" in weight.path else 0.2
        weight.assign((scale * rng.normal(size=tuple(weight.shape))).astype("float32"))


def inputs(rng, batch=2, length=8, size=32):
    return {
        "images": rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32"),
        "token_ids": rng.integers(1, TINY["vocabulary_size"], (batch, length)).astype("int32"),
    }


def test_logits_are_zero_at_init_and_equal_encoder_then_decoder(rng):
    model = tiny()
    x = inputs(rng)
    logits = numpy(model(x))
    assert logits.shape == (2, 8, 20) and not np.any(logits)
    randomize(model, rng)
    encoded = model.encode_images(x["images"])
    assert tuple(encoded.shape) == (2, 16, 16)  # 4x4 patches, width 16, no pooling
    np.testing.assert_allclose(numpy(encoded), numpy(model.vit.encode_tokens(x["images"])), atol=1e-6)
    expected = numpy(model.decoder(x["token_ids"], encoded))
    np.testing.assert_allclose(numpy(model(x)), expected, atol=1e-5)
    assert np.abs(expected).max() > 0.1
    # Shorter texts use the first rows of the position table.
    short = numpy(model({"images": x["images"], "token_ids": x["token_ids"][:, :5]}))
    np.testing.assert_allclose(short, expected[:, :5], atol=1e-5)


def test_decoder_sizes_inherit_from_the_encoder():
    """big_vision's convention: 0 means the encoder's width / depth / heads / MLP."""
    model = tiny(decoder_depth=0)
    decoder = model.decoder
    assert (decoder.width, decoder.depth, decoder.num_heads, decoder.mlp_dim) == (16, 2, 2, 32)
    assert decoder.masked_pred and decoder.token_embedding.input_dim == 21
    assert not decoder.use_bias and decoder.blocks[0].norm_1.beta is None
    model = tiny(
        decoder_width=8, decoder_num_heads=4, decoder_mlp_dim=12, masked_pred=False, decoder_bias=True
    )
    decoder = model.decoder
    assert (decoder.width, decoder.depth, decoder.num_heads, decoder.mlp_dim) == (8, 1, 4, 12)
    assert decoder.token_embedding.input_dim == 20 and decoder.blocks[0].norm_1.beta is not None
    # Cross-attention keys/values project the encoder width (16) to the decoder heads.
    assert tuple(decoder.blocks[0].cross_attention._key_dense.kernel.shape) == (16, 4, 2)


@pytest.mark.parametrize(
    "overrides, hand_count",
    [
        # Encoder: patch kernel 8*8*3*16 + 16 = 3088; positions 4*4*16 = 256;
        # per block LN 2*32 + attention 4*(16*16+16) + MLP 16*32+32+32*16+16 = 64+1088+1072 = 2224,
        # x2 = 4448; encoder_norm 32 -> 7824.
        # Decoder (16 wide, 1 block, 2 heads, MLP 32, no biases): tokens 21*16 = 336;
        # positions 8*16 = 128; block LN 3*16 + self 4*256 + cross 4*256 + MLP 2*16*32
        # = 48+1024+1024+1024 = 3120; final LN 32; logits 16*20+20 = 340 -> 3956.
        (dict(), 7824 + 3956),
        # Decoder 8 wide, 4 heads, MLP 12, biases, no [MASK]: tokens 20*8 = 160;
        # positions 64; block LN 3*16 + self 4*64 + cross (64+64+16*8*2) + MLP 8*12+12+12*8+8
        # = 48+256+384+212 = 900; final LN 16; logits 8*20+20 = 180 -> 1320.
        (dict(decoder_width=8, decoder_num_heads=4, decoder_mlp_dim=12, masked_pred=False,
              decoder_bias=True), 7824 + 1320),
    ],
)
def test_parameter_count_formula_matches_hand_count_and_model(overrides, hand_count):
    model = tiny(**overrides)
    assert cappa_parameter_count(model.get_config()) == hand_count
    assert model.count_params() == hand_count


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="a count, the same on every backend")
def test_recipe_card_builds_the_cappa_b16_recipe():
    from keras_siglip.presets import recipe_presets

    card = recipe_presets()["cappa_base_patch16_224"]
    backbone = CapPaBackbone.from_preset("cappa_base_patch16_224", load_weights=False)
    # Hand count: B/16 encoder at 224 (no head) + 6 blocks of width 768 + embeddings
    # (32k + [MASK]), 64 positions, final LayerNorm and the 32k logits layer.
    encoder = (16 * 16 * 3 + 1) * 768 + 196 * 768 + 12 * (4 * (768 * 768 + 768) + 2 * 768 * 3072 + 3072 + 768 + 4 * 768) + 2 * 768
    decoder = 32_001 * 768 + 64 * 768 + 6 * (8 * 768 * 768 + 2 * 768 * 3072 + 3 * 768) + 2 * 768 + 769 * 32_000
    assert backbone.count_params() == card["metadata"]["params"] == encoder + decoder == 191_669_504
    assert backbone.decoder.depth == 6 and backbone.decoder.masked_pred and not backbone.decoder_bias
    with pytest.raises(ValueError, match="no weights exist"):
        CapPaBackbone.from_preset("cappa_base_patch16_224")
