"""Benchmark configurations and the three implementations holding the same weights.

`build_trio(config_name)` builds our `SigLIPBackbone`, keras-hub's
`SigLIPBackbone` and (optionally) a Hugging Face `transformers.SiglipModel`, all
carrying one set of weights:

    HF random init --copy_hf_to_keras--> ours --copy_ours_to_keras_hub--> keras-hub

(without HF, ours keeps its own Keras random init). Callers then verify that the
outputs agree before timing anything.

Import only inside a worker process, after `KERAS_BACKEND` is set.
"""

import copy
import pathlib
import sys

import numpy as np

from keras_siglip.presets import PUBLISHED_PRESETS

# Text length of the tiny and fit configs; the B/16 tower has its own (64).
CONFIGS = {
    # A tiny two-tower model: overhead-dominated, shows per-op/dispatch costs.
    "tiny": {
        "vision_encoder": dict(patch_size=8, width=64, depth=2, num_heads=2, mlp_dim=128,
                               image_size=64, pooling="map"),
        "text_encoder": dict(vocabulary_size=1000, width=64, depth=2, num_heads=2, mlp_dim=128,
                             sequence_length=16, pooling="last", num_classes=64),
    },
    # SigLIP B/16 at 224 px, 32k vocabulary: the released siglip_base_patch16_224 architecture.
    "B/16": PUBLISHED_PRESETS["siglip_base_patch16_224"]["config"],
    # Between tiny and base, for the fit step: width 256, depth 4, 64 px (64 patches), text length 16.
    "w256-d4": {
        "vision_encoder": dict(patch_size=8, width=256, depth=4, num_heads=4, mlp_dim=1024,
                               image_size=64, pooling="map"),
        "text_encoder": dict(vocabulary_size=32000, width=256, depth=4, num_heads=4, mlp_dim=1024,
                             sequence_length=16, pooling="last", num_classes=256),
    },
}


def _tests_dir():
    return str(pathlib.Path(__file__).resolve().parents[1] / "tests")


def hf_reference():
    """The test-local HF <-> ours helpers (`tests/hf_reference.py`)."""
    if _tests_dir() not in sys.path:
        sys.path.insert(0, _tests_dir())
    import hf_reference

    return hf_reference


def build_ours(config):
    from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder

    return SigLIPBackbone(
        SigLIPVisionEncoder(**config["vision_encoder"]),
        SigLIPTextEncoder(**config["text_encoder"]),
    )


def build_keras_hub(config):
    import keras_hub

    v, t = config["vision_encoder"], config["text_encoder"]
    size = v["image_size"]
    return keras_hub.models.SigLIPBackbone(
        keras_hub.models.SigLIPVisionEncoder(
            patch_size=v["patch_size"], hidden_dim=v["width"], num_layers=v["depth"],
            num_heads=v["num_heads"], intermediate_dim=v["mlp_dim"],
            image_shape=(size, size, v.get("num_channels", 3)),
        ),
        keras_hub.models.SigLIPTextEncoder(
            vocabulary_size=t["vocabulary_size"], embedding_dim=t["width"], hidden_dim=t["width"],
            num_layers=t["depth"], num_heads=t["num_heads"], intermediate_dim=t["mlp_dim"],
            max_sequence_length=t["sequence_length"], projection_dim=t.get("num_classes"),
        ),
    )


def build_hf(config, seed=0):
    """A random `transformers.SiglipModel` (HF's own init) in eval mode, float32."""
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_config = hf_reference().hf_config_from_keras(config)
    return transformers.SiglipModel(hf_config).float().eval()


def copy_hf_to_ours(hf_model, ours):
    hf_reference().copy_hf_to_keras(hf_model, ours)


def copy_ours_to_keras_hub(ours, keras_hub_backbone):
    """Inverse of `keras_siglip.convert.keras_hub_weights`: our weights into keras-hub.

    Uses the converter's own renaming (one source of truth for the map), then
    checks that every one of our weights was used exactly once and that
    `keras_hub_weights` gives back exactly what we put in.
    """
    from keras import ops

    from keras_siglip.convert import keras_hub_weights
    from keras_siglip.convert.keras_hub import _rename

    ours_values = {v.path: ops.convert_to_numpy(v) for v in ours.weights}
    used = []
    for tower, model in (("vision", keras_hub_backbone.vision_encoder),
                         ("text", keras_hub_backbone.text_encoder)):
        for variable in model.weights:
            path = _rename(variable.path, tower)
            if path is None:  # keras-hub's integer position_ids
                continue
            variable.assign(np.reshape(ours_values[path], variable.shape))
            used.append(path)
    head = {"siglip_head/logit_scale": "contrastive_head/log_temperature",
            "siglip_head/logit_bias": "contrastive_head/bias"}
    for variable in keras_hub_backbone.weights:
        if variable.path in head:
            path = head[variable.path]
            variable.assign(np.reshape(ours_values[path], variable.shape))
            used.append(path)
    if sorted(used) != sorted(ours_values):
        missing = sorted(set(ours_values) - set(used))
        twice = sorted({p for p in used if used.count(p) > 1})
        raise AssertionError(f"keras-hub copy: unused {missing}, used twice {twice}")
    back = keras_hub_weights(keras_hub_backbone)
    for path, value in ours_values.items():
        if not np.array_equal(np.reshape(back[path], value.shape), value):
            raise AssertionError(f"keras-hub copy did not round-trip {path}")


def naflex_config(config_name):
    """The NaFlex twin of a config: the same towers taking patches; B/16 gets the
    released NaFlex 16x16 position grid."""
    config = copy.deepcopy(CONFIGS[config_name])
    config["vision_encoder"]["input_format"] = "naflex"
    if config_name == "B/16":
        config["vision_encoder"]["image_size"] = 256
    return config


def build_naflex_pair(config_name, seed=0):
    """`{"ours": NaFlex SigLIPBackbone, "hf": transformers.Siglip2Model}`, same weights."""
    import keras
    import torch
    import transformers

    config = naflex_config(config_name)
    keras.utils.set_random_seed(seed)
    torch.manual_seed(seed)
    hf = transformers.Siglip2Model(hf_reference().hf_config_from_keras(config)).float().eval()
    ours = build_ours(config)
    copy_hf_to_ours(hf, ours)
    return {"ours": ours, "hf": hf}


def build_trio(config_name, with_keras_hub=True, with_hf=True, seed=0):
    """`{"ours": ..., "keras-hub": ..., "hf": ...}` with identical weights."""
    import keras

    config = CONFIGS[config_name]
    keras.utils.set_random_seed(seed)
    models = {"ours": build_ours(config)}
    if with_hf:
        models["hf"] = build_hf(config, seed)
        copy_hf_to_ours(models["hf"], models["ours"])
    if with_keras_hub:
        models["keras-hub"] = build_keras_hub(config)
        copy_ours_to_keras_hub(models["ours"], models["keras-hub"])
    return models


# ---------------------------------------------------------------------------
# Analytic FLOPs: 2*M*N*K for every matmul (projections, QK^T, AV, MLP, patch
# embedding, MAP head, text head). Elementwise work (LayerNorm, softmax, GELU,
# adds) is not counted.

def _encoder_flops(tokens, width, depth, mlp_dim):
    per_block = (
        4 * 2 * tokens * width * width  # q, k, v, output projections
        + 2 * 2 * tokens * tokens * width  # QK^T and AV over all heads
        + 2 * 2 * tokens * width * mlp_dim  # MLP
    )
    return depth * per_block


def _map_head_flops(tokens, width, mlp_dim):
    return (
        2 * width * width  # probe query projection
        + 2 * 2 * tokens * width * width  # key, value projections
        + 2 * 2 * tokens * width  # QK^T, AV for one query
        + 2 * width * width  # output projection
        + 2 * 2 * width * mlp_dim  # MLP
    )


def image_forward_flops(config, batch, tokens=None):
    """Image tower FLOPs; `tokens` overrides the grid of `image_size` (NaFlex N)."""
    v = config["vision_encoder"]
    size = v["image_size"]
    tokens = tokens or (size // v["patch_size"]) ** 2
    width, patch_dim = v["width"], v["patch_size"] ** 2 * v.get("num_channels", 3)
    flops = 2 * tokens * patch_dim * width + _encoder_flops(tokens, width, v["depth"], v["mlp_dim"])
    if v.get("pooling", "map") == "map":
        flops += _map_head_flops(tokens, width, v["mlp_dim"])
    return batch * flops


def text_forward_flops(config, batch):
    t = config["text_encoder"]
    flops = _encoder_flops(t["sequence_length"], t["width"], t["depth"], t["mlp_dim"])
    if t.get("num_classes"):
        flops += 2 * t["width"] * t["num_classes"]
    return batch * flops
