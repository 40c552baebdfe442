from keras_siglip.models.cappa import (
    CapPaBackbone,
    CapPaCaptioner,
    CapPaPreprocessor,
    LocCaCaptioner,
    LocCaPreprocessor,
)
from keras_siglip.models.lit_decoder import LiTDecoder, LiTDecoderBackbone, LiTDecoderPreprocessor
from keras_siglip.models.pali_gemma import (
    PaliGemmaBackbone,
    PaliGemmaCausalLM,
    PaliGemmaCausalLMPreprocessor,
    PaliGemmaImageConverter,
    PaliGemmaMaskDecoder,
    PaliGemmaTokenizer,
    pali_gemma_parameter_count,
)
from keras_siglip.models.three_towers import (
    ThreeTowersBackbone,
    precompute_third_tower_embeddings,
    three_towers_loss,
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
from keras_siglip.models.siglip2 import ActiveCurationTrainer, SigLIP2Pretrainer
