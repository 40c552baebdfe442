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
    """keras-hub SigLIP weights as `{our path: numpy array}` in our layouts."""
    weights = {}
    for tower, model in (("vision", keras_hub_backbone.vision_encoder), ("text", keras_hub_backbone.text_encoder)):
        for variable in model.weights:
            ours = _rename(variable.path, tower)
            if ours is not None:
                weights[ours] = ops.convert_to_numpy(variable)
    for variable in keras_hub_backbone.weights:
        if variable.path == "siglip_head/logit_scale":
            weights["contrastive_head/log_temperature"] = np.reshape(ops.convert_to_numpy(variable), (1,))
        elif variable.path == "siglip_head/logit_bias":
            weights["contrastive_head/bias"] = np.reshape(ops.convert_to_numpy(variable), (1,))
    return weights


def assign_weights(backbone, weights):
    """Assign `{path: array}` to `backbone`, reshaping only where layouts are
    the same numbers (conv vs Dense patch kernel, flat vs grid positions).
    Every weight must be assigned exactly once; mismatches are listed by name.
    """
    variables = {v.path: v for v in backbone.weights}
    missing = sorted(set(variables) - set(weights))
    unexpected = sorted(set(weights) - set(variables))
    misshaped = [
        f"{path}: {np.shape(weights[path])} vs {tuple(variables[path].shape)}"
        for path in sorted(set(weights) & set(variables))
        if np.size(weights[path]) != int(np.prod(variables[path].shape))
    ]
    if missing or unexpected or misshaped:
        raise ValueError(
            "Checkpoint does not match the model:\n"
            f"  missing: {missing}\n  unexpected: {unexpected}\n  mis-shaped: {misshaped}"
        )
    for path, value in weights.items():
        variables[path].assign(np.reshape(value, variables[path].shape))
