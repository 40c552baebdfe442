"""PaliGemma checkpoints -> `PaliGemmaBackbone`: Hugging Face
`PaliGemmaForConditionalGeneration` folders and big_vision `.npz` files.

Hugging Face (`read_pali_gemma`, `load_pali_gemma`):

Reads `config.json` plus `model.safetensors` or sharded safetensors (numpy, one
tensor at a time, nothing unpickled). Every tensor naming in use is read (the Hub
checkpoints' `vision_tower.vision_model.…` / `language_model.model.…`, and the
`model.…` prefixes of newer transformers; see `_RENAMES`).

Layouts, HF (PyTorch) -> ours (N query heads, K key/value heads, H head_dim,
D width, F MLP width):

    q_proj.weight (N*H, D)            -> attention/query/kernel (N, D, H)
    k_proj / v_proj.weight (K*H, D)   -> attention/key|value/kernel (K, D, H)
    o_proj.weight (D, N*H)            -> attention/attention_output/kernel (N, H, D)
    mlp.gate_proj / up_proj (F, D)    -> ffw_gating / ffw_gating_2 kernel (D, F)
    mlp.down_proj (D, F)              -> ffw_linear/kernel (F, D)
    RMSNorm weight (D,)               -> scale (D,)   (both apply 1 + scale)
    multi_modal_projector.linear      -> vit/head (Dense, with bias)
    lm_head.weight                    -> none: tied to the token embedding

Trap: the norm names differ between the two Gemmas. Gemma 1's
`post_attention_layernorm` is the norm *before* the MLP (our `pre_ffw_norm`);
Gemma 2 has `post_attention_layernorm` (after attention),
`pre_feedforward_layernorm` and `post_feedforward_layernorm`.

Gemma 2's sliding window: HF configs say 4096 on the even layers; big_vision,
which trained PaliGemma 2, has no sliding window (global attention in every
layer). They differ only when a suffix token lies more than 4096 positions after
a key (896 px inputs: 4096 image tokens). `read_pali_gemma(sliding_window=None)`
(the default) follows big_vision; `sliding_window="config"` keeps HF's window
for exact parity with transformers at every length.

Writing (`write_pali_gemma`): our backbone back to an HF folder that
`PaliGemmaForConditionalGeneration.from_pretrained` loads, through the same
rules (`_rules`, each with its inverse) and the Hub checkpoints' tensor names.
A backbone without a sliding window (big_vision's global attention) becomes
Gemma 2 `layer_types` of `"full_attention"` only, which the reader maps back
to no window.

big_vision (`read_pali_gemma_big_vision`, `load_pali_gemma_big_vision`,
`write_pali_gemma_big_vision`): the Flax tree of `models/proj/paligemma`
(`params/img/...` the ViT, `params/llm/...` Gemma, `models/ppp/gemma.py`);
see `read_pali_gemma_big_vision` for the names and layouts.
"""

import math
import os
import re

import numpy as np

from keras_siglip.convert import big_vision as _bv
from keras_siglip.convert.common import Checkpoint, CheckpointMismatch, load_into
from keras_siglip.convert.huggingface import (  # the SigLIP converter's rule helpers and safetensors reader
    _dense, _encoder, _norm, _read_json, _Rule, _same, _tensor_files, read_tensor, tensor_origins,
)

# Tensor namings in the wild -> the one used here (`vision_tower.…`, `multi_modal_projector.…`,
# `language_model.…`, `lm_head.weight`): the Hub checkpoints (transformers 4.4x:
# `vision_tower.vision_model.…`, `language_model.model.…`), transformers 4.5x
# (`model.vision_tower.vision_model.…`, `model.language_model.…`) and 5.x
# (`model.vision_tower.…` in memory, `vision_tower.…` / `language_model.model.…` saved).
_RENAMES = (
    ("model.", ""),
    ("language_model.model.", "language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.vision_model.", "vision_tower."),
)
_TEXT_TYPES = ("gemma", "gemma2")
_GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh")


def _canonical_name(name):
    for old, new in _RENAMES:
        if name.startswith(old):
            name = new + name[len(old):]
    return name


def config_from_hf(hf_config, source="config.json", sliding_window=None):
    """`PaliGemmaBackbone` kwargs from an HF PaliGemma `config.json` dict.

    Raises one `ValueError` listing every setting our model cannot express.
    `sliding_window`: None (big_vision, global attention), `"config"` (HF's
    value for Gemma 2; none when `layer_types` are all `"full_attention"`) or
    an int.
    """
    if hf_config.get("model_type") != "paligemma":
        raise ValueError(
            f"{source}: model_type {hf_config.get('model_type')!r} is not 'paligemma' "
            "(PaliGemmaForConditionalGeneration)."
        )
    v = hf_config.get("vision_config") or {}
    t = hf_config.get("text_config") or {}
    text_type = t.get("model_type", "gemma")
    problems = []
    if text_type not in _TEXT_TYPES:
        problems.append(f"text_config.model_type = {text_type!r} (expected one of {_TEXT_TYPES})")
    gemma2 = text_type == "gemma2"

    def check(section, values, key, expected, default):
        value = values.get(key, default)
        if value not in expected:
            problems.append(f"{section}.{key} = {value!r} (keras_siglip supports {expected})")
        return value

    check("vision_config", v, "hidden_act", _GELU_TANH, "gelu_pytorch_tanh")
    check("vision_config", v, "layer_norm_eps", (1e-6,), 1e-6)
    check("vision_config", v, "vision_use_head", (False,), False)
    check("vision_config", v, "num_channels", (3,), 3)
    check("text_config", t, "rms_norm_eps", (1e-6,), 1e-6)
    check("text_config", t, "attention_bias", (False,), False)
    check("text_config", t, "hidden_activation", _GELU_TANH + (None,), "gelu_pytorch_tanh")
    check("config", hf_config, "tie_word_embeddings", (True,), True)
    rope = t.get("rope_parameters") or {}
    theta = rope.get("rope_theta", t.get("rope_theta", 10_000.0))
    if float(theta) != 10_000.0 or rope.get("rope_type", "default") != "default":
        problems.append(f"text_config RoPE {rope or theta!r} (keras_siglip: default RoPE, theta 10000)")
    width = t.get("hidden_size", 2048)
    projection = hf_config.get("projection_dim", v.get("projection_dim", width))
    if projection != width:
        problems.append(f"projection_dim = {projection} differs from text hidden_size {width}")
    layers = t.get("num_hidden_layers", 18)
    global_only = False
    if gemma2:
        expected_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        layer_types = list(t.get("layer_types") or expected_types)
        global_only = layer_types == ["full_attention"] * layers  # no window (as `write_pali_gemma` writes)
        if layer_types != expected_types and not global_only:
            problems.append("text_config.layer_types is neither Gemma 2's (sliding on even layers) nor "
                            "global attention in every layer")
    image_size = v.get("image_size", 224)
    if not isinstance(image_size, int):
        problems.append(f"vision_config.image_size = {image_size!r} (square int sizes only)")
    if problems:
        raise ValueError(f"{source} asks for what keras_siglip's PaliGemma cannot express:\n  " + "\n  ".join(problems))

    heads = t.get("num_attention_heads", 8)
    config = dict(
        vocabulary_size=t.get("vocab_size", hf_config.get("vocab_size", 257_152)),
        image_size=image_size,
        num_layers=layers,
        num_query_heads=heads,
        num_key_value_heads=t.get("num_key_value_heads", 1),
        hidden_dim=width,
        intermediate_dim=t.get("intermediate_size", 16_384),
        head_dim=t.get("head_dim") or width // heads,
        vit_patch_size=v.get("patch_size", 14),
        vit_hidden_dim=v.get("hidden_size", 1152),
        vit_num_layers=v.get("num_hidden_layers", 27),
        vit_num_heads=v.get("num_attention_heads", 16),
        vit_intermediate_dim=v.get("intermediate_size", 4304),
    )
    if gemma2:
        if sliding_window == "config":
            window = None if global_only else t.get("sliding_window", 4096)
        else:
            window = sliding_window
        config.update(
            query_pre_attn_scalar=t.get("query_pre_attn_scalar", 256),
            attention_logit_soft_cap=t.get("attn_logit_softcapping", 50.0),
            final_logit_soft_cap=t.get("final_logit_softcapping", 30.0),
            use_post_norms=True,
            sliding_window=window,
        )
    return config


def _gemma_rules(config, gemma2):
    """HF language model tensors <-> our `gemma/...` weights."""
    n, k, h, d = (config[key] for key in ("num_query_heads", "num_key_value_heads", "head_dim", "hidden_dim"))

    def heads(hf, ours, count):  # (count*H, D) <-> (count, D, H)
        return _Rule((hf,), (ours,), lambda w: (w.reshape(count, h, d).transpose(0, 2, 1),),
                     lambda x: (x.transpose(0, 2, 1).reshape(count * h, d),))

    def linear(hf, ours):  # (out, in) <-> (in, out)
        return _Rule((hf,), (ours,), lambda w: (w.T,), lambda x: (x.T,))

    lm = "language_model"
    rules = [_same(f"{lm}.embed_tokens.weight", "gemma/token_embedding/embeddings")]
    norms = {"input_layernorm": "pre_attention_norm"}
    if gemma2:
        norms.update(post_attention_layernorm="post_attention_norm", pre_feedforward_layernorm="pre_ffw_norm",
                     post_feedforward_layernorm="post_ffw_norm")
    else:  # Gemma 1's "post_attention_layernorm" normalises the MLP input.
        norms.update(post_attention_layernorm="pre_ffw_norm")
    for i in range(config["num_layers"]):
        hf, ours = f"{lm}.layers.{i}", f"gemma/block_{i}"
        rules += [_same(f"{hf}.{a}.weight", f"{ours}/{b}/scale") for a, b in norms.items()]
        attn = f"{ours}/attention"
        rules += [
            heads(f"{hf}.self_attn.q_proj.weight", f"{attn}/query/kernel", n),
            heads(f"{hf}.self_attn.k_proj.weight", f"{attn}/key/kernel", k),
            heads(f"{hf}.self_attn.v_proj.weight", f"{attn}/value/kernel", k),
            _Rule((f"{hf}.self_attn.o_proj.weight",), (f"{attn}/attention_output/kernel",),
                  lambda w: (w.T.reshape(n, h, d),), lambda x: (x.reshape(n * h, d).T,)),
            linear(f"{hf}.mlp.gate_proj.weight", f"{ours}/ffw_gating/kernel"),
            linear(f"{hf}.mlp.up_proj.weight", f"{ours}/ffw_gating_2/kernel"),
            linear(f"{hf}.mlp.down_proj.weight", f"{ours}/ffw_linear/kernel"),
        ]
    rules.append(_same(f"{lm}.norm.weight", "gemma/final_norm/scale"))
    return rules


def _rules(config, gemma2):
    """Every HF tensor (canonical naming, `_RENAMES`) and its counterpart in our backbone."""
    patch, grid = config["vit_patch_size"], config["image_size"] // config["vit_patch_size"]
    vision = "vision_tower"
    rules = [
        _Rule((f"{vision}.embeddings.patch_embedding.weight",), ("vit/embedding/kernel",),
              lambda w: (w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]),),
              lambda x: (x.reshape(patch, patch, 3, -1).transpose(3, 2, 0, 1),)),
        _same(f"{vision}.embeddings.patch_embedding.bias", "vit/embedding/bias"),
        _Rule((f"{vision}.embeddings.position_embedding.weight",), ("vit/position_embedding/embeddings",),
              lambda p: (p.reshape(grid, grid, -1),), lambda g: (g.reshape(-1, g.shape[-1]),)),
    ]
    rules += _encoder(f"{vision}.encoder", "vit/encoder", config["vit_num_layers"], config["vit_num_heads"])
    rules += _norm(f"{vision}.post_layernorm", "vit/encoder/encoder_norm")
    rules += _dense("multi_modal_projector.linear", "vit/head")
    return rules + _gemma_rules(config, gemma2)


def read_pali_gemma(folder, sliding_window=None):
    """An HF PaliGemma folder as a `Checkpoint` (`config`: `PaliGemmaBackbone` kwargs).

    Args:
        folder: `config.json` and safetensors weights.
        sliding_window: None (big_vision: global attention), `"config"` (HF's
            Gemma 2 window) or an int; see the module docstring.

    Tensors without a counterpart are yielded as `huggingface:<name>` so that
    `load_into` lists them as unexpected; absent ones show up as missing.
    `lm_head.weight` is skipped: the config ties it to the embedding
    (`tie_word_embeddings`, checked), as transformers does when loading.
    The folder's `tokenizer.model` (Gemma SentencePiece + loc/seg tokens), if
    present, becomes the checkpoint's `tokenizer` (`{"proto": bytes}`), and the
    image preprocessing a `PaliGemmaImageConverter` at the model's `image_size`.
    """
    folder = os.fspath(folder)
    config_path = os.path.join(folder, "config.json")
    hf_config = _read_json(config_path)
    if hf_config is None:
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face model folder.")
    config = config_from_hf(hf_config, source=config_path, sliding_window=sliding_window)
    gemma2 = (hf_config.get("text_config") or {}).get("model_type") == "gemma2"
    locations = {_canonical_name(name): (name, path) for name, path in _tensor_files(folder).items()}
    locations.pop("lm_head.weight", None)
    rules = _rules(config, gemma2)
    mapped = {name for rule in rules for name in rule.hf}
    extra = sorted(name for name in locations if name not in mapped)
    present = [rule for rule in rules if all(name in locations for name in rule.hf)]

    def get(name):
        stored, path = locations[name]
        return read_tensor(path, stored)

    def tensors():
        for rule in present:
            arrays = [get(name) for name in rule.hf]
            try:
                converted = rule.to_ours(*arrays)
            except (ValueError, IndexError):  # a layout that cannot be reshaped: reported as mis-shaped
                converted = [arrays[0]] * len(rule.ours)
            yield from zip(rule.ours, converted)
        for name in extra:
            yield f"huggingface:{name}", get(name)

    return Checkpoint(
        config=config,
        tensors=tensors,
        num_tensors=sum(len(rule.ours) for rule in present) + len(extra),
        tokenizer=read_pali_gemma_tokenizer(folder),
        image_converter=pali_gemma_image_converter(config),
        source=f"Hugging Face PaliGemmaForConditionalGeneration {folder}",
        origins=tensor_origins(present, extra, lambda name: locations[name]),
    )


def read_pali_gemma_tokenizer(folder):
    """`{"proto": bytes}` of an HF PaliGemma folder's `tokenizer.model`, or None."""
    path = os.path.join(os.fspath(folder), "tokenizer.model")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return {"proto": f.read()}


def pali_gemma_image_converter(config):
    """`("PaliGemmaImageConverter", kwargs)` for a `PaliGemmaBackbone` config:
    big_vision's preprocessing (bilinear resize to `image_size`, [-1, 1])."""
    size = int(config["image_size"])
    return "PaliGemmaImageConverter", {"image_size": (size, size)}


def load_pali_gemma(folder, sliding_window=None, dtype=None, progress=False, allow_nan=False):
    """Build a `PaliGemmaBackbone` from an HF PaliGemma folder and load its weights.

    Raises `CheckpointMismatch` naming every missing, unexpected and mis-shaped
    tensor, `NonFiniteWeights` for NaN / inf weights unless `allow_nan`. See
    `read_pali_gemma` for `sliding_window`.
    """
    from keras_siglip.models.pali_gemma import PaliGemmaBackbone

    checkpoint = read_pali_gemma(folder, sliding_window=sliding_window)
    backbone = PaliGemmaBackbone(**checkpoint.config, dtype=dtype)
    return load_into(backbone, checkpoint, progress=progress, allow_nan=allow_nan)


# -- writing (Hugging Face) ----------------------------------------------------------

# Canonical names (`_rules`) -> the names the Hub checkpoints store, which every
# transformers version loads (the inverse of `_RENAMES` for them).
_HUB_PREFIXES = (("vision_tower.", "vision_tower.vision_model."), ("language_model.", "language_model.model."))
# `<image>` in HF's PaliGemma vocabulary: right after Gemma's 256,000 pieces and the 1152 loc/seg tokens.
HF_IMAGE_TOKEN_ID = 257_152
_GEMMA_IDS = dict(bos_token_id=2, eos_token_id=1, pad_token_id=0)


def _hub_name(name):
    for canonical, stored in _HUB_PREFIXES:
        if name.startswith(canonical):
            return stored + name[len(canonical):]
    return name


def config_to_hf(config, image_token_index, special_ids=None):
    """The HF `config.json` dict of a `PaliGemmaBackbone` config (`get_config()`).

    Gemma 1 (`use_post_norms=False`) becomes text model_type "gemma", Gemma 2
    "gemma2" with its query scale, soft caps and sliding window (even layers);
    no window becomes `layer_types` all `"full_attention"` (global attention,
    as big_vision; the window value is then unused). `special_ids`: the
    tokenizer's `bos_token_id` / `eos_token_id` / `pad_token_id` (default
    Gemma's 2 / 1 / 0). Raises one `ValueError` listing what HF cannot
    express: NaFlex inputs, Gemma 2 options without Gemma 2's post norms.
    """
    c = dict(config)
    problems = []
    if c.get("input_format", "images") != "images":
        problems.append(f"input_format = {c['input_format']!r} (HF's PaliGemma takes square images at one fixed "
                        "size; NaFlex patches have no counterpart)")
    gemma2 = bool(c.get("use_post_norms"))
    hidden, heads, head_dim = c["hidden_dim"], c["num_query_heads"], c["head_dim"]
    scalar = c.get("query_pre_attn_scalar") or head_dim
    if not gemma2:
        options = [f"{name} = {c[name]}" for name in ("attention_logit_soft_cap", "final_logit_soft_cap",
                                                        "sliding_window") if c.get(name)]
        if scalar != head_dim:
            options.append(f"query_pre_attn_scalar = {scalar}")
        if options:
            problems.append(f"{', '.join(options)} without Gemma 2's post norms (HF's Gemma has none of these; "
                            "its Gemma 2 always has the post norms)")
    if problems:
        raise ValueError("This PaliGemmaBackbone has no Hugging Face counterpart: " + "; ".join(problems) + ".")
    ids = dict(_GEMMA_IDS, **(special_ids or {}))
    vision = dict(
        model_type="siglip_vision_model", hidden_size=c["vit_hidden_dim"], intermediate_size=c["vit_intermediate_dim"],
        num_hidden_layers=c["vit_num_layers"], num_attention_heads=c["vit_num_heads"], num_channels=3,
        image_size=c["image_size"], patch_size=c["vit_patch_size"], hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6, attention_dropout=0.0, vision_use_head=False, projection_dim=hidden,
    )
    text = dict(
        model_type="gemma2" if gemma2 else "gemma", vocab_size=c["vocabulary_size"], hidden_size=hidden,
        intermediate_size=c["intermediate_dim"], num_hidden_layers=c["num_layers"], num_attention_heads=heads,
        num_key_value_heads=c["num_key_value_heads"], head_dim=head_dim, hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=8192, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_bias=False, attention_dropout=0.0, tie_word_embeddings=True, **ids,
    )
    if gemma2:
        window = c.get("sliding_window")
        layers = c["num_layers"]
        text.update(
            query_pre_attn_scalar=scalar,
            attn_logit_softcapping=c.get("attention_logit_soft_cap") or None,
            final_logit_softcapping=c.get("final_logit_soft_cap") or None,
            sliding_window=window or 4096,
            layer_types=[("sliding_attention" if window and i % 2 == 0 else "full_attention") for i in range(layers)],
        )
    return {
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "model_type": "paligemma",
        "dtype": "float32",
        "image_token_index": int(image_token_index),
        "vocab_size": c["vocabulary_size"],
        "projection_dim": hidden,
        "hidden_size": hidden,
        "tie_word_embeddings": True,
        "text_config": text,
        "vision_config": vision,
    }


def image_token_id(tokenizer, vocabulary_size):
    """The id of HF's `<image>` placeholder: the tokenizer's own `<image>`
    piece, else the first id after its pieces (where HF's processor adds it:
    257,152 for the released vocabulary); without a tokenizer HF's 257,152,
    or the vocabulary size when smaller (transformers embeds an id past the
    vocabulary as padding before putting the image features there)."""
    if tokenizer is None:
        return min(int(vocabulary_size), HF_IMAGE_TOKEN_ID)
    vocabulary = tokenizer.get_vocabulary()
    return vocabulary.index("<image>") if "<image>" in vocabulary else len(vocabulary)


def write_pali_gemma(backbone, folder, tokenizer=None, image_converter=None):
    """Export a `PaliGemmaBackbone` to an HF folder that
    `transformers.PaliGemmaForConditionalGeneration.from_pretrained` loads.

    Writes `config.json` (`config_to_hf`), `model.safetensors` (float32, the
    Hub checkpoints' tensor names; the LM head is tied to the embedding) and
    `generation_config.json`; with a `PaliGemmaTokenizer`, its SentencePiece
    model as `tokenizer.model` and a `tokenizer_config.json`
    (`GemmaTokenizer` + `PaliGemmaProcessor`, `<image>` pinned to the id
    `config.json` names); with a `PaliGemmaImageConverter`,
    `preprocessor_config.json` (transformers' `SiglipImageProcessor`, with
    `image_seq_length`; see `huggingface.write_huggingface` for the resize
    filter). The folder is written into a temporary sibling that then
    replaces `folder` whole. Returns `folder`.
    """
    from keras import ops
    from safetensors.numpy import save_file

    from keras_siglip.convert.huggingface import _preprocessor_config
    from keras_siglip.utils.atomic import atomic_directory

    config = backbone.get_config()
    special_ids = None
    if tokenizer is not None:
        special_ids = dict(bos_token_id=int(tokenizer.start_token_id), eos_token_id=int(tokenizer.end_token_id),
                           pad_token_id=int(tokenizer.pad_token_id))
    image_token = image_token_id(tokenizer, config["vocabulary_size"])
    hf_config = config_to_hf(config, image_token, special_ids)  # refuses what HF cannot express
    preprocessor_config = None
    if image_converter is not None:
        if "max_num_patches" in image_converter.get_config():
            raise ValueError("A NaFlex image converter has no Hugging Face PaliGemma counterpart.")
        preprocessor_config = dict(_preprocessor_config(image_converter), processor_class="PaliGemmaProcessor",
                                   image_seq_length=backbone.num_image_tokens)
    weights = {variable.path: variable for variable in backbone.weights}
    rules = _rules(config, gemma2=bool(config.get("use_post_norms")))
    missing = sorted(path for rule in rules for path in rule.ours if path not in weights)
    unused = sorted(set(weights) - {path for rule in rules for path in rule.ours})
    if missing or unused:
        raise ValueError(f"The backbone's weights do not fit a Hugging Face PaliGemma: missing {missing}, "
                         f"without a counterpart {unused}.")
    tensors = {}
    for rule in rules:
        ours = [np.asarray(ops.convert_to_numpy(weights[path]), dtype="float32") for path in rule.ours]
        tensors.update((_hub_name(name), np.ascontiguousarray(a)) for name, a in zip(rule.hf, rule.to_hf(*ours)))
    text = hf_config["text_config"]
    generation = {key: text[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    with atomic_directory(folder, merge=False) as tmp:
        _write_json(os.path.join(tmp, "config.json"), hf_config)
        _write_json(os.path.join(tmp, "generation_config.json"), generation)
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            with open(os.path.join(tmp, "tokenizer.model"), "wb") as f:
                f.write(tokenizer.proto)
            _write_json(os.path.join(tmp, "tokenizer_config.json"), _tokenizer_config(tokenizer, image_token))
        if preprocessor_config is not None:
            _write_json(os.path.join(tmp, "preprocessor_config.json"), preprocessor_config)
    return folder


def _write_json(path, value):
    import json

    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def _tokenizer_config(tokenizer, image_token):
    """HF's PaliGemma `tokenizer_config.json`: Gemma's tokenizer with BOS and
    without EOS (the processor adds both where the layout needs them), and
    `<image>` at `image_token` (an added token unless it is a piece)."""
    settings = dict(
        tokenizer_class="GemmaTokenizer", processor_class="PaliGemmaProcessor", add_bos_token=True,
        add_eos_token=False, bos_token=tokenizer.start_token, eos_token=tokenizer.end_token,
        pad_token=tokenizer.pad_token, unk_token="<unk>", clean_up_tokenization_spaces=False,
        extra_special_tokens={"image_token": "<image>"},
    )
    if image_token == tokenizer.vocabulary_size():  # not a piece: HF adds it there
        settings["added_tokens_decoder"] = {str(image_token): dict(
            content="<image>", lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)}
    return settings


# -- big_vision ----------------------------------------------------------------------
#
# The Gemma block (`models/ppp/gemma.py` `Block`, params under `llm/layers/`):
# scanned (`scan=True`, the released checkpoints) with a leading depth axis on
# every leaf, or per layer under `llm/layers/{i}/`. N query heads, K key/value
# heads, H head_dim, D width, F MLP width:
#
#     attn/q_einsum/w          (N, D, H)      -> attention/query/kernel       (same)
#     attn/kv_einsum/w         (2, K, D, H)   -> attention/key|value/kernel   [0] | [1]
#     attn/qkv_einsum/w        (3, N, D, H)   -> query | key | value (N == K, Gemma 7B)
#     attn/attn_vec_einsum/w   (N, H, D)      -> attention/attention_output/kernel
#     mlp/gating_einsum        (2, D, F)      -> ffw_gating [0] (gelu) | ffw_gating_2 [1]
#                                                ((2, F, D) is transposed, as big_vision does)
#     mlp/linear               (F, D)         -> ffw_linear/kernel
#     {pre_attention,pre_ffw,post_attention,post_ffw}_norm/scale (D,)   (post: Gemma 2)

_LLM_NAMES = {
    "llm/embedder/input_embedding": "gemma/token_embedding/embeddings",
    "llm/final_norm/scale": "gemma/final_norm/scale",
}
# block leaf -> [(our leaf, index into the leaf's own axes or None)]
_LLM_BLOCK = {
    **{f"{n}/scale": [(f"{n}/scale", None)]
       for n in ("pre_attention_norm", "post_attention_norm", "pre_ffw_norm", "post_ffw_norm")},
    "attn/q_einsum/w": [("attention/query/kernel", None)],
    "attn/kv_einsum/w": [("attention/key/kernel", 0), ("attention/value/kernel", 1)],
    "attn/qkv_einsum/w": [("attention/query/kernel", 0), ("attention/key/kernel", 1),
                          ("attention/value/kernel", 2)],
    "attn/attn_vec_einsum/w": [("attention/attention_output/kernel", None)],
    "mlp/gating_einsum": [("ffw_gating/kernel", 0), ("ffw_gating_2/kernel", 1)],
    "mlp/linear": [("ffw_linear/kernel", None)],
}
_LLM_LAYER = re.compile(r"llm/layers/(?:(\d+)/)?(.+)")
# Gemma 2 27B (PaliGemma 2 28B) scales queries by (D / N) ** -0.5 (big_vision's
# `query_pre_attn_norm="rsqrt_emb_per_head"`); every other variant by H ** -0.5.
# Shapes cannot tell the two apart, so the 27B shapes select it.
_GEMMA2_27B = dict(hidden_dim=4608, num_query_heads=32, head_dim=128)
AUTO = "auto"


def _pg_our_paths(key, shape, npz_key=None):
    """`[(our path, index or None)]` of one leaf of a PaliGemma tree."""
    if key in _LLM_NAMES:
        return [(_LLM_NAMES[key], None)]
    match = _LLM_LAYER.fullmatch(key)
    if match and match[2] in _LLM_BLOCK:
        if match[1] is not None:
            return [(f"gemma/block_{match[1]}/{ours}", None if sub is None else (sub,))
                    for ours, sub in _LLM_BLOCK[match[2]]]
        if shape:
            return [(f"gemma/block_{i}/{ours}", (i,) if sub is None else (i, sub))
                    for i in range(shape[0]) for ours, sub in _LLM_BLOCK[match[2]]]
    if key.startswith("img/"):
        return _bv._our_paths(key, shape, npz_key)
    return [(npz_key or key, None)]


def _pg_to_ours(key, value, config):
    if key == "img/embedding/kernel":  # conv (P, P, C, W) -> Dense (P*P*C, W)
        shape = (-1, value.shape[-1])
    elif key == "img/pos_embedding":  # (1, g*g, W) -> (g, g, W)
        grid = config["image_size"] // config["vit_patch_size"]
        shape = (grid, grid, value.shape[-1])
    elif key.endswith("mlp/gating_einsum"):  # one (D, F) half; (F, D) when stored transposed
        if value.ndim == 2 and value.shape[0] != config["hidden_dim"] and value.shape[1] == config["hidden_dim"]:
            return value.T
        return value
    else:
        return value
    try:
        return np.reshape(value, shape)
    except ValueError:  # left as stored: `load_into` reports it as mis-shaped
        return value


def infer_pali_gemma_config(shapes, query_pre_attn_scalar=AUTO, attention_logit_soft_cap=AUTO,
                            final_logit_soft_cap=AUTO):
    """`PaliGemmaBackbone` kwargs from the leaf shapes of a big_vision PaliGemma tree.

    Read from the shapes: the ViT's patch size, width, depth, heads, MLP width
    and image size (square position grid times the patch); Gemma's vocabulary
    and width (embedding), depth (scan axis or `layers/{i}` count), query and
    key/value heads and head_dim (the einsums), MLP width (gating einsum) and
    generation (Gemma 2 has post norms). Not in the shapes, given as args with
    these `"auto"` defaults: the Gemma 2 soft caps (big_vision's `gemma.py`
    variants: attention 50, final 30; Gemma 1: none) and the query scale
    (head_dim, except the Gemma 2 27B shapes: width / heads = 144).

    big_vision itself applies the final cap only when decoding (`prefill` /
    `extend`); its scoring forward (`text_logits`, the training loss) skips
    it. A cap changes no argmax, so greedy outputs agree either way.
    """

    def need(key):
        if key not in shapes:
            raise CheckpointMismatch(f"The checkpoint lacks {key!r}, from which the architecture is read.")
        return shapes[key]

    kernel, positions = need("img/embedding/kernel"), need("img/pos_embedding")
    if len(kernel) != 4 or kernel[2] != 3:
        raise CheckpointMismatch(f"img/embedding/kernel {kernel} is not an RGB conv patch kernel (P, P, 3, W).")
    side = math.isqrt(positions[-2])
    if side * side != positions[-2]:
        raise CheckpointMismatch(f"img/pos_embedding {positions} is not a square grid of patches.")
    vit = _bv._encoder(shapes, "img/Transformer", need)
    vocabulary, width = need("llm/embedder/input_embedding")

    scanned = any(key.startswith("llm/layers/") and _LLM_LAYER.fullmatch(key)[1] is None for key in shapes)
    if scanned:
        prefix, axis = "llm/layers", 1
    else:
        layers = sorted({int(m[1]) for key in shapes if (m := _LLM_LAYER.fullmatch(key)) and m[1] is not None})
        if not layers:
            raise CheckpointMismatch("The checkpoint has no Gemma layers under llm/layers/.")
        prefix, axis = f"llm/layers/{layers[0]}", 0

    def leaf(name):
        return shapes.get(f"{prefix}/{name}")

    depth = need(f"{prefix}/pre_attention_norm/scale")[0] if scanned else max(layers) + 1
    if leaf("attn/qkv_einsum/w") is not None:  # (3, N, D, H): multi-head
        _, heads, _, head_dim = leaf("attn/qkv_einsum/w")[axis:]
        kv_heads = heads
    else:
        heads, _, head_dim = need(f"{prefix}/attn/q_einsum/w")[axis:]
        kv_heads = need(f"{prefix}/attn/kv_einsum/w")[axis + 1]
    gating = need(f"{prefix}/mlp/gating_einsum")[axis:]
    intermediate = gating[2] if gating[1] == width else gating[1]
    gemma2 = leaf("post_attention_norm/scale") is not None
    config = dict(
        vocabulary_size=vocabulary, image_size=side * kernel[0], num_layers=depth,
        num_query_heads=heads, num_key_value_heads=kv_heads, hidden_dim=width,
        intermediate_dim=intermediate, head_dim=head_dim,
        vit_patch_size=kernel[0], vit_hidden_dim=kernel[-1], vit_num_layers=vit["depth"],
        vit_num_heads=vit["num_heads"], vit_intermediate_dim=vit["mlp_dim"],
    )
    is_27b = all(config[k] == v for k, v in _GEMMA2_27B.items()) and gemma2
    defaults = dict(
        query_pre_attn_scalar=width // heads if is_27b else None,
        attention_logit_soft_cap=50.0 if gemma2 else None,
        final_logit_soft_cap=30.0 if gemma2 else None,
    )
    given = dict(query_pre_attn_scalar=query_pre_attn_scalar, attention_logit_soft_cap=attention_logit_soft_cap,
                 final_logit_soft_cap=final_logit_soft_cap)
    for name, value in given.items():
        config[name] = defaults[name] if isinstance(value, str) and value == AUTO else (value or None)
    config.update(use_post_norms=gemma2, sliding_window=None)
    return config


_OPTIONS = ("query_pre_attn_scalar", "attention_logit_soft_cap", "final_logit_soft_cap", "sliding_window")


def _given_config(config):
    """A PaliGemma preset card name, a card, or `PaliGemmaBackbone` kwargs -> kwargs."""
    if isinstance(config, str):
        from keras_siglip.presets.pali_gemma import PALI_GEMMA_PRESETS

        if config not in PALI_GEMMA_PRESETS:
            raise ValueError(f"Unknown PaliGemma preset {config!r}; known: {', '.join(sorted(PALI_GEMMA_PRESETS))}.")
        config = PALI_GEMMA_PRESETS[config]
    return dict(config.get("config", config))


def read_pali_gemma_big_vision(path, query_pre_attn_scalar=AUTO, attention_logit_soft_cap=AUTO,
                               final_logit_soft_cap=AUTO, progress=None, config=None):
    """A big_vision PaliGemma 1 / 2 `.npz` as a `Checkpoint` (`config`:
    `PaliGemmaBackbone` kwargs).

    The tree (reference: big_vision `models/proj/paligemma/paligemma.py`,
    `models/vit.py`, `models/ppp/gemma.py`; keys with or without `params/`):

        img/embedding/kernel (P, P, 3, W), bias (W,)   -> vit/embedding (Dense (P*P*3, W))
        img/pos_embedding (1, g*g, W)                  -> vit/position_embedding (g, g, W)
        img/Transformer/encoderblock[_i]/...           the SigLIP ViT block names
                                                       (scanned: leading depth axis)
        img/Transformer/encoder_norm/{scale,bias}
        img/head/{kernel (W, D), bias (D,)}            -> vit/head, the projector
        llm/embedder/input_embedding (V, D)            -> gemma/token_embedding (tied output)
        llm/layers[/i]/...                             the Gemma block (table above)
        llm/final_norm/scale (D,)

    bfloat16 leaves (numpy void of itemsize 2) are read as bfloat16. Gemma 2's
    soft caps and the query scale are not in the file: see
    `infer_pali_gemma_config` for the `"auto"` defaults; pass numbers (or None
    for no cap) to override, e.g. `final_logit_soft_cap=None` for a model
    fine-tuned with big_vision's PaliGemma 2 transfer configs (cap 0). The
    decoder uses global attention in every layer, as big_vision does.

    `config`: optional `PaliGemmaBackbone` kwargs, card or PaliGemma preset
    name (`PALI_GEMMA_PRESETS`): its soft caps, query scalar and sliding window
    are used (over the `"auto"` defaults; explicit args win) and every other
    key must agree with the shapes, else a `CheckpointMismatch` lists the
    differences.
    """
    path = os.fspath(path)
    leaves = _bv._leaves(path, groups=("img", "llm"), model="PaliGemma")
    shapes = {key: shape for key, (_, shape, _) in leaves.items()}
    given = _given_config(config) if config is not None else {}
    options = dict(query_pre_attn_scalar=query_pre_attn_scalar, attention_logit_soft_cap=attention_logit_soft_cap,
                   final_logit_soft_cap=final_logit_soft_cap)
    for name in options:
        if name in given and isinstance(options[name], str) and options[name] == AUTO:
            options[name] = given[name]
    try:
        inferred = infer_pali_gemma_config(shapes, **options)
    except ValueError as error:
        raise type(error)(f"{path}: {error}") from None
    differences = [f"  {key}: checkpoint {inferred[key]!r} vs config {value!r}" for key, value in given.items()
                   if key in inferred and key not in _OPTIONS and inferred[key] != value]
    unknown = sorted(key for key in given if key not in inferred)
    if differences or unknown:
        lines = differences + ([f"  unknown keys: {unknown}"] if unknown else [])
        raise CheckpointMismatch(f"{path} does not match the given config:\n" + "\n".join(lines))
    config = {**inferred, "sliding_window": given.get("sliding_window")}
    return Checkpoint(
        config=config,
        tensors=lambda: _bv._tensors(path, leaves, config, progress, _pg_our_paths, _pg_to_ours),
        num_tensors=sum(len(_pg_our_paths(key, shape)) for key, shape in shapes.items()),
        source=f"big_vision PaliGemma checkpoint {path}",
        origins=_bv.origins(leaves, _pg_our_paths),
    )


def load_pali_gemma_big_vision(path, dtype=None, progress=False, allow_nan=False, **kwargs):
    """Build a `PaliGemmaBackbone` from a big_vision PaliGemma `.npz` and load it.

    `kwargs`: the Gemma 2 options of `read_pali_gemma_big_vision`. Raises
    `CheckpointMismatch` naming every missing, unexpected and mis-shaped tensor,
    `NonFiniteWeights` for NaN / inf weights unless `allow_nan`.
    """
    from keras_siglip.models.pali_gemma import PaliGemmaBackbone

    checkpoint = read_pali_gemma_big_vision(path, **kwargs)
    return load_into(PaliGemmaBackbone(**checkpoint.config, dtype=dtype), checkpoint, progress=progress,
                     allow_nan=allow_nan)


def write_pali_gemma_big_vision(backbone, path, scan=True):
    """Save a `PaliGemmaBackbone` as a big_vision PaliGemma `.npz` (`params/...` keys).

    `scan=True` stacks the ViT blocks under `img/Transformer/encoderblock` and
    the Gemma layers under `llm/layers` (the released layout); `scan=False`
    writes `encoderblock_{i}` and `llm/layers/{i}`. Multi-head models (N == K)
    get `qkv_einsum`, others `q_einsum` + `kv_einsum`. bfloat16 weights are
    stored as numpy void of itemsize 2. The soft caps and query scale are not
    part of the tree (pass them to the reader).
    """
    from keras import ops
    import ml_dtypes

    vit_names = {ours: bv for bv, ours in _bv.NAMES.items() if bv.startswith("img/")}
    vit_block = {ours: bv for bv, ours in _bv.BLOCK.items()}
    values = {}
    for variable in backbone.weights:
        value = ops.convert_to_numpy(variable)
        if value.dtype == ml_dtypes.bfloat16:
            value = value.view("V2")
        values[variable.path] = value
    vit = backbone.vit
    config = backbone.get_config()
    tree, stacks = {}, {}

    def put(key, depth_index, value, stack_prefix, layer_prefix):
        if scan:
            stacks.setdefault(f"{stack_prefix}/{key}", {})[depth_index] = value
        else:
            tree[f"{layer_prefix}/{key}"] = value

    for name, value in values.items():
        if name.startswith("vit/"):
            if match := re.fullmatch(r"vit/encoder/block_(\d+)/(.+)", name):
                i = int(match[1])
                put(vit_block[match[2]], i, value, "img/Transformer/encoderblock",
                    f"img/Transformer/encoderblock_{i}")
                continue
            key = vit_names[name]
            if key == "img/embedding/kernel":
                value = value.reshape(vit.patch_size, vit.patch_size, 3, -1)
            elif key == "img/pos_embedding":
                value = value.reshape(1, -1, value.shape[-1])
            tree[key] = value
    names = {ours: bv for bv, ours in _LLM_NAMES.items()}
    tree.update({names[n]: values[n] for n in names})
    multi_head = config["num_query_heads"] == config["num_key_value_heads"]
    for i in range(config["num_layers"]):
        block = {leaf: values[f"gemma/block_{i}/{leaf}"] for leaf in (
            "pre_attention_norm/scale", "pre_ffw_norm/scale", "post_attention_norm/scale", "post_ffw_norm/scale",
            "attention/query/kernel", "attention/key/kernel", "attention/value/kernel",
            "attention/attention_output/kernel", "ffw_gating/kernel", "ffw_gating_2/kernel",
            "ffw_linear/kernel") if f"gemma/block_{i}/{leaf}" in values}
        leaves = {f"{n}/scale": block[f"{n}/scale"] for n in ("pre_attention_norm", "pre_ffw_norm", "post_attention_norm",
                                                  "post_ffw_norm") if f"{n}/scale" in block}
        q, k, v = (block[f"attention/{n}/kernel"] for n in ("query", "key", "value"))
        if multi_head:
            leaves["attn/qkv_einsum/w"] = np.stack([q, k, v])
        else:
            leaves["attn/q_einsum/w"] = q
            leaves["attn/kv_einsum/w"] = np.stack([k, v])
        leaves["attn/attn_vec_einsum/w"] = block["attention/attention_output/kernel"]
        leaves["mlp/gating_einsum"] = np.stack([block["ffw_gating/kernel"], block["ffw_gating_2/kernel"]])
        leaves["mlp/linear"] = block["ffw_linear/kernel"]
        for key, value in leaves.items():
            put(key, i, value, "llm/layers", f"llm/layers/{i}")
    for key, blocks in stacks.items():
        tree[key] = np.stack([blocks[i] for i in range(len(blocks))])
    np.savez(path, **{f"params/{key}": value for key, value in tree.items()})
