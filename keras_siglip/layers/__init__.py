from keras_siglip.layers.contrastive import ContrastiveHead, L2Normalize, l2_normalize
from keras_siglip.layers.decoder import DecoderBlock, TextDecoder
from keras_siglip.layers.distillation_head import DistillationHead
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
from keras_siglip.layers.boxes import (
    PALIGEMMA_LOC_OFFSET,
    box_iou,
    boxes_to_ids,
    boxes_to_text,
    decode_boxes,
    encode_box,
    grounding_metrics,
    ids_to_boxes,
)
from keras_siglip.layers.gemma import (
    GemmaAttention,
    GemmaDecoder,
    GemmaDecoderBlock,
    RMSNormalization,
    make_attention_mask,
    prefix_lm_mask,
)
