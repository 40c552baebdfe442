"""A tiny SigLIP2Pretrainer and its inputs: shared by test_siglip2_pretrainer and
the integration scripts siglip2_*.py (not a test module)."""

import keras
import numpy as np

from keras_siglip.models import SigLIP2Pretrainer, SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder

BATCH, VIEWS, TEXT_VOCAB, LOC = 8, 3, 60, 16


def make_inputs(seed=0, batch=BATCH, views=True):
    rng = np.random.default_rng(seed)
    x = {
        "images": rng.uniform(-1, 1, (batch, 32, 32, 3)).astype("float32"),
        "token_ids": rng.integers(2, TEXT_VOCAB, (batch, 8)).astype("int32"),
        "decoder_token_ids": rng.integers(2, TEXT_VOCAB + LOC, (batch, 8)).astype("int32"),
        "tasks": (np.arange(batch) % 3).astype("int32"),
    }
    targets = x["decoder_token_ids"].copy()
    targets[:, :2] = 0  # an unscored prefix
    x["decoder_targets"] = targets
    if views:
        x["global_view"] = rng.uniform(-1, 1, (batch, 32, 32, 3)).astype("float32")
        x["local_views"] = rng.uniform(-1, 1, (batch, VIEWS, 16, 16, 3)).astype("float32")
    return x


def tiny_backbone():
    """One-block towers: stage B compiles four image-tower passes and their gradients."""
    keras.utils.set_random_seed(0)
    vision = SigLIPVisionEncoder(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, image_size=32)
    text = SigLIPTextEncoder(vocabulary_size=TEXT_VOCAB, width=24, depth=2, num_heads=2, mlp_dim=48,
                             sequence_length=8, num_classes=32)
    return SigLIPBackbone(vision, text)


def make_pretrainer(total_steps=8, distillation_start=0.5, compile=True, **kwargs):
    kwargs = {"num_loc_tokens": LOC, "size_factor": 0.5, "num_prototypes": 24, "head_hidden_dim": 16,
              "head_bottleneck_dim": 8, "seed": 3, **kwargs}
    model = SigLIP2Pretrainer(tiny_backbone(), total_steps=total_steps, distillation_start=distillation_start,
                              compile=False, **kwargs)
    if compile:
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model
