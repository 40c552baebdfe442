"""Tiny keras-hub PaliGemma configs (Gemma 1 and 2) and their inputs: shared by
test_keras_hub_pali_gemma and test_export_keras_hub (not a test module)."""

import numpy as np
from keras import ops

VOCAB, IMAGE, PATCH = 64, 16, 8  # 4 image tokens
BASE = dict(
    vocabulary_size=VOCAB, image_size=IMAGE, num_layers=2, num_query_heads=4, num_key_value_heads=2,
    hidden_dim=32, intermediate_dim=48, head_dim=6, vit_patch_size=PATCH, vit_num_heads=2,
    vit_hidden_dim=16, vit_num_layers=2, vit_intermediate_dim=24,
)
CONFIGS = {
    "gemma1": {},  # head_dim 6 != hidden_dim / heads = 8: the query scale shows
    # Small caps so that they matter; a window of 9 cuts the 16-token sequences
    # (4 image + 12 text) but holds image + prompt (8), where keras-hub and ours agree.
    "gemma2": dict(
        query_head_dim_normalize=False, use_post_ffw_norm=True, use_post_attention_norm=True,
        attention_logit_soft_cap=2.0, final_logit_soft_cap=3.0, use_sliding_window_attention=True,
        sliding_window_size=9,
    ),
}


def inputs(rng, length=12):
    """Two rows: prefix 4, suffix 6, 2 pads; prefix 3, suffix 9."""
    token_ids = rng.integers(2, VOCAB, (2, length)).astype("int32")
    padding = np.ones((2, length), "int32")
    padding[0, 10:] = 0
    token_ids[0, 10:] = 0
    response = np.zeros((2, length), "int32")
    response[0, 4:10] = 1
    response[1, 3:] = 1
    return {"images": rng.uniform(-1, 1, (2, IMAGE, IMAGE, 3)).astype("float32"), "token_ids": token_ids,
            "padding_mask": padding, "response_mask": response}


def keras_hub_logits(backbone, x):
    hidden = backbone(x)
    return ops.convert_to_numpy(backbone.token_embedding(hidden, reverse=True))[:, backbone.image_sequence_length:]
