"""keras-hub `SigLIPBackbone` <-> keras_siglip `SigLIPBackbone` weights.

keras-hub's SigLIP uses the same Keras `MultiHeadAttention` / `Dense` layouts, so
the map is a renaming, except the patch embedding (a Conv2D kernel `(P, P, 3, W)`
there, our Dense kernel `(P*P*3, W)`: the same numbers in the same order), the
position table (flat `(N, W)` there, a grid `(h, w, W)` here) and the scalar
`logit_scale` / `logit_bias` (shape `(1,)` here). keras-hub's integer
`position_ids` weights are not parameters and have no counterpart.

One name map (`_rename`, keras-hub path -> ours) serves both directions:
reading (`keras_hub_weights`) walks a keras-hub model's weights through it, and
writing (`write_keras_hub`) walks the weights of a freshly built keras-hub
model through it to find each one's source here; every layout change above is
a reshape, so the inverse is a reshape to the keras-hub weight's shape.
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


_HEAD = {"siglip_head/logit_scale": "contrastive_head/log_temperature",
         "siglip_head/logit_bias": "contrastive_head/bias"}


def _counterparts(keras_hub_backbone):
    """`[(keras-hub variable, our path)]` for every keras-hub SigLIP weight that
    has a counterpart (all but the integer `position_ids`)."""
    pairs = []
    for tower, model in (("vision", keras_hub_backbone.vision_encoder), ("text", keras_hub_backbone.text_encoder)):
        for variable in model.weights:
            # Loaded from a preset, keras-hub prefixes the towers' sublayers with
            # the tower's name ("sig_lip_vision_encoder_embedding/...").
            ours = _rename(variable.path.removeprefix(f"{model.name}_"), tower)
            if ours is not None:
                pairs.append((variable, ours))
    pairs += [(v, _HEAD[v.path]) for v in keras_hub_backbone.weights if v.path in _HEAD]
    return pairs


def keras_hub_weights(keras_hub_backbone):
    """keras-hub SigLIP weights as `{our path: numpy array}` in our layouts (Dense
    patch kernel, 2-D position grid)."""
    weights = {ours: ops.convert_to_numpy(variable) for variable, ours in _counterparts(keras_hub_backbone)}
    vision = keras_hub_backbone.vision_encoder
    config = vision.get_config()
    (height, width), patch = config["image_shape"][:2], config["patch_size"]
    kernel = weights["vit/embedding/kernel"]  # conv (P, P, C, W) -> Dense (P*P*C, W)
    weights["vit/embedding/kernel"] = kernel.reshape(-1, kernel.shape[-1])
    table = weights["vit/position_embedding/embeddings"]  # (h*w, W) -> (h, w, W)
    weights["vit/position_embedding/embeddings"] = table.reshape(height // patch, width // patch, -1)
    for ours in _HEAD.values():  # scalars -> (1,)
        if ours in weights:
            weights[ours] = np.reshape(weights[ours], (1,))
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


# -- writing -----------------------------------------------------------------------


def keras_hub_config(backbone):
    """`(vision kwargs, text kwargs)` of keras-hub's `SigLIPVisionEncoder` and
    `SigLIPTextEncoder` for one of our `SigLIPBackbone`s.

    Raises one `ValueError` naming everything keras-hub's SigLIP cannot
    express: NaFlex or packed image inputs, image pooling other than MAP, an
    image head, a non-square image, text pooling other than the last token.
    A text tower without a head (`num_classes=None`) maps to keras-hub's head
    of its width (written as the identity).
    """
    v = backbone.vision_encoder.get_config()
    t = backbone.text_encoder.get_config()
    problems = []
    input_format = v.get("input_format", "images")
    if input_format != "images":
        problems.append(f"input_format {input_format!r} (keras-hub's SigLIPVisionEncoder takes whole images at "
                        "one fixed size; NaFlex and packed patch inputs have no counterpart)")
    if v.get("pooling", "map") != "map":
        problems.append(f"image pooling {v['pooling']!r} (keras-hub's image tower has a MAP head only)")
    if v.get("num_classes"):
        problems.append(f"an image head of {v['num_classes']} classes (keras-hub's image tower has none)")
    size = v["image_size"]
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height != width:
        problems.append(f"a non-square image size {height}x{width} (keras-hub's SigLIPVisionEncoder is square)")
    if t.get("pooling", "last") != "last":
        problems.append(f"text pooling {t['pooling']!r} (keras-hub's SigLIPTextEncoder pools the last token)")
    if problems:
        raise ValueError("This backbone has no keras-hub SigLIP counterpart: " + "; ".join(problems) + ".")
    vision = dict(
        patch_size=v["patch_size"], hidden_dim=v["width"], num_layers=v["depth"], num_heads=v["num_heads"],
        intermediate_dim=v["mlp_dim"], image_shape=(height, width, v.get("num_channels", 3)),
    )
    text = dict(
        vocabulary_size=t["vocabulary_size"], embedding_dim=t["width"], hidden_dim=t["width"],
        num_layers=t["depth"], num_heads=t["num_heads"], intermediate_dim=t["mlp_dim"],
        max_sequence_length=t["sequence_length"], projection_dim=t.get("num_classes") or t["width"],
    )
    return vision, text


def assign_to_keras_hub(pairs, weights, target="keras-hub"):
    """Assign `{our path: array}` to keras-hub variables through `pairs`
    (`[(keras-hub variable, our path)]`, a reader's name map walked over a
    freshly built keras-hub model), each reshaped to keras-hub's layout.

    Every keras-hub variable of `pairs` must find its weight and every weight
    must be used, with the same number of elements; otherwise one
    `ValueError` lists every missing, unused and mis-sized name.
    """
    missing, misshaped, used = [], [], set()
    for variable, ours in pairs:
        if ours not in weights:
            missing.append(f"{ours} (for {variable.path})")
            continue
        used.add(ours)
        value = np.asarray(weights[ours])
        shape = tuple(variable.shape)
        if value.size != int(np.prod(shape, dtype="int64")):
            misshaped.append(f"{ours}: ours {value.shape} vs {target} {variable.path} {shape}")
            continue
        variable.assign(value.reshape(shape))
    unused = sorted(set(weights) - used)
    if missing or misshaped or unused:
        lines = [f"{name} ({len(items)}): {', '.join(items)}" for name, items in (
            ("missing", missing), ("without a counterpart", unused), ("mis-shaped", misshaped)) if items]
        raise ValueError(f"The backbone's weights do not fit a {target} model:\n  " + "\n  ".join(lines))


def keras_hub_tokenizer(tokenizer):
    """keras-hub's tokenizer for one of our `SigLIPTokenizer`s: the same
    SentencePiece model and special tokens, so keras-hub packs every text into
    the same ids as we do.

    SigLIP 1 (end and pad `</s>`) is keras-hub's `SigLIPTokenizer`; the Gemma
    vocabulary of SigLIP 2 (end `<eos>`, pad `<pad>`) its `GemmaTokenizer`, as
    in keras-hub's own SigLIP 2 presets; a T5-style vocabulary padded with
    `<pad>` (end `</s>`) its `T5Tokenizer`.
    """
    import keras_hub

    if tokenizer.end_token == "<eos>":
        cls = keras_hub.models.GemmaTokenizer
    elif tokenizer.pad_token == "</s>":
        cls = keras_hub.models.SigLIPTokenizer
    else:
        cls = keras_hub.models.T5Tokenizer
    theirs = cls(proto=tokenizer.proto)
    if (theirs.end_token_id, theirs.pad_token_id) != (tokenizer.end_token_id, tokenizer.pad_token_id):
        raise ValueError(
            f"keras-hub's {cls.__name__} would end texts with id {theirs.end_token_id} and pad with "
            f"{theirs.pad_token_id}; this tokenizer uses {tokenizer.end_token_id} and {tokenizer.pad_token_id}."
        )
    return theirs


def keras_hub_image_converter(cls, image_converter):
    """keras-hub image converter `cls` with our converter's resize and scaling
    (None for None); a NaFlex converter has no keras-hub counterpart."""
    if image_converter is None:
        return None
    config = image_converter.get_config()
    if "max_num_patches" in config:
        raise ValueError(f"A NaFlex image converter has no keras-hub counterpart (keras-hub's {cls.__name__} "
                         "takes whole images at one fixed size).")
    keys = ("image_size", "scale", "offset", "interpolation", "antialias", "crop_to_aspect_ratio",
            "pad_to_aspect_ratio")
    return cls(**{key: config[key] for key in keys if key in config})


def keras_hub_preprocessing(preprocessor):
    """keras-hub's preprocessing layers for our `SigLIPPreprocessor`: a
    `SigLIPPreprocessor` (tokenizer, image converter, sequence length,
    canonicalisation) when it has a tokenizer, else its image converter
    alone; `[]` for None. Raises a `ValueError` for what keras-hub cannot
    express (a NaFlex image converter, lowercasing without canonicalising).

    keras-hub's `canonicalize_text` lowercases (ASCII letters only) and drops
    punctuation, `_` included; ours lowercases every letter and turns `_` into
    a space: texts with `_` or non-ASCII capitals tokenize differently there.
    """
    import keras_hub

    if preprocessor is None:
        return []
    converter = keras_hub_image_converter(keras_hub.layers.SigLIPImageConverter, preprocessor.image_converter)
    tokenizer = preprocessor.tokenizer
    if tokenizer is None:
        return [converter] if converter is not None else []
    if tokenizer.lowercase != tokenizer.canonicalize:
        raise ValueError(
            f"The tokenizer lowercases ({tokenizer.lowercase}) and canonicalises ({tokenizer.canonicalize}) "
            "texts independently; keras-hub's SigLIPPreprocessor does both or neither (canonicalize_text)."
        )
    return [keras_hub.models.SigLIPPreprocessor(
        keras_hub_tokenizer(tokenizer), converter, sequence_length=preprocessor.sequence_length,
        canonicalize_text=tokenizer.canonicalize,
    )]


def write_keras_hub(backbone, folder, preprocessor=None):
    """Write one of our `SigLIPBackbone`s as a keras-hub preset folder that
    `keras_hub.models.SigLIPBackbone.from_preset` loads (with
    `SigLIPPreprocessor.from_preset` too when `preprocessor` is given).

    The model is built from keras-hub's public classes, takes our weights
    through the reader's name map (`_counterparts`), and is saved with
    keras-hub's own `save_to_preset`, with the preprocessing layers of
    `keras_hub_preprocessing`. Everything keras-hub cannot express is refused
    (`keras_hub_config`) before anything is written; the folder is written
    into a temporary sibling that then replaces `folder` whole.

    Returns:
        `folder`.
    """
    import keras_hub

    from keras_siglip.utils.atomic import atomic_directory

    vision, text = keras_hub_config(backbone)
    layers = keras_hub_preprocessing(preprocessor)
    dtype = backbone.dtype_policy.name
    theirs = keras_hub.models.SigLIPBackbone(
        keras_hub.models.SigLIPVisionEncoder(**vision, dtype=dtype),
        keras_hub.models.SigLIPTextEncoder(**text, dtype=dtype),
        dtype=dtype,
    )
    weights = {variable.path: ops.convert_to_numpy(variable) for variable in backbone.weights}
    if not backbone.text_encoder.get_config().get("num_classes"):  # keras-hub always has a text head
        width = text["hidden_dim"]
        weights["transformer/head/kernel"] = np.eye(width, dtype="float32")
        weights["transformer/head/bias"] = np.zeros((width,), "float32")
    assign_to_keras_hub(_counterparts(theirs), weights, target="keras-hub SigLIPBackbone")
    with atomic_directory(folder, merge=False) as tmp:
        theirs.save_to_preset(tmp)
        for layer in layers:
            layer.save_to_preset(tmp)
    return folder
