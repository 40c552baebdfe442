from keras_siglip.models.pali_gemma.pali_gemma_backbone import PaliGemmaBackbone
from keras_siglip.models.pali_gemma.pali_gemma_causal_lm import PaliGemmaCausalLM, PrefixLMLoss
from keras_siglip.models.pali_gemma.pali_gemma_causal_lm_preprocessor import PaliGemmaCausalLMPreprocessor
from keras_siglip.models.pali_gemma.pali_gemma_image_converter import PaliGemmaImageConverter
from keras_siglip.models.pali_gemma.pali_gemma_outputs import Detections, detections_to_text, parse_detections
from keras_siglip.models.pali_gemma.pali_gemma_tokenizer import PaliGemmaTokenizer
from keras_siglip.models.pali_gemma.pali_gemma_segmentation import (
    PaliGemmaMaskDecoder,
    load_mask_decoder,
    parse_segmentation,
    parse_segmentation_tokens,
    paste_mask,
)
from keras_siglip.models.pali_gemma.pali_gemma_tasks import (
    answer_prompt,
    caption_prompt,
    detect_prompt,
    ocr_prompt,
    parse_detect,
    parse_segment,
    parse_text,
    question_prompt,
    segment_prompt,
)
from keras_siglip.presets.pali_gemma import pali_gemma_parameter_count
