from keras_siglip.models.siglip.siglip_backbone import SigLIPBackbone
from keras_siglip.models.siglip.siglip_image_classifier import (
    SigLIPImageClassifier,
    SigLIPImageClassifierPreprocessor,
)
from keras_siglip.models.siglip.siglip_image_converter import SigLIPImageConverter
from keras_siglip.models.siglip.siglip_preprocessor import SigLIPPreprocessor
from keras_siglip.models.siglip.siglip_text_encoder import SigLIPTextEncoder
from keras_siglip.models.siglip.siglip_tokenizer import SigLIPTokenizer
from keras_siglip.models.siglip.siglip_vision_encoder import SigLIPVisionEncoder
from keras_siglip.models.siglip.siglip_zero_shot_classifier import (
    SigLIPZeroShotClassifier,
    class_text_embeddings,
)
from keras_siglip.models.siglip.siglip_presets import register_shipped_presets

register_shipped_presets(SigLIPBackbone)
