from keras_siglip.layers.contrastive import ContrastiveHead, L2Normalize, l2_normalize
from keras_siglip.layers.text import TextTransformer
from keras_siglip.layers.vit import (
    Encoder,
    EncoderBlock,
    MAPHead,
    MlpBlock,
    PositionEmbedding,
    VisionTransformer,
    patchify,
)
from keras_siglip.layers.naflex import NaFlexImageConverter, target_size, target_size_tf
