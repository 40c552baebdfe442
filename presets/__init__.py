"""Preset cards: every published SigLIP / SigLIP 2 checkpoint, and the shipped presets.

A card gives the architecture (`config`, enough to build the model with random
weights), the parameter count of that architecture, and where the published
weights live: the keras-hub Kaggle handle, the Hugging Face repo id and the
big_vision file. Shipped presets (trained here, a few MB) live in folders beside
this file and load offline by name.
"""

import functools
import json
import os

from keras_siglip.presets.variants import decode_variant
from keras_siglip.presets.siglip2_recipes import RECIPES, recipe_card

PRESETS_DIR = os.path.dirname(os.path.abspath(__file__))

# vocabulary -> (tokenizer name, pad token)
VOCABULARIES = {
    32_000: ("T5 SentencePiece cc_en.32000 (big_vision c4_en)", "</s>"),
    250_000: ("mT5 SentencePiece mc4.250000.100extra (big_vision mc4)", "</s>"),
    256_000: ("Gemma SentencePiece", "<pad>"),
}


def siglip_config(image_variant, image_size, text_variant, vocabulary_size, sequence_length=64, text_head=True):
    """The `SigLIPBackbone` config of a released checkpoint (big_vision two_towers)."""
    image = decode_variant(image_variant)
    text = decode_variant(text_variant)
    return {
        "vision_encoder": {**image, "image_size": image_size, "pooling": "map"},
        "text_encoder": {
            **text,
            "vocabulary_size": vocabulary_size,
            "sequence_length": sequence_length,
            "pooling": "last",
            # The text head maps to the image width (the embedding size).
            "num_classes": image["width"] if text_head else None,
        },
    }


def parameter_count(config):
    """Trainable parameters of a `SigLIPBackbone` config, without building it."""

    def encoder(width, depth, mlp_dim):
        attention = 4 * (width * width + width)
        mlp = 2 * width * mlp_dim + mlp_dim + width
        return depth * (attention + mlp + 4 * width) + 2 * width

    def map_head(width, mlp_dim):
        return width + 4 * (width * width + width) + 2 * width + 2 * width * mlp_dim + mlp_dim + width

    v, t = config["vision_encoder"], config["text_encoder"]
    size = v["image_size"]
    h, w = (size, size) if isinstance(size, int) else size
    grid = (h // v["patch_size"]) * (w // v["patch_size"])
    vision = (v["patch_size"] ** 2 * v.get("num_channels", 3) + 1) * v["width"] + grid * v["width"]
    vision += encoder(v["width"], v["depth"], v["mlp_dim"])
    pooling = v.get("pooling", "map")
    if pooling == "map":
        vision += map_head(v["width"], v["mlp_dim"])
    elif pooling == "token":
        vision += v["width"]  # the class token
    if v.get("num_classes"):
        vision += (v["width"] + 1) * v["num_classes"]
    text = (t["vocabulary_size"] + t["sequence_length"]) * t["width"]
    text += encoder(t["width"], t["depth"], t["mlp_dim"])
    if t.get("pooling", "last") == "map":
        text += map_head(t["width"], t["mlp_dim"])
    if t.get("num_classes"):
        text += (t["width"] + 1) * t["num_classes"]
    return vision + text + 2  # + log-temperature t and bias b


def _card(family, description, config, hf, kaggle, big_vision, params):
    vocabulary = config["text_encoder"]["vocabulary_size"]
    return {
        "metadata": {
            "family": family,
            "description": description,
            "params": params,
            "image_size": config["vision_encoder"]["image_size"],
            "tokenizer": VOCABULARIES[vocabulary][0],
            "pad_token": VOCABULARIES[vocabulary][1],
        },
        "config": config,
        "sources": {k: v for k, v in {"huggingface": hf, "kaggle": kaggle, "big_vision": big_vision}.items() if v},
    }


def _published():
    cards = {}
    bv1 = "gs://big_vision/siglip/"
    kaggle = "kaggle://keras/siglip/keras/{}/1"
    # name: (image variant, res, text variant, vocab, text length, text head, HF id, bv file, params)
    siglip1 = {
        "siglip_base_patch16_224": ("B/16", 224, "B", 32_000, 64, True, "google/siglip-base-patch16-224", "webli_en_b16_224_63724782.npz", 203_155_970),
        "siglip_base_patch16_256": ("B/16", 256, "B", 32_000, 64, True, "google/siglip-base-patch16-256", "webli_en_b16_256_60500360.npz", 203_202_050),
        "siglip_base_patch16_384": ("B/16", 384, "B", 32_000, 64, True, "google/siglip-base-patch16-384", "webli_en_b16_384_68578854.npz", 203_447_810),
        "siglip_base_patch16_512": ("B/16", 512, "B", 32_000, 64, True, "google/siglip-base-patch16-512", "webli_en_b16_512_68580893.npz", 203_791_874),
        "siglip_large_patch16_256": ("L/16", 256, "L", 32_000, 64, True, "google/siglip-large-patch16-256", "webli_en_l16_256_60552751.npz", 652_150_786),
        "siglip_large_patch16_384": ("L/16", 384, "L", 32_000, 64, True, "google/siglip-large-patch16-384", "webli_en_l16_384_63634585.npz", 652_478_466),
        "siglip_so400m_patch14_224": ("So400m/14", 224, "So400m", 32_000, 16, True, "google/siglip-so400m-patch14-224", "webli_en_so400m_224_57633886.npz", 877_360_306),
        "siglip_so400m_patch14_384": ("So400m/14", 384, "So400m", 32_000, 64, True, "google/siglip-so400m-patch14-384", "webli_en_so400m_384_58765454.npz", 877_960_498),
        "siglip_base_patch16_256_i18n": ("B/16", 256, "B", 250_000, 64, True, "google/siglip-base-patch16-256-multilingual", "webli_i18n_b16_256_66117334.npz", 370_626_050),
        "siglip_so400m_patch16_256_i18n": ("So400m/16", 256, "So400m", 250_000, 64, False, "google/siglip-so400m-patch16-256-i18n", "webli_i18n_so400m_16_256_78061115.npz", 1_127_430_706),
    }
    kaggle_names = {"siglip_base_patch16_256_i18n": "siglip_base_patch16_256_multilingual"}
    for name, (iv, res, tv, vocab, length, head, hf, bv, params) in siglip1.items():
        config = siglip_config(iv, res, tv, vocab, length, head)
        desc = f"SigLIP {iv} at {res}px, {vocab // 1000}k vocabulary"
        if not head:
            # The big_vision checkpoint has no text head; the HF and keras-hub
            # ports add an identity Dense (width^2 + width more parameters).
            desc += ", no text head"
        cards[name] = _card("SigLIP", desc, config, hf, kaggle.format(kaggle_names.get(name, name)), bv1 + bv, params)
    siglip2 = {
        "siglip2_base_patch32_256": ("B/32", 256, "B", "b32", 376_856_066),
        "siglip2_base_patch16_224": ("B/16", 224, "B", "b16", 375_187_970),
        "siglip2_base_patch16_256": ("B/16", 256, "B", "b16", 375_234_050),
        "siglip2_base_patch16_384": ("B/16", 384, "B", "b16", 375_479_810),
        "siglip2_base_patch16_512": ("B/16", 512, "B", "b16", 375_823_874),
        "siglip2_large_patch16_256": ("L/16", 256, "L", "l16", 881_526_786),
        "siglip2_large_patch16_384": ("L/16", 384, "L", "l16", 881_854_466),
        "siglip2_large_patch16_512": ("L/16", 512, "L", "l16", 882_313_218),
        "siglip2_so400m_patch14_224": ("So400m/14", 224, "So400m", "so400m14", 1_135_463_602),
        "siglip2_so400m_patch14_384": ("So400m/14", 384, "So400m", "so400m14", 1_136_008_498),
        "siglip2_so400m_patch16_256": ("So400m/16", 256, "So400m", "so400m16", 1_135_670_962),
        "siglip2_so400m_patch16_384": ("So400m/16", 384, "So400m", "so400m16", 1_136_039_602),
        "siglip2_so400m_patch16_512": ("So400m/16", 512, "So400m", "so400m16", 1_136_555_698),
        "siglip2_giant_opt_patch16_256": ("g-opt/16", 256, "So400m", "g-opt16", 1_871_393_906),
        "siglip2_giant_opt_patch16_384": ("g-opt/16", 384, "So400m", "g-opt16", 1_871_885_426),
    }
    for name, (iv, res, tv, tag, params) in siglip2.items():
        config = siglip_config(iv, res, tv, 256_000)
        hf = "google/" + name.replace("_", "-")
        desc = f"SigLIP 2 {iv} at {res}px, Gemma 256k vocabulary"
        bv = f"gs://big_vision/siglip2/siglip2_{tag}_{res}.npz"
        cards[name] = _card("SigLIP 2", desc, config, hf, kaggle.format(name), bv, params)
    # NaFlex: a 16x16 learned position grid resized per image; the sequence
    # length (256 in the paper's numbers, trained up to 1024) is chosen per call.
    # keras-hub has no NaFlex checkpoints.
    naflex = {
        "siglip2_base_patch16_naflex": ("B/16", "B", "b16", 375_234_050),
        "siglip2_so400m_patch16_naflex": ("So400m/16", "So400m", "so400m16", 1_135_670_962),
    }
    for name, (iv, tv, tag, params) in naflex.items():
        config = siglip_config(iv, 256, tv, 256_000)
        config["vision_encoder"]["input_format"] = "naflex"
        hf = "google/" + name.replace("_", "-")
        desc = f"SigLIP 2 NaFlex {iv}, native aspect ratio, Gemma 256k vocabulary"
        bv = f"gs://big_vision/siglip2/siglip2_{tag}_naflex.npz"
        cards[name] = _card("SigLIP 2 NaFlex", desc, config, hf, None, bv, params)
    return cards


PUBLISHED_PRESETS = _published()


def cappa_parameter_count(config):
    """Trainable parameters of a `CapPaBackbone` config, without building it."""
    p, c, w = config["patch_size"], config.get("num_channels", 3), config["width"]
    size = config.get("image_size", 224)
    h, ww = (size, size) if isinstance(size, int) else size
    m = config["mlp_dim"]
    vision = (p * p * c + 1) * w + (h // p) * (ww // p) * w
    vision += config["depth"] * (4 * (w * w + w) + 2 * w * m + m + w + 4 * w) + 2 * w

    e = config.get("decoder_width") or w
    dm = config.get("decoder_mlp_dim") or m
    depth = config.get("decoder_depth") or config["depth"]
    vocab = config["vocabulary_size"]
    bias = bool(config.get("decoder_bias", False))
    embeddings = (vocab + int(config.get("masked_pred", True))) * e
    embeddings += config.get("max_length", 64) * e
    self_attention = 4 * e * e
    cross_attention = 2 * e * e + 2 * w * e  # query, output; keys, values from width w
    norms = 3 * e * (2 if bias else 1)
    mlp = 2 * e * dm + (dm + e if bias else 0)
    block = self_attention + cross_attention + norms + mlp
    decoder = embeddings + depth * block + 2 * e + (e + 1) * vocab
    return vision + decoder


@functools.lru_cache(maxsize=None)
def recipe_presets():
    """Cards of papers' recipes whose weights were never published: name ->
    {"metadata", "config", "sources"}; `CapPaBackbone.from_preset(name,
    load_weights=False)` builds them with random weights."""
    def cappa(variant, vocabulary, decoder):
        encoder = decode_variant(variant)
        return {**encoder, "image_size": 224, "vocabulary_size": vocabulary, "max_length": 64,
                "masked_pred": True, "decoder_bias": False, **decoder}

    cards = {
        "cappa_base_patch16_224": (
            "CapPa", "CapPa B/16 recipe (big_vision configs/proj/cappa/pretrain.py): B/16 encoder at "
            "224px, 6-block decoder inheriting the encoder's width, heads and MLP, c4_en 32k vocabulary, "
            "texts of 64, masked_pred_prob 0.75, no decoder biases",
            cappa("B/16", 32_000, {"decoder_depth": 6}),
            "big_vision configs/proj/cappa/pretrain.py (no released weights)",
        ),
        "locca_large_patch14_224": (
            "LocCa", "LocCa L/14 as described by the paper's secondary sources (L/14 encoder, 12-block "
            "Transformer-L decoder); vocabulary: c4_en 32k + 1024 location tokens (our choice: the paper "
            "writes boxes as text); masked_pred_prob 0.5 on captions",
            cappa("L/14", 32_000 + 1024, {"decoder_depth": 12}),
            "LocCa, Wan et al. 2024 (no released weights or code)",
        ),
    }
    return {
        name: {
            "metadata": {"family": family, "description": description,
                         "params": cappa_parameter_count(config), "image_size": 224},
            "config": config,
            "sources": {"recipe": source},
        }
        for name, (family, description, config, source) in cards.items()
    }

def pali_gemma_presets():
    """Cards of the published PaliGemma 1 (3B) and PaliGemma 2 (3B, 10B, 28B)
    pretrained checkpoints at 224, 448 and 896 px: name -> {"metadata",
    "config", "sources"} (`PaliGemmaBackbone` config, parameter count, Hugging
    Face / Kaggle / big_vision locations). `PaliGemmaBackbone.from_preset(name,
    load_weights=False)` builds one with random weights; the weights are
    converted from the sources (`keras-siglip convert`). Also importable as
    `keras_siglip.presets.PALI_GEMMA_PRESETS`."""
    from keras_siglip.presets.pali_gemma import PALI_GEMMA_PRESETS

    return PALI_GEMMA_PRESETS


def list_presets():
    """Every preset name this package knows, by section (what `keras-siglip
    presets` prints): `{"shipped": {name: folder}, "published": SigLIP cards,
    "pali_gemma": PaliGemma cards, "recipes": recipe cards, "siglip2_training":
    the SigLIP 2 training recipe per size (`SigLIP2Pretrainer`)}`."""
    return {
        "shipped": dict(SHIPPED_PRESETS),
        "published": dict(PUBLISHED_PRESETS),
        "pali_gemma": dict(pali_gemma_presets()),
        "recipes": dict(recipe_presets()),
        "siglip2_training": {size: recipe_card(size) for size in RECIPES},
    }


def __getattr__(name):
    # PALI_GEMMA_PRESETS is built on first use: the cards import the model package.
    if name == "PALI_GEMMA_PRESETS":
        return pali_gemma_presets()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def shipped_metadata(path):
    """A shipped preset's card (`card.json`): description, parameter count,
    zero-shot accuracy; read without importing a framework."""
    card_path = os.path.join(path, "card.json")
    card = {}
    if os.path.exists(card_path):
        with open(card_path) as f:
            card = json.load(f)
    return {
        "description": card.get("description", ""),
        "params": card.get("params"),
        "zero_shot_accuracy": card.get("zero_shot_accuracy"),
        "path": "siglip",
    }


# Presets trained and shipped with the package: name -> folder beside this file.
SHIPPED_PRESETS = {
    name: os.path.join(PRESETS_DIR, name)
    for name in sorted(os.listdir(PRESETS_DIR))
    if os.path.isfile(os.path.join(PRESETS_DIR, name, "config.json"))
}
