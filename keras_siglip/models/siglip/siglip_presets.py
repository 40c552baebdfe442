"""Registers the shipped presets by name and builds published architectures."""

import json
import os

from keras_hub.src.utils.preset_utils import register_presets

from keras_siglip.presets import PUBLISHED_PRESETS, SHIPPED_PRESETS


def _shipped_metadata(path):
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


def register_shipped_presets(backbone_cls):
    register_presets(
        {
            name: {"metadata": _shipped_metadata(path), "kaggle_handle": path}
            for name, path in SHIPPED_PRESETS.items()
        },
        backbone_cls,
    )


def published_backbone(backbone_cls, name, **kwargs):
    """A randomly initialised backbone with a published checkpoint's architecture."""
    from keras_siglip.models.siglip.siglip_text_encoder import SigLIPTextEncoder
    from keras_siglip.models.siglip.siglip_vision_encoder import SigLIPVisionEncoder

    config = PUBLISHED_PRESETS[name]["config"]
    dtype = kwargs.pop("dtype", None)
    return backbone_cls(
        SigLIPVisionEncoder(**config["vision_encoder"], dtype=dtype),
        SigLIPTextEncoder(**config["text_encoder"], dtype=dtype),
        dtype=dtype,
        **kwargs,
    )
