"""Test-local helpers: a random Hugging Face `SiglipModel` and an exact weight copy.

Not a test module. The parity tests use these to build a tiny `transformers`
SigLIP with random weights (no download), copy every tensor onto a
`SigLIPBackbone`, and compare outputs.

`copy_hf_to_keras` is strict on purpose: every Keras weight must be assigned
exactly once, every HF parameter must be used, and every shape must match, so a
missing, duplicated or mis-shaped mapping fails loudly instead of leaving a
randomly initialised weight behind.
"""

import numpy as np
import torch
import transformers

# HF hyper-parameters that our towers hard-code (big_vision numerics).
_FIXED = {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}


def hf_config(vision, text, naflex=False):
    """A `transformers.SiglipConfig` from two dicts of HF sub-config kwargs.

    The text `projection_size` defaults to the vision width (the embedding
    width of every released SigLIP).
    """
    # Token ids of the T5 SentencePiece convention (eos = pad = 1, no BOS); they do
    # not affect the model, but HF warns when its CLIP defaults (49406/49407) lie
    # outside a tiny vocabulary.
    text = {"projection_size": vision["hidden_size"], "bos_token_id": None, "eos_token_id": 1,
            "pad_token_id": 1, **text}
    if naflex:
        return transformers.Siglip2Config(
            vision_config=transformers.Siglip2VisionConfig(**vision),
            text_config=transformers.Siglip2TextConfig(**text),
        )
    return transformers.SiglipConfig(
        vision_config=transformers.SiglipVisionConfig(**vision),
        text_config=transformers.SiglipTextConfig(**text),
    )


def hf_config_from_keras(config):
    """The `SiglipConfig` equivalent to a `SigLIPBackbone` config dict.

    `config` has the preset-card layout `{"vision_encoder": {...},
    "text_encoder": {...}}`. HF always has a text head; a head-less Keras text
    encoder maps to an HF head of `projection_size = text width`.
    """
    v, t = config["vision_encoder"], config["text_encoder"]
    if v.get("pooling", "map") != "map" or t.get("pooling", "last") != "last":
        raise ValueError("HF SigLIP has only MAP image pooling and last-token text pooling.")
    image_size = v["image_size"]
    if not isinstance(image_size, int):
        raise ValueError("HF SiglipVisionConfig supports square image sizes only.")
    naflex = v.get("input_format", "images") != "images"
    size = {"num_patches": (image_size // v["patch_size"]) ** 2} if naflex else {"image_size": image_size}
    return hf_config(
        vision=dict(
            hidden_size=v["width"],
            intermediate_size=v["mlp_dim"],
            num_hidden_layers=v["depth"],
            num_attention_heads=v["num_heads"],
            patch_size=v["patch_size"],
            **size,
        ),
        text=dict(
            vocab_size=t["vocabulary_size"],
            hidden_size=t["width"],
            intermediate_size=t["mlp_dim"],
            num_hidden_layers=t["depth"],
            num_attention_heads=t["num_heads"],
            max_position_embeddings=t["sequence_length"],
            projection_size=t.get("num_classes") or t["width"],
        ),
        naflex=naflex,
    )


def keras_config_from_hf(hf_config):
    """`{"vision_encoder": kwargs, "text_encoder": kwargs}` for our two encoders.

    The kwargs build `SigLIPVisionEncoder(**...)` and `SigLIPTextEncoder(**...)`;
    the dict also has the layout `presets.parameter_count` takes.
    """
    v, t = hf_config.vision_config, hf_config.text_config
    for sub in (v, t):
        for key, value in _FIXED.items():
            if getattr(sub, key) != value:
                raise ValueError(f"Our towers fix {key}={value!r}; HF config has {getattr(sub, key)!r}.")
    if not v.vision_use_head:
        raise ValueError("Our SigLIP image tower always has a MAP head (vision_use_head=True).")
    naflex = isinstance(v, transformers.Siglip2VisionConfig)
    if naflex:  # a learned (G, G) grid; the "image size" of our card is G * P
        grid = int(round(np.sqrt(v.num_patches)))
        image = dict(image_size=grid * v.patch_size, input_format="naflex")
    else:
        image = dict(image_size=v.image_size)
    return {
        "vision_encoder": dict(
            patch_size=v.patch_size,
            width=v.hidden_size,
            depth=v.num_hidden_layers,
            num_heads=v.num_attention_heads,
            mlp_dim=v.intermediate_size,
            num_channels=v.num_channels,
            **image,
        ),
        "text_encoder": dict(
            vocabulary_size=t.vocab_size,
            width=t.hidden_size,
            depth=t.num_hidden_layers,
            num_heads=t.num_attention_heads,
            mlp_dim=t.intermediate_size,
            sequence_length=t.max_position_embeddings,
            num_classes=t.projection_size,
        ),
    }


def build_hf_siglip(vision, text, seed=0, noise=0.1, naflex=False):
    """A random, fully perturbed `transformers.SiglipModel` in eval mode (float32).

    Args:
        vision, text: HF `SiglipVisionConfig` / `SiglipTextConfig` kwargs
            (`Siglip2VisionConfig` / `Siglip2TextConfig` with `naflex=True`,
            which builds a NaFlex `transformers.Siglip2Model`).
        seed: torch seed for the initialisation and the perturbation.
        noise: std of the Gaussian noise added to every parameter.

    HF initialises attention biases to 0, LayerNorm scales to 1 and the logit
    scale and bias to 0; a mapping that dropped or swapped such a parameter
    would go unnoticed. Every parameter is therefore shifted by independent
    noise. The logit scale and bias are then moved to the from-scratch SigLIP
    values (t = log 10, b = -10) so logits have a realistic magnitude.

    One parameter cannot show in any output even so: an attention key bias adds
    the same amount to every attention logit of a query, which softmax ignores.
    `copy_hf_to_keras` still checks that it is mapped.
    """
    torch.manual_seed(seed)
    model_class = transformers.Siglip2Model if naflex else transformers.SiglipModel
    model = model_class(hf_config(vision, text, naflex)).float().eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(noise * torch.randn(param.shape, generator=generator))
        model.logit_scale.add_(float(np.log(10.0)))
        model.logit_bias.add_(-10.0)
    return model


def _linear_to_heads(weight, bias, num_heads):
    """HF `Linear(W -> W)` q/k/v (out, in) -> Keras EinsumDense `(W, H, hd)`, `(H, hd)`."""
    out_dim, in_dim = weight.shape
    head_dim = out_dim // num_heads
    return weight.T.reshape(in_dim, num_heads, head_dim), bias.reshape(num_heads, head_dim)


def _attention_pairs(prefix, q, k, v, out_w, out_b, num_heads):
    """(keras path, value) pairs of one attention layer, from HF (out, in) tensors."""
    pairs = []
    for name, (weight, bias) in (("query", q), ("key", k), ("value", v)):
        kernel, b = _linear_to_heads(weight, bias, num_heads)
        pairs += [(f"{prefix}/{name}/kernel", kernel), (f"{prefix}/{name}/bias", b)]
    width = out_w.shape[0]
    head_dim = out_w.shape[1] // num_heads
    pairs += [
        (f"{prefix}/attention_output/kernel", out_w.T.reshape(num_heads, head_dim, width)),
        (f"{prefix}/attention_output/bias", out_b),
    ]
    return pairs


def copy_hf_to_keras(hf_model, keras_backbone):
    """Copy every parameter of an HF `SiglipModel` onto a `SigLIPBackbone`.

    Raises `AssertionError` unless each Keras weight is assigned exactly once
    with a tensor of its exact shape and every HF parameter is consumed.
    """
    hf = {name: p.detach().cpu().numpy().astype(np.float32) for name, p in hf_model.named_parameters()}
    used = set()

    def take(name):
        assert name in hf, f"HF has no parameter {name!r}"
        assert name not in used, f"HF parameter {name!r} used twice"
        used.add(name)
        return hf[name]

    def linear(prefix):
        return take(f"{prefix}.weight"), take(f"{prefix}.bias")

    def layer_norm(hf_prefix, keras_prefix):
        return [(f"{keras_prefix}/gamma", take(f"{hf_prefix}.weight")), (f"{keras_prefix}/beta", take(f"{hf_prefix}.bias"))]

    def mlp(hf_prefix, keras_prefix):
        pairs = []
        for hf_name, keras_name in (("fc1", "dense_0"), ("fc2", "dense_1")):
            weight, bias = linear(f"{hf_prefix}.{hf_name}")
            pairs += [(f"{keras_prefix}/{keras_name}/kernel", weight.T), (f"{keras_prefix}/{keras_name}/bias", bias)]
        return pairs

    def encoder(hf_prefix, keras_prefix, depth, num_heads, final_norm):
        pairs = []
        for i in range(depth):
            h, k = f"{hf_prefix}.layers.{i}", f"{keras_prefix}/block_{i}"
            pairs += layer_norm(f"{h}.layer_norm1", f"{k}/layer_norm_0")
            pairs += _attention_pairs(
                f"{k}/attention",
                linear(f"{h}.self_attn.q_proj"),
                linear(f"{h}.self_attn.k_proj"),
                linear(f"{h}.self_attn.v_proj"),
                *linear(f"{h}.self_attn.out_proj"),
                num_heads,
            )
            pairs += layer_norm(f"{h}.layer_norm2", f"{k}/layer_norm_1")
            pairs += mlp(f"{h}.mlp", f"{k}/mlp")
        pairs += layer_norm(final_norm, f"{keras_prefix}/encoder_norm")
        return pairs

    vc, tc = hf_model.config.vision_config, hf_model.config.text_config
    pairs = []

    # Image tower.
    patch = take("vision_model.embeddings.patch_embedding.weight")
    width = patch.shape[0]
    if patch.ndim == 4:  # SigLIP: Conv2d (W, C, P, P)
        kernel = patch.transpose(2, 3, 1, 0).reshape(-1, width)
    else:  # SigLIP 2 NaFlex: Linear (W, P*P*C) over (py, px, c) patches
        kernel = patch.T
    pairs.append(("vit/embedding/kernel", kernel))
    pairs.append(("vit/embedding/bias", take("vision_model.embeddings.patch_embedding.bias")))
    positions = take("vision_model.embeddings.position_embedding.weight")  # (G*G, W), square grid
    grid = int(round(np.sqrt(positions.shape[0])))
    pairs.append(("vit/position_embedding/embeddings", positions.reshape(grid, grid, width)))
    pairs += encoder(
        "vision_model.encoder", "vit/encoder", vc.num_hidden_layers, vc.num_attention_heads,
        "vision_model.post_layernorm",
    )
    pairs.append(("vit/map_head/probe", take("vision_model.head.probe")))
    in_w = np.split(take("vision_model.head.attention.in_proj_weight"), 3, axis=0)
    in_b = np.split(take("vision_model.head.attention.in_proj_bias"), 3, axis=0)
    pairs += _attention_pairs(
        "vit/map_head/attention",
        (in_w[0], in_b[0]), (in_w[1], in_b[1]), (in_w[2], in_b[2]),
        *linear("vision_model.head.attention.out_proj"),
        vc.num_attention_heads,
    )
    pairs += layer_norm("vision_model.head.layernorm", "vit/map_head/layer_norm")
    pairs += mlp("vision_model.head.mlp", "vit/map_head/mlp")

    # Text tower.
    pairs.append(("transformer/token_embedding/embeddings", take("text_model.embeddings.token_embedding.weight")))
    pairs.append(("transformer/position_embedding", take("text_model.embeddings.position_embedding.weight")))
    pairs += encoder(
        "text_model.encoder", "transformer/encoder", tc.num_hidden_layers, tc.num_attention_heads,
        "text_model.final_layer_norm",
    )
    head_w, head_b = linear("text_model.head")
    pairs += [("transformer/head/kernel", head_w.T), ("transformer/head/bias", head_b)]

    # Two-tower head.
    pairs.append(("contrastive_head/log_temperature", take("logit_scale")))
    pairs.append(("contrastive_head/bias", take("logit_bias")))

    variables = {}
    for variable in keras_backbone.weights:
        assert variable.path not in variables, f"Duplicate Keras weight path {variable.path!r}"
        variables[variable.path] = variable
    assigned = set()
    for path, value in pairs:
        assert path in variables, f"Mapped HF tensor onto {path!r}, which the Keras model lacks"
        assert path not in assigned, f"Keras weight {path!r} assigned twice"
        variable = variables[path]
        assert tuple(variable.shape) == value.shape, (
            f"{path}: Keras shape {tuple(variable.shape)} != mapped HF shape {value.shape}"
        )
        variable.assign(np.ascontiguousarray(value))
        assigned.add(path)
    missing = sorted(set(variables) - assigned)
    assert not missing, f"Keras weights not assigned from HF: {missing}"
    unused = sorted(set(hf) - used)
    assert not unused, f"HF parameters not mapped: {unused}"
    return assigned
