"""Parameter counts: preset cards, the closed-form `parameter_count`, HF and real models.

Three independent sources must agree: the number written on each published
preset card, `presets.parameter_count(config)` (a formula, nothing built), and
either a `transformers.SiglipModel` of the same architecture (built on the meta
device, no memory) or our own model's `count_params()`.
"""

import os

import pytest

from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder
from keras_siglip.presets import PUBLISHED_PRESETS, parameter_count

NO_TEXT_HEAD_CARD = "siglip_so400m_patch16_256_i18n"


@pytest.mark.parametrize("name", sorted(PUBLISHED_PRESETS))
def test_card_params_match_formula(name):
    """The `params` written on each published card equals `parameter_count` of its config."""
    card = PUBLISHED_PRESETS[name]
    assert card["metadata"]["params"] == parameter_count(card["config"])


def test_exactly_one_card_lacks_a_text_head():
    """Only the mSigLIP So400m/16 i18n checkpoint has no text head (big_vision
    `out_dim=(None, None)`), so the HF comparison below special-cases just that one."""
    headless = [n for n, c in PUBLISHED_PRESETS.items() if not c["config"]["text_encoder"]["num_classes"]]
    assert headless == [NO_TEXT_HEAD_CARD]


@pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND", "jax") != "jax",
    reason="Compares with HF transformers (torch, meta device) only; the result does not "
    "depend on the Keras backend, so it runs once, in the KERAS_BACKEND=jax session.",
)
def test_formula_matches_hf_transformers_on_meta_device():
    """For every published card, an HF `SiglipModel` of the same architecture has
    exactly `parameter_count` parameters; for the head-less i18n card HF adds an
    identity text head of width^2 + width parameters, and exactly that."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tests.hf_reference import hf_config_from_keras

    mismatches = {}
    for name, card in sorted(PUBLISHED_PRESETS.items()):
        config = hf_config_from_keras(card["config"])
        model_class = transformers.Siglip2Model if isinstance(config, transformers.Siglip2Config) else transformers.SiglipModel
        with torch.device("meta"):
            hf_model = model_class(config)
        hf_count = sum(p.numel() for p in hf_model.parameters())
        expected = parameter_count(card["config"])
        if name == NO_TEXT_HEAD_CARD:
            width = card["config"]["text_encoder"]["width"]
            expected += width * width + width
        if hf_count != expected:
            mismatches[name] = (hf_count, expected)
    assert not mismatches, f"HF count != expected: {mismatches}"


TINY_CONFIGS = {
    # Text head maps text width 24 -> image width 32; square image.
    "patch8_square_text_head": {
        "vision_encoder": dict(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, image_size=32),
        "text_encoder": dict(vocabulary_size=100, width=24, depth=1, num_heads=2, mlp_dim=48,
                             sequence_length=8, num_classes=32),
    },
    # Non-square (H, W) = (24, 16): a 6x4 position grid.
    "patch4_non_square_text_head": {
        "vision_encoder": dict(patch_size=4, width=16, depth=2, num_heads=4, mlp_dim=40, image_size=(24, 16)),
        "text_encoder": dict(vocabulary_size=50, width=32, depth=2, num_heads=2, mlp_dim=16,
                             sequence_length=5, num_classes=16),
    },
    # No text head (text width == image width); image size not a multiple of the
    # patch: (20, 27) // 6 -> a 3x4 grid, trailing pixels dropped (VALID conv).
    "patch6_no_text_head": {
        "vision_encoder": dict(patch_size=6, width=24, depth=3, num_heads=3, mlp_dim=32, image_size=(20, 27)),
        "text_encoder": dict(vocabulary_size=30, width=24, depth=1, num_heads=2, mlp_dim=8,
                             sequence_length=4, num_classes=None),
    },
}


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_formula_matches_built_model(name):
    """`parameter_count(config)` equals `count_params()` of the `SigLIPBackbone`
    actually built from that config (so the formula tracks the real layers)."""
    config = TINY_CONFIGS[name]
    model = SigLIPBackbone(
        SigLIPVisionEncoder(**config["vision_encoder"]),
        SigLIPTextEncoder(**config["text_encoder"]),
    )
    assert model.count_params() == parameter_count(config)
    assert len(model.trainable_weights) == len(model.weights)


# Architectures the encoders accept but no published card uses.
OTHER_ARCHITECTURES = {
    "one_channel": ({"num_channels": 1}, {}),
    "gap_pooling": ({"pooling": "gap"}, {}),
    "token_pooling": ({"pooling": "token"}, {}),
    "image_head": ({"num_classes": 32}, {}),
    "text_map_pooling": ({}, {"pooling": "map"}),
}


@pytest.mark.parametrize("name", sorted(OTHER_ARCHITECTURES))
def test_formula_matches_built_model_for_other_architectures(name):
    """`parameter_count` also holds for the non-default options the encoders accept:
    other channel counts, GAP / token pooling, an image head, a text MAP head."""
    vision, text = OTHER_ARCHITECTURES[name]
    base = TINY_CONFIGS["patch8_square_text_head"]
    config = {
        "vision_encoder": {**base["vision_encoder"], **vision},
        "text_encoder": {**base["text_encoder"], **text},
    }
    if vision.get("num_classes"):
        config["text_encoder"]["num_classes"] = vision["num_classes"]
    model = SigLIPBackbone(
        SigLIPVisionEncoder(**config["vision_encoder"]),
        SigLIPTextEncoder(**config["text_encoder"]),
    )
    assert model.count_params() == parameter_count(config)
