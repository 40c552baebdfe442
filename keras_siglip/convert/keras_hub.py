"""keras-hub `SigLIPBackbone` <-> keras_siglip `SigLIPBackbone` weights.

keras-hub's SigLIP uses the same Keras `MultiHeadAttention` / `Dense` layouts, so
the map is a renaming, except the patch embedding (a Conv2D kernel `(P, P, 3, W)`
there, our Dense kernel `(P*P*3, W)`: the same numbers in the same order), the
position table (flat `(N, W)` there, a grid `(h, w, W)` here) and the scalar
`logit_scale` / `logit_bias` (shape `(1,)` here). keras-hub's integer
`position_ids` weights are not parameters and have no counterpart.
"""

import re

import numpy as np
from keras import ops

_BLOCK = [
    (r"self_attn/(query|key|value|attention_output)/(kernel|bias)", r"attention/\1/\2"),
    (r"layer_norm1/(gamma|beta)", r"layer_norm_0/\1"),
    (r"layer_norm2/(gamma|beta)", r"layer_norm_1/\1"),
    (r"mlp/fc1/(kernel|bias)", r"mlp/dense_0/\1"),
    (r"mlp/fc2/(kernel|bias)", r"mlp/dense_1/\1"),
]
_MAP_HEAD = [
    (r"head/variable(_\d+)?", "map_head/probe"),  # an unnamed weight: Keras numbers it
    (r"head/attention/(\w+)/(kernel|bias)", r"map_head/attention/\1/\2"),
    (r"head/layernorm/(gamma|beta)", r"map_head/layer_norm/\1"),
    (r"head/mlp/fc1/(kernel|bias)", r"map_head/mlp/dense_0/\1"),
    (r"head/mlp/fc2/(kernel|bias)", r"map_head/mlp/dense_1/\1"),
]


def _rename(path, tower):
    """keras-hub weight path (within one tower) -> our path, or None to skip."""
    if path.endswith("position_ids"):
        return None
    if tower == "vision":
        fixed = {
            "embedding/patch_embedding/kernel": "vit/embedding/kernel",
            "embedding/patch_embedding/bias": "vit/embedding/bias",
            "embedding/position_embedding/embeddings": "vit/position_embedding/embeddings",
            "post_layer_norm/gamma": "vit/encoder/encoder_norm/gamma",
            "post_layer_norm/beta": "vit/encoder/encoder_norm/beta",
        }
        prefix, extra = "vit", _MAP_HEAD
    else:
        fixed = {
            "embedding/token_embedding/embeddings": "transformer/token_embedding/embeddings",
            "embedding/position_embedding/embeddings": "transformer/position_embedding",
            "post_layer_norm/gamma": "transformer/encoder/encoder_norm/gamma",
            "post_layer_norm/beta": "transformer/encoder/encoder_norm/beta",
            "head/kernel": "transformer/head/kernel",
            "head/bias": "transformer/head/bias",
        }
        prefix, extra = "transformer", []
    if path in fixed:
        return fixed[path]
    match = re.fullmatch(r"encoder_block_(\d+)/(.+)", path)
    if match:
        for pattern, target in _BLOCK:
            if re.fullmatch(pattern, match.group(2)):
                inner = re.sub(pattern, target, match.group(2))
                return f"{prefix}/encoder/block_{match.group(1)}/{inner}"
    for pattern, target in extra:
        if re.fullmatch(pattern, path):
            return f"{prefix}/" + re.sub(pattern, target, path)
    raise KeyError(f"No keras_siglip counterpart for keras-hub weight {tower}:{path!r}.")


def keras_hub_weights(keras_hub_backbone):
    """keras-hub SigLIP weights as `{our path: numpy array}` in our layouts (Dense
    patch kernel, 2-D position grid)."""
    weights = {}
    for tower, model in (("vision", keras_hub_backbone.vision_encoder), ("text", keras_hub_backbone.text_encoder)):
        for variable in model.weights:
            # Loaded from a preset, keras-hub prefixes the towers' sublayers with
            # the tower's name ("sig_lip_vision_encoder_embedding/...").
            ours = _rename(variable.path.removeprefix(f"{model.name}_"), tower)
            if ours is not None:
                weights[ours] = ops.convert_to_numpy(variable)
    vision = keras_hub_backbone.vision_encoder
    config = vision.get_config()
    (height, width), patch = config["image_shape"][:2], config["patch_size"]
    kernel = weights["vit/embedding/kernel"]  # conv (P, P, C, W) -> Dense (P*P*C, W)
    weights["vit/embedding/kernel"] = kernel.reshape(-1, kernel.shape[-1])
    table = weights["vit/position_embedding/embeddings"]  # (h*w, W) -> (h, w, W)
    weights["vit/position_embedding/embeddings"] = table.reshape(height // patch, width // patch, -1)
    for variable in keras_hub_backbone.weights:
        if variable.path == "siglip_head/logit_scale":
            weights["contrastive_head/log_temperature"] = np.reshape(ops.convert_to_numpy(variable), (1,))
        elif variable.path == "siglip_head/logit_bias":
            weights["contrastive_head/bias"] = np.reshape(ops.convert_to_numpy(variable), (1,))
    return weights


def assign_weights(backbone, weights, allow_nan=False):
    """Assign `{our path: array}` (e.g. `keras_hub_weights(...)`) to `backbone`
    through `common.load_into`: every weight exactly once, every mismatch listed,
    NaN / inf refused unless `allow_nan`."""
    from keras_siglip.convert.common import Checkpoint, load_into

    checkpoint = Checkpoint(config=None, tensors=lambda: iter(weights.items()), num_tensors=len(weights))
    return load_into(backbone, checkpoint, progress=False, allow_nan=allow_nan)


def read_keras_hub(folder, progress=None):
    """A keras-hub SigLIP preset folder (`config.json` + `model.weights.h5`, e.g.
    a Kaggle download) as a `Checkpoint`.

    keras-hub loads its own backbone (Keras safe mode, no pickles); the weights
    are then renamed tensor by tensor. Peak memory is two copies of the weights
    (keras-hub's model and ours). Damaged JSON or weight files raise errors
    naming the file (`preset_checks.load_checked`).
    """
    import os

    import keras_hub

    from keras_siglip.convert.common import Checkpoint
    from keras_siglip.convert.huggingface import _read_json
    from keras_siglip.convert.preset_checks import load_checked

    folder = os.fspath(folder)
    spec = _read_json(os.path.join(folder, "config.json")) or {}
    if spec.get("registered_name") != "keras_hub>SigLIPBackbone":
        raise ValueError(
            f"{folder} is a keras-hub preset of {spec.get('registered_name')!r}, not "
            "of keras_hub>SigLIPBackbone."
        )
    source = load_checked(
        folder, lambda load_weights: keras_hub.models.SigLIPBackbone.from_preset(folder, load_weights=load_weights),
        float_only=False,  # keras-hub's SigLIP stores integer position_ids
    )
    v = source.vision_encoder.get_config()
    t = source.text_encoder.get_config()
    for name, tower in (("vision", v), ("text", t)):
        if tower.get("intermediate_activation", "gelu_approximate") != "gelu_approximate":
            raise ValueError(f"The {name} tower uses {tower['intermediate_activation']!r}; ours is tanh GELU.")
        if tower.get("layer_norm_epsilon", 1e-6) != 1e-6:
            raise ValueError(f"The {name} tower's LayerNorm epsilon is {tower['layer_norm_epsilon']}; ours is 1e-6.")
    height, width = v["image_shape"][:2]
    config = {
        "vision_encoder": dict(
            patch_size=v["patch_size"], width=v["hidden_dim"], depth=v["num_layers"],
            num_heads=v["num_heads"], mlp_dim=v["intermediate_dim"],
            image_size=height if height == width else (height, width),
            num_channels=v["image_shape"][2],
        ),
        "text_encoder": dict(
            vocabulary_size=t["vocabulary_size"], width=t["hidden_dim"], depth=t["num_layers"],
            num_heads=t["num_heads"], mlp_dim=t["intermediate_dim"],
            sequence_length=t["max_sequence_length"], num_classes=t.get("projection_dim"),
        ),
    }
    if t["embedding_dim"] != t["hidden_dim"]:
        raise ValueError("keras-hub text towers with embedding_dim != hidden_dim have no counterpart here.")
    weights = keras_hub_weights(source)
    del source
    return Checkpoint(
        config=config,
        tensors=lambda: iter(weights.items()),
        num_tensors=len(weights),
        tokenizer=_keras_hub_tokenizer(folder, config["text_encoder"]["vocabulary_size"]),
        image_converter=_keras_hub_image_converter(folder, (height, width)),
        source=f"keras-hub preset {folder} (model.weights.h5)",
    )


def _keras_hub_tokenizer(folder, vocabulary_size):
    import os

    proto = os.path.join(folder, "assets", "tokenizer", "vocabulary.spm")
    if not os.path.exists(proto):
        return None
    with open(proto, "rb") as f:
        # keras-hub pads SigLIP 2 (Gemma vocabulary) with <pad>, SigLIP 1 with </s>.
        return {"proto": f.read(), "pad_token": "<pad>" if vocabulary_size == 256_000 else "</s>"}


def _keras_hub_image_converter(folder, image_size):
    import json
    import os

    path = os.path.join(folder, "image_converter.json")
    kwargs = {"image_size": image_size}
    if os.path.exists(path):
        with open(path) as f:
            config = json.load(f)["config"]
        kwargs.update({k: config[k] for k in ("interpolation", "antialias") if k in config})
    return ("SigLIPImageConverter", kwargs)
