import keras

from keras_siglip.models.pali_gemma.pali_gemma_backbone import PaliGemmaBackbone
from keras_siglip.models.siglip.siglip_image_converter import SigLIPImageConverter


@keras.saving.register_keras_serializable(package="keras_siglip")
class PaliGemmaImageConverter(SigLIPImageConverter):
    """Resize to the backbone's `image_size` and map [0, 255] to [-1, 1].

    SigLIP's converter (squash resize, `x / 127.5 - 1`; bilinear without
    antialias is big_vision's `resize(RES)`), registered for PaliGemma presets.
    Inputs are raw images, uint8 or float in [0, 255], checked as
    `SigLIPImageConverter` checks them ([0, 1] floats, out-of-range values and
    NaN / inf raise when called eagerly).
    """

    backbone_cls = PaliGemmaBackbone
