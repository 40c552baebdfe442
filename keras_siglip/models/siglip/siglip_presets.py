"""Registers the shipped presets by name and builds published architectures."""

from keras_hub.src.utils.preset_utils import register_presets

from keras_siglip.presets import PUBLISHED_PRESETS, SHIPPED_PRESETS, shipped_metadata


def register_shipped_presets(backbone_cls):
    register_presets(
        {
            name: {"metadata": shipped_metadata(path), "kaggle_handle": path}
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
