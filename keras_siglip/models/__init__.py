from keras_siglip.models.cappa import (
    CapPaBackbone,
    CapPaCaptioner,
    CapPaPreprocessor,
    LocCaCaptioner,
    LocCaPreprocessor,
)
from keras_siglip.models.siglip import (
    SigLIPBackbone,
    SigLIPImageClassifier,
    SigLIPImageClassifierPreprocessor,
    SigLIPImageConverter,
    SigLIPPreprocessor,
    SigLIPTextEncoder,
    SigLIPTokenizer,
    SigLIPVisionEncoder,
    SigLIPZeroShotClassifier,
)
