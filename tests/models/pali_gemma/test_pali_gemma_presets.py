"""PaliGemma preset cards: parameter counts checked against transformers.

Each card's count (computed from its config) must equal the parameters of
`transformers.PaliGemmaForConditionalGeneration` built on the meta device (no
memory, no download) from the HF configs of the released checkpoints (HF's
PaliGemma / PaliGemma 2 conversion scripts; tied output embedding counted once),
and the published counts: 2,923,335,408 for paligemma-3b-pt-224 (HF model card);
the others are what HF builds, and agree with keras-hub's preset metadata except
28B at 448 and 896 px, where keras-hub repeats the 224 px count. The mix and
ft-docci cards share the architecture (and count) of the pt card of their size
and resolution.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from keras_siglip.models.pali_gemma import pali_gemma_parameter_count  # noqa: E402
from keras_siglip.presets.pali_gemma import PALI_GEMMA_PRESETS  # noqa: E402

PUBLISHED = {
    "paligemma_3b_pt_224": 2_923_335_408,
    "paligemma_3b_pt_448": 2_924_220_144,
    "paligemma_3b_pt_896": 2_927_759_088,
    "paligemma2_3b_pt_224": 3_032_094_960,
    "paligemma2_3b_pt_448": 3_032_979_696,
    "paligemma2_3b_pt_896": 3_036_518_640,
    "paligemma2_10b_pt_224": 9_662_409_456,
    "paligemma2_10b_pt_448": 9_663_294_192,
    "paligemma2_10b_pt_896": 9_666_833_136,
    "paligemma2_28b_pt_224": 27_650_192_112,
    "paligemma2_28b_pt_448": 27_651_076_848,
    "paligemma2_28b_pt_896": 27_654_615_792,
}
# mix and ft-docci: the architecture of the pt checkpoint of their size and resolution.
PUBLISHED.update({f"paligemma2_{s}_mix_{r}": PUBLISHED[f"paligemma2_{s}_pt_{r}"] for s in ("3b", "10b", "28b")
                  for r in (224, 448)})
PUBLISHED.update({f"paligemma2_{s}_ft_docci_448": PUBLISHED[f"paligemma2_{s}_pt_448"] for s in ("3b", "10b")})


def hf_config(config):
    """The HF `PaliGemmaConfig` of a released checkpoint with our card's sizes."""
    gemma2 = config.get("use_post_norms", False)
    text = dict(
        model_type="gemma2" if gemma2 else "gemma",
        vocab_size=config["vocabulary_size"],
        hidden_size=config["hidden_dim"],
        intermediate_size=config["intermediate_dim"],
        num_hidden_layers=config["num_layers"],
        num_attention_heads=config["num_query_heads"],
        num_key_value_heads=config["num_key_value_heads"],
        head_dim=config["head_dim"],
    )
    if gemma2:
        text.update(query_pre_attn_scalar=config["query_pre_attn_scalar"], sliding_window=4096,
                    attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    vision = dict(
        model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
        num_attention_heads=16, patch_size=14, image_size=config["image_size"], vision_use_head=False,
    )
    return transformers.PaliGemmaConfig(
        vision_config=vision, text_config=text, projection_dim=config["hidden_dim"],
        image_token_index=config["vocabulary_size"], vocab_size=config["vocabulary_size"],
    )


def test_cards_cover_every_release():
    assert sorted(PALI_GEMMA_PRESETS) == sorted(PUBLISHED)
    for name, card in PALI_GEMMA_PRESETS.items():
        assert card["metadata"]["params"] == pali_gemma_parameter_count(card["config"]) == PUBLISHED[name], name
        variant = card["metadata"]["variant"]
        assert card["sources"]["huggingface"].endswith(f"-{variant}-{card['config']['image_size']}"), name


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_transformers(name):
    config = PALI_GEMMA_PRESETS[name]["config"]
    with torch.device("meta"):
        model = transformers.PaliGemmaForConditionalGeneration(hf_config(config))
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied: counted once
    count = sum(p.numel() for p in model.parameters())
    assert count == pali_gemma_parameter_count(config) == PUBLISHED[name]
