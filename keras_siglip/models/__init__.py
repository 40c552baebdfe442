from keras_siglip.models.siglip import (
    SigLIPBackbone,
    SigLIPImageConverter,
    SigLIPPreprocessor,
    SigLIPTextEncoder,
    SigLIPTokenizer,
    SigLIPVisionEncoder,
    SigLIPZeroShotClassifier,
)
