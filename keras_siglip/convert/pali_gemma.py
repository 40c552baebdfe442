"""Hugging Face `PaliGemmaForConditionalGeneration` folders -> `PaliGemmaBackbone`.

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
"""

import os

from keras_siglip.convert.common import Checkpoint, load_into
from keras_siglip.convert.huggingface import (  # the SigLIP converter's rule helpers and safetensors reader
    _dense, _encoder, _norm, _read_json, _Rule, _safe_open, _same, _tensor_files,
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
    value for Gemma 2) or an int.
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
    if gemma2:
        expected_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        layer_types = t.get("layer_types") or expected_types
        if list(layer_types) != expected_types:
            problems.append("text_config.layer_types is not Gemma 2's (sliding on even layers)")
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
        window = t.get("sliding_window", 4096) if sliding_window == "config" else sliding_window
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
        with _safe_open(path) as f:
            return f.get_tensor(stored)

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
        source=f"Hugging Face PaliGemmaForConditionalGeneration {folder}",
    )


def load_pali_gemma(folder, sliding_window=None, dtype=None, progress=False):
    """Build a `PaliGemmaBackbone` from an HF PaliGemma folder and load its weights.

    Raises `CheckpointMismatch` naming every missing, unexpected and mis-shaped
    tensor. See `read_pali_gemma` for `sliding_window`.
    """
    from keras_siglip.models.pali_gemma import PaliGemmaBackbone

    checkpoint = read_pali_gemma(folder, sliding_window=sliding_window)
    backbone = PaliGemmaBackbone(**checkpoint.config, dtype=dtype)
    return load_into(backbone, checkpoint, progress=progress)
