"""keras-hub `PaliGemmaBackbone` (PaliGemma 1 and 2) -> keras_siglip `PaliGemmaBackbone`.

    from keras_siglip.convert.keras_hub_pali_gemma import load_keras_hub_pali_gemma
    ours = load_keras_hub_pali_gemma(keras_hub_backbone)      # an object (or its CausalLM)
    ours = load_keras_hub_pali_gemma("pali_gemma2_3b_pt_224/")  # a keras-hub preset folder

keras-hub builds PaliGemma from its own ViT (`PaliGemmaVit`: Conv2D patches, Dense
`query_proj` / `key_proj` / `value_proj` / `out_proj`) and its Gemma blocks; ours is
the shared `VisionTransformer` (Keras `MultiHeadAttention` layouts) and
`layers.gemma.GemmaDecoder`. The weights map one to one (W ViT width, h ViT heads,
d = W / h, P patch, g = image_size / P; Gemma layouts are the same on both sides):

    keras-hub                                                  ours
    token_embedding/embeddings (V, D)                          gemma/token_embedding/embeddings
    image_encoder/encoder_embeddings/embedding_conv/kernel     vit/embedding/kernel
        (P, P, 3, W)                                             (P*P*3, W): reshape
    image_encoder/encoder_embeddings/embedding_conv/bias       vit/embedding/bias
    image_encoder/encoder_embeddings/position_embedding/       vit/position_embedding/embeddings
        embeddings (g*g, W)                                      (g, g, W): reshape
    image_encoder/encoder_block_i/
        layer_norm_1/{gamma,beta}                              vit/encoder/block_i/layer_norm_0/...
        multi_head_attention/{query,key,value}_proj/kernel     attention/{query,key,value}/kernel
            (W, W)                                               (W, h, d): reshape
        multi_head_attention/{query,key,value}_proj/bias (W,)  .../bias (h, d): reshape
        multi_head_attention/out_proj/kernel (W, W)            attention/attention_output/kernel (h, d, W)
        multi_head_attention/out_proj/bias                     attention/attention_output/bias
        layer_norm_2/{gamma,beta}                              layer_norm_1/...
        mlp_dense_1/{kernel,bias}                              mlp/dense_0/...
        mlp_dense_2/{kernel,bias}                              mlp/dense_1/...
    image_encoder/encoder_layer_norm/{gamma,beta}              vit/encoder/encoder_norm/...
    image_classifier/{kernel,bias}                             vit/head/... (the projector)
    decoder_block_i/{pre_attention,post_attention,pre_ffw,     gemma/block_i/<same>/scale
        post_ffw}_norm/scale
    decoder_block_i/attention/{query,key,value,                gemma/block_i/attention/<same>/kernel
        attention_output}/kernel
    decoder_block_i/{ffw_gating,ffw_gating_2,ffw_linear}/kernel  gemma/block_i/<same>/kernel
    final_normalization/scale                                  gemma/final_norm/scale

Config: keras-hub's `intermediate_dim` is twice the GeGLU width (its blocks build
`intermediate_dim // 2` units), so ours is half of it; `query_head_dim_normalize=False`
(Gemma 2 27B, i.e. PaliGemma 2 28B) becomes `query_pre_attn_scalar = hidden_dim //
num_query_heads` (144 instead of head_dim 128, as big_vision and HF scale it); the
post-attention and post-FFW norms (Gemma 2) must be used together; the soft caps
carry over; `use_sliding_window_attention` becomes `sliding_window=sliding_window_size`
(even layers on both sides). keras-hub's RoPE interleaves the two halves after the
rotation, for queries and keys alike, which leaves every attention logit unchanged.

Sliding window: keras-hub limits every layer-local query to keys within the window
on *both* sides, also inside the image + prefix block; ours (HF's rule) keeps the
query's own bidirectional block visible. They agree whenever image + prompt fit in
the window (4096 in the released PaliGemma 2 presets: image tokens 256 / 1024 /
4096 at 224 / 448 / 896 px), i.e. always except 896 px inputs with a prompt.

keras-hub bug (0.32): `GemmaDecoderBlock` builds its attention with
`query_head_dim_normalize=True` whatever the backbone's flag says, so keras-hub's
PaliGemma 2 28B scales queries by 128 ** -0.5 while its config (and the model's
training) say 144 ** -0.5. The default `query_pre_attn_scalar="config"` follows the
config (the trained model); `"keras_hub"` reproduces what keras-hub computes (read
from its attention layers), for parity with keras-hub itself.

Anything our model cannot express (MAP / GAP pooling, a classifier activation, a
LayerNorm epsilon other than 1e-6, post norms used separately) is listed in one
`ValueError`; tensors that do not fit (names or shapes) in one `CheckpointMismatch`.

Writing (`write_keras_hub_pali_gemma`, ours -> keras-hub) walks the same rules
(`_rules`) over a freshly built keras-hub model; every layout change above is
a reshape, undone by reshaping to keras-hub's shape. `config_to_keras_hub` is
checked against `config_from_keras_hub` (the round trip must give our config
back). keras-hub cannot express NaFlex inputs, a query scale other than
head_dim or hidden_dim / heads, nor (with keras-hub 0.32's bug above)
hidden_dim / heads at all; and a sliding window no longer than the image
tokens (keras-hub's window cuts the image block itself). A window longer than
the image tokens gives equal outputs whenever image + prompt fit in it.
"""

import json
import os
import re

import numpy as np

from keras_siglip.convert.common import Checkpoint, load_into

REGISTERED_NAME = "keras_hub>PaliGemmaBackbone"


def is_keras_hub_pali_gemma(folder):
    """Whether `folder` is a keras-hub preset whose `config.json` is a `PaliGemmaBackbone`."""
    path = os.path.join(os.fspath(folder), "config.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        try:
            return json.load(f).get("registered_name") == REGISTERED_NAME
        except (json.JSONDecodeError, AttributeError):
            return False


def config_from_keras_hub(kh_config, source="keras-hub PaliGemmaBackbone"):
    """Our `PaliGemmaBackbone` kwargs from a keras-hub `PaliGemmaBackbone.get_config()`.

    Raises one `ValueError` listing every setting our model cannot express.
    """
    c = dict(kh_config)
    problems = []
    if c.get("vit_pooling") is not None:
        problems.append(f"vit_pooling = {c['vit_pooling']!r} (PaliGemma feeds every patch token: None)")
    activation = c.get("vit_classifier_activation")
    if activation not in (None, "linear"):
        problems.append(f"vit_classifier_activation = {activation!r} (the projector is linear)")
    if float(c.get("layer_norm_epsilon", 1e-6)) != 1e-6:
        problems.append(f"layer_norm_epsilon = {c['layer_norm_epsilon']} (ours: 1e-6)")
    if bool(c.get("use_post_ffw_norm", False)) != bool(c.get("use_post_attention_norm", False)):
        problems.append(
            f"use_post_ffw_norm = {c.get('use_post_ffw_norm')} with use_post_attention_norm = "
            f"{c.get('use_post_attention_norm')} (ours: both, Gemma 2, or neither, Gemma 1)"
        )
    intermediate = c.get("intermediate_dim")
    if not isinstance(intermediate, int) or intermediate % 2:
        problems.append(f"intermediate_dim = {intermediate!r} (keras-hub's is twice the GeGLU width: even)")
    image_size = c.get("image_size")
    if not isinstance(image_size, int):
        problems.append(f"image_size = {image_size!r} (a square int size)")
    if problems:
        raise ValueError(f"{source} asks for what keras_siglip's PaliGemma cannot express:\n  " + "\n  ".join(problems))

    hidden, heads, head_dim = c["hidden_dim"], c["num_query_heads"], c["head_dim"]
    query_scalar = None
    if not c.get("query_head_dim_normalize", True) and hidden // heads != head_dim:
        query_scalar = hidden // heads
    window = c.get("sliding_window_size", 4096) if c.get("use_sliding_window_attention") else None
    return dict(
        vocabulary_size=c["vocabulary_size"],
        image_size=image_size,
        num_layers=c["num_layers"],
        num_query_heads=heads,
        num_key_value_heads=c["num_key_value_heads"],
        hidden_dim=hidden,
        intermediate_dim=intermediate // 2,
        head_dim=head_dim,
        query_pre_attn_scalar=query_scalar,
        attention_logit_soft_cap=c.get("attention_logit_soft_cap") or None,
        final_logit_soft_cap=c.get("final_logit_soft_cap") or None,
        use_post_norms=bool(c.get("use_post_ffw_norm", False)),
        sliding_window=window,
        vit_patch_size=c["vit_patch_size"],
        vit_hidden_dim=c["vit_hidden_dim"],
        vit_num_layers=c["vit_num_layers"],
        vit_num_heads=c["vit_num_heads"],
        vit_intermediate_dim=c.get("vit_intermediate_dim") or 4304,  # keras-hub's own fallback
        dropout=float(c.get("dropout") or 0.0),
    )


class _Rule:
    """One keras-hub weight -> one of ours, through `to_ours(array)`."""

    __slots__ = ("theirs", "ours", "to_ours")

    def __init__(self, theirs, ours, to_ours=None):
        self.theirs, self.ours, self.to_ours = theirs, ours, to_ours or (lambda x: x)


def _rules(config):
    """Every keras-hub weight path (relative to the backbone) and its counterpart in ours."""
    width, vit_heads = config["vit_hidden_dim"], config["vit_num_heads"]
    grid = config["image_size"] // config["vit_patch_size"]
    head = width // vit_heads
    enc = "image_encoder"
    rules = [
        _Rule("token_embedding/embeddings", "gemma/token_embedding/embeddings"),
        _Rule(f"{enc}/encoder_embeddings/embedding_conv/kernel", "vit/embedding/kernel",
              lambda k: k.reshape(-1, k.shape[-1])),
        _Rule(f"{enc}/encoder_embeddings/embedding_conv/bias", "vit/embedding/bias"),
        _Rule(f"{enc}/encoder_embeddings/position_embedding/embeddings", "vit/position_embedding/embeddings",
              lambda p: p.reshape(grid, grid, p.shape[-1])),
        _Rule(f"{enc}/encoder_layer_norm/gamma", "vit/encoder/encoder_norm/gamma"),
        _Rule(f"{enc}/encoder_layer_norm/beta", "vit/encoder/encoder_norm/beta"),
        _Rule("image_classifier/kernel", "vit/head/kernel"),
        _Rule("image_classifier/bias", "vit/head/bias"),
        _Rule("final_normalization/scale", "gemma/final_norm/scale"),
    ]
    for i in range(config["vit_num_layers"]):
        theirs, ours = f"{enc}/encoder_block_{i}", f"vit/encoder/block_{i}"
        mha = f"{theirs}/multi_head_attention"
        for a, b in (("layer_norm_1", "layer_norm_0"), ("layer_norm_2", "layer_norm_1")):
            rules += [_Rule(f"{theirs}/{a}/{p}", f"{ours}/{b}/{p}") for p in ("gamma", "beta")]
        for a, b in (("mlp_dense_1", "mlp/dense_0"), ("mlp_dense_2", "mlp/dense_1")):
            rules += [_Rule(f"{theirs}/{a}/{p}", f"{ours}/{b}/{p}") for p in ("kernel", "bias")]
        for proj in ("query", "key", "value"):
            rules += [
                _Rule(f"{mha}/{proj}_proj/kernel", f"{ours}/attention/{proj}/kernel",
                      lambda k: k.reshape(k.shape[0], vit_heads, head)),
                _Rule(f"{mha}/{proj}_proj/bias", f"{ours}/attention/{proj}/bias",
                      lambda b: b.reshape(vit_heads, head)),
            ]
        rules += [
            _Rule(f"{mha}/out_proj/kernel", f"{ours}/attention/attention_output/kernel",
                  lambda k: k.reshape(vit_heads, head, k.shape[-1])),
            _Rule(f"{mha}/out_proj/bias", f"{ours}/attention/attention_output/bias"),
        ]
    norms = ["pre_attention_norm", "pre_ffw_norm"]
    if config["use_post_norms"]:
        norms += ["post_attention_norm", "post_ffw_norm"]
    for i in range(config["num_layers"]):
        theirs, ours = f"decoder_block_{i}", f"gemma/block_{i}"
        rules += [_Rule(f"{theirs}/{n}/scale", f"{ours}/{n}/scale") for n in norms]
        rules += [_Rule(f"{theirs}/attention/{n}/kernel", f"{ours}/attention/{n}/kernel")
                  for n in ("query", "key", "value", "attention_output")]
        rules += [_Rule(f"{theirs}/{n}/kernel", f"{ours}/{n}/kernel") for n in ("ffw_gating", "ffw_gating_2", "ffw_linear")]
    return rules


def _relative_paths(backbone):
    """`{path relative to the backbone: variable}` of a keras-hub `PaliGemmaBackbone`.

    The ViT is a nested `keras.Model`; a loaded preset may prefix its sublayers
    with the model's name (`<vit name>_image_encoder/...`), which is removed.
    """
    vit = backbone.vit_encoder
    vit_ids = {id(v) for v in vit.weights}
    paths = {}
    for variable in backbone.weights:
        path = variable.path
        if id(variable) in vit_ids:
            path = path.removeprefix(f"{vit.name}/").removeprefix(f"{vit.name}_")
            match = re.search(r"(image_encoder|image_classifier)/.*$", path)
            path = match.group(0) if match else path
        paths[path] = variable
    return paths


def _keras_hub_backbone(source):
    """A keras-hub `PaliGemmaBackbone` from an object (backbone or CausalLM) or a preset folder."""
    import keras_hub

    if isinstance(source, (str, os.PathLike)):
        folder = os.fspath(source)
        if not is_keras_hub_pali_gemma(folder):
            path = os.path.join(folder, "config.json")
            found = None
            if os.path.isfile(path):
                with open(path) as f:
                    found = json.load(f).get("registered_name")
            raise ValueError(f"{folder} is not a keras-hub PaliGemma preset (config.json registered_name "
                             f"{found!r}, expected {REGISTERED_NAME!r}).")
        # keras-hub deserialises with Keras' safe mode (no lambdas, no pickles).
        return keras_hub.models.PaliGemmaBackbone.from_preset(folder), f"keras-hub PaliGemma preset {folder}"
    backbone = getattr(source, "backbone", source)
    if not isinstance(backbone, keras_hub.models.PaliGemmaBackbone):
        raise TypeError(f"Expected a keras-hub PaliGemmaBackbone (or PaliGemmaCausalLM, or a preset folder); "
                        f"got {type(source).__name__}.")
    return backbone, f"keras-hub PaliGemmaBackbone {backbone.name!r}"


def _effective_query_scalar(backbone, config):
    """The query scalar keras-hub's attention layers actually use (see the module docstring)."""
    flags = {bool(getattr(block.attention, "query_head_dim_normalize", True))
             for block in backbone.transformer_layers}
    if len(flags) > 1:
        raise ValueError("keras-hub's decoder blocks disagree on query_head_dim_normalize.")
    if flags.pop() or config["hidden_dim"] // config["num_query_heads"] == config["head_dim"]:
        return None
    return config["hidden_dim"] // config["num_query_heads"]


def read_keras_hub_pali_gemma(source, query_pre_attn_scalar="config"):
    """A keras-hub PaliGemma (backbone / CausalLM object, or preset folder) as a
    `Checkpoint` whose `config` is our `PaliGemmaBackbone` kwargs.

    Weights without a counterpart are yielded as `keras_hub:<path>` so that
    `load_into` lists them as unexpected; absent ones show up as missing, and
    arrays that cannot take our layout as mis-shaped. From a preset folder, its
    SentencePiece model (`assets/tokenizer/vocabulary.spm`) becomes the
    checkpoint's `tokenizer` (`{"proto": bytes}`) and its image converter's
    resize settings a `("PaliGemmaImageConverter", kwargs)`; an object carries
    neither.

    `query_pre_attn_scalar`: `"config"` (default: from `query_head_dim_normalize`,
    as the model was trained), `"keras_hub"` (what keras-hub's attention layers
    compute; they ignore the flag in keras-hub 0.32), or a number.
    """
    from keras import ops

    backbone, description = _keras_hub_backbone(source)
    config = config_from_keras_hub(backbone.get_config(), source=description)
    if isinstance(query_pre_attn_scalar, str):
        if query_pre_attn_scalar == "keras_hub":
            config["query_pre_attn_scalar"] = _effective_query_scalar(backbone, config)
        elif query_pre_attn_scalar != "config":
            raise ValueError(f"query_pre_attn_scalar must be 'config', 'keras_hub' or a number; "
                             f"got {query_pre_attn_scalar!r}.")
    else:
        config["query_pre_attn_scalar"] = query_pre_attn_scalar
    rules = _rules(config)
    variables = _relative_paths(backbone)
    present = [rule for rule in rules if rule.theirs in variables]
    mapped = {rule.theirs for rule in rules}
    extra = sorted(path for path in variables if path not in mapped)

    def tensors():
        for rule in present:
            value = np.asarray(ops.convert_to_numpy(variables[rule.theirs]))
            try:
                converted = rule.to_ours(value)
            except ValueError:  # cannot take our layout: left as is, reported as mis-shaped
                converted = value
            yield rule.ours, converted
        for path in extra:
            yield f"keras_hub:{path}", np.asarray(ops.convert_to_numpy(variables[path]))

    folder = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    return Checkpoint(
        config=config, tensors=tensors, num_tensors=len(present) + len(extra), source=description,
        tokenizer=_preset_tokenizer(folder), image_converter=_preset_image_converter(folder, config["image_size"]),
    )


def _preset_tokenizer(folder):
    path = None if folder is None else os.path.join(folder, "assets", "tokenizer", "vocabulary.spm")
    if path is None or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return {"proto": f.read()}


def _preset_image_converter(folder, image_size):
    if folder is None:
        return None
    kwargs = {"image_size": (image_size, image_size)}
    path = os.path.join(folder, "image_converter.json")
    if os.path.isfile(path):
        with open(path) as f:
            config = json.load(f).get("config", {})
        kwargs.update({k: config[k] for k in ("interpolation", "antialias") if k in config})
    return ("PaliGemmaImageConverter", kwargs)


def load_keras_hub_pali_gemma(source, dtype=None, progress=False, query_pre_attn_scalar="config"):
    """Our `PaliGemmaBackbone` with the weights of a keras-hub PaliGemma.

    Args:
        source: a keras-hub `PaliGemmaBackbone` or `PaliGemmaCausalLM`, or a
            keras-hub preset folder (`config.json` of a `PaliGemmaBackbone`).
        dtype: our model's dtype policy (default: Keras' default).
        query_pre_attn_scalar: see `read_keras_hub_pali_gemma`.

    Raises `ValueError` for configurations we cannot express and
    `CheckpointMismatch` naming every missing, unexpected and mis-shaped weight.
    """
    from keras_siglip.models.pali_gemma import PaliGemmaBackbone

    checkpoint = read_keras_hub_pali_gemma(source, query_pre_attn_scalar=query_pre_attn_scalar)
    return load_into(PaliGemmaBackbone(**checkpoint.config, dtype=dtype), checkpoint, progress=progress)


# -- writing -----------------------------------------------------------------------


def _keras_hub_honours_query_flag():
    """Whether the installed keras-hub's decoder blocks use the backbone's
    `query_head_dim_normalize=False` (keras-hub 0.32 builds every attention with
    True; see the module docstring). Probed on a tiny model."""
    import keras_hub

    probe = keras_hub.models.PaliGemmaBackbone(
        vocabulary_size=4, image_size=2, num_layers=1, num_query_heads=2, num_key_value_heads=1, hidden_dim=8,
        intermediate_dim=4, head_dim=2, vit_patch_size=2, vit_num_heads=1, vit_hidden_dim=2, vit_num_layers=1,
        vit_intermediate_dim=2, query_head_dim_normalize=False,
    )
    return not probe.transformer_layers[0].attention.query_head_dim_normalize


def config_to_keras_hub(config, source="This PaliGemmaBackbone"):
    """keras-hub `PaliGemmaBackbone` kwargs from ours (`PaliGemmaBackbone.get_config()`).

    Raises one `ValueError` listing everything keras-hub cannot express (see the
    module docstring). The result maps back to `config` through
    `config_from_keras_hub`.
    """
    import keras_hub

    c = dict(config)
    problems = []
    if c.get("input_format", "images") != "images":
        problems.append(f"input_format = {c['input_format']!r} (keras-hub's PaliGemma takes square images at "
                        "one fixed size; NaFlex patches have no counterpart)")
    hidden, heads, head_dim = c["hidden_dim"], c["num_query_heads"], c["head_dim"]
    scalar = c.get("query_pre_attn_scalar") or head_dim
    normalize = scalar == head_dim
    if not normalize:
        if scalar != hidden // heads:
            problems.append(f"query_pre_attn_scalar = {scalar} (keras-hub scales queries by head_dim = {head_dim} "
                            f"or hidden_dim / num_query_heads = {hidden // heads} only)")
        elif not _keras_hub_honours_query_flag():
            problems.append(
                f"query_pre_attn_scalar = {scalar} = hidden_dim / num_query_heads: keras-hub "
                f"{keras_hub.__version__}'s decoder blocks build their attention with query_head_dim_normalize=True "
                f"whatever the config says, so it would scale queries by head_dim = {head_dim} and compute "
                "another model"
            )
    window = c.get("sliding_window")
    image_tokens = (c["image_size"] // c["vit_patch_size"]) ** 2
    if window and window <= image_tokens:
        problems.append(f"sliding_window = {window}, not longer than the {image_tokens} image tokens (keras-hub's "
                        "window also cuts the image + prompt block, which ours sees whole)")
    if problems:
        raise ValueError(f"{source} has no keras-hub PaliGemma counterpart: " + "; ".join(problems) + ".")
    post = bool(c.get("use_post_norms"))
    kh = dict(
        vocabulary_size=c["vocabulary_size"], image_size=c["image_size"], num_layers=c["num_layers"],
        num_query_heads=heads, num_key_value_heads=c["num_key_value_heads"], hidden_dim=hidden,
        intermediate_dim=2 * c["intermediate_dim"], head_dim=head_dim, vit_patch_size=c["vit_patch_size"],
        vit_num_heads=c["vit_num_heads"], vit_hidden_dim=c["vit_hidden_dim"], vit_num_layers=c["vit_num_layers"],
        vit_intermediate_dim=c["vit_intermediate_dim"], query_head_dim_normalize=normalize,
        use_post_ffw_norm=post, use_post_attention_norm=post,
        attention_logit_soft_cap=c.get("attention_logit_soft_cap") or None,
        final_logit_soft_cap=c.get("final_logit_soft_cap") or None,
        use_sliding_window_attention=bool(window), sliding_window_size=window or 4096,
        dropout=float(c.get("dropout") or 0.0),
    )
    back = config_from_keras_hub(kh, source=source)
    ours = dict(c, query_pre_attn_scalar=None if normalize else scalar)
    differences = sorted(key for key, value in back.items() if key in ours and ours[key] != value)
    if differences:  # a mapping bug, not the user's: keep it loud
        raise ValueError(f"{source}: the keras-hub config does not map back to ours ({differences}).")
    return kh


def keras_hub_pali_gemma_preprocessing(preprocessor):
    """keras-hub's `PaliGemmaCausalLMPreprocessor` (`PaliGemmaTokenizer`,
    `PaliGemmaImageConverter`, sequence length) for ours; its image converter
    alone without a tokenizer; `[]` for None.

    keras-hub's preprocessor packs `[BOS] prompt response [EOS]` without the
    "\n" separator ours (and big_vision, HF) adds after the prompt: end
    prompts with "\n" there.
    """
    import keras_hub

    from keras_siglip.convert.keras_hub import keras_hub_image_converter

    if preprocessor is None:
        return []
    converter = keras_hub_image_converter(keras_hub.layers.PaliGemmaImageConverter, preprocessor.image_converter)
    if preprocessor.tokenizer is None:
        return [converter] if converter is not None else []
    tokenizer = keras_hub.models.PaliGemmaTokenizer(proto=preprocessor.tokenizer.proto)
    return [keras_hub.models.PaliGemmaCausalLMPreprocessor(
        tokenizer, converter, sequence_length=preprocessor.sequence_length)]


def write_keras_hub_pali_gemma(backbone, folder, preprocessor=None):
    """Write our `PaliGemmaBackbone` as a keras-hub preset folder that
    `keras_hub.models.PaliGemmaBackbone.from_preset` (and, with a
    `PaliGemmaCausalLMPreprocessor`, `PaliGemmaCausalLM.from_preset`) loads.

    Built from keras-hub's public classes, given our weights through `_rules`,
    saved with keras-hub's `save_to_preset` (with
    `keras_hub_pali_gemma_preprocessing(preprocessor)`), atomically: a
    temporary sibling replaces `folder` whole. What keras-hub cannot express
    is refused first (`config_to_keras_hub`). Returns `folder`.
    """
    import keras_hub
    from keras import ops

    from keras_siglip.convert.keras_hub import assign_to_keras_hub
    from keras_siglip.utils.atomic import atomic_directory

    config = backbone.get_config()
    kh_config = config_to_keras_hub(config)
    layers = keras_hub_pali_gemma_preprocessing(preprocessor)
    theirs = keras_hub.models.PaliGemmaBackbone(**kh_config, dtype=backbone.dtype_policy.name)
    variables = _relative_paths(theirs)
    rules = _rules(config)
    absent = sorted(rule.theirs for rule in rules if rule.theirs not in variables)
    covered = {rule.theirs for rule in rules}
    uncovered = sorted(path for path in variables if path not in covered)
    if absent or uncovered:
        raise ValueError(f"keras-hub's PaliGemmaBackbone does not have the weights the name map expects: "
                         f"absent {absent}, not mapped {uncovered}.")
    weights = {variable.path: ops.convert_to_numpy(variable) for variable in backbone.weights}
    assign_to_keras_hub([(variables[rule.theirs], rule.ours) for rule in rules], weights,
                        target="keras-hub PaliGemmaBackbone")
    with atomic_directory(folder, merge=False) as tmp:
        theirs.save_to_preset(tmp)
        for layer in layers:
            layer.save_to_preset(tmp)
    return folder


__all__ = ["config_from_keras_hub", "config_to_keras_hub", "is_keras_hub_pali_gemma", "load_keras_hub_pali_gemma",
           "read_keras_hub_pali_gemma", "write_keras_hub_pali_gemma"]
