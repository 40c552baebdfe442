"""Hugging Face transformers SigLIP folders in and out.

Reads `SiglipModel` folders (SigLIP 1 and the fixed-resolution SigLIP 2
checkpoints, model_type "siglip") and `Siglip2Model` folders (SigLIP 2 NaFlex,
model_type "siglip2"): `config.json` plus `model.safetensors` or sharded
`model-0000x-of-0000y.safetensors` with `model.safetensors.index.json`. Only
safetensors are read, with numpy, one tensor at a time; nothing is unpickled.
Writes a `SigLIPBackbone` back to such a folder, which `transformers.AutoModel`
loads.

Layouts, HF (PyTorch) -> ours (W width, H heads, hd = W / H):

    Linear weight (out, in), bias (out,)        -> Dense kernel (in, out), bias (out,)
    q/k/v_proj weight (W, W), bias (W,)          -> EinsumDense kernel (W, H, hd), bias (H, hd)
    out_proj weight (W, W)                       -> EinsumDense kernel (H, hd, W)
    MAP head in_proj_weight (3W, W), bias (3W,)  -> query, key, value as above
    Conv2d patch embedding (W, C, P, P)          -> Dense kernel (P*P*C, W), (py, px, c) order
    Linear patch embedding (W, P*P*C) (NaFlex)   -> Dense kernel (P*P*C, W)
    position_embedding (G*G, W)                  -> grid (G, G, W)
    LayerNorm weight, bias                       -> gamma, beta
    logit_scale, logit_bias (1,)                 -> contrastive_head/log_temperature, bias (1,)

One table of rules (`_rules`) holds both directions, so reading and writing
cannot drift apart.
"""

import json
import os
from typing import Callable, NamedTuple

import numpy as np

from keras_siglip.convert.common import Checkpoint, CorruptCheckpoint

# What our towers fix (big_vision numerics); a config asking for anything else is refused.
_FIXED = {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}

# HF's config defaults (`SiglipTextConfig`, `SiglipVisionConfig`, `Siglip2VisionConfig`)
# for fields a config.json may leave out.
_TEXT_DEFAULTS = dict(
    vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=64, projection_size=None, **_FIXED,
)
_VISION_DEFAULTS = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    num_channels=3, image_size=224, patch_size=16, num_patches=256, vision_use_head=True, **_FIXED,
)

_MODEL_TYPES = {"siglip": "SiglipModel", "siglip2": "Siglip2Model"}
# PIL resample codes (HF image processors) -> keras interpolation names.
_RESAMPLE = {0: "nearest", 1: "lanczos3", 2: "bilinear", 3: "bicubic"}
_OTHER_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


# -- the weight map ----------------------------------------------------------------


class _Rule(NamedTuple):
    """HF tensors `hf` <-> our weights `ours`; `to_ours(*hf arrays)` returns
    the tuple of our arrays, `to_hf(*our arrays)` the tuple of HF arrays."""

    hf: tuple
    ours: tuple
    to_ours: Callable
    to_hf: Callable


def _same(hf, ours):
    return _Rule((hf,), (ours,), lambda x: (x,), lambda x: (x,))


def _dense(hf, ours):
    """`nn.Linear` `{hf}.weight (out, in)` <-> Dense `{ours}/kernel (in, out)`."""
    return [
        _Rule((f"{hf}.weight",), (f"{ours}/kernel",), lambda w: (w.T,), lambda k: (k.T,)),
        _same(f"{hf}.bias", f"{ours}/bias"),
    ]


def _norm(hf, ours):
    return [_same(f"{hf}.weight", f"{ours}/gamma"), _same(f"{hf}.bias", f"{ours}/beta")]


def _attention(hf, ours, num_heads, fused=False):
    """One attention layer: HF q/k/v/out_proj Linears (or `nn.MultiheadAttention`'s
    fused `in_proj_weight (3W, W)`) <-> Keras `MultiHeadAttention` EinsumDenses."""

    def split_kernel(w):  # (H*hd, W) -> (W, H, hd)
        return w.T.reshape(w.shape[1], num_heads, -1)

    def merge_kernel(k):  # (W, H, hd) -> (H*hd, W)
        return k.reshape(k.shape[0], -1).T

    def split_bias(b):  # (H*hd,) -> (H, hd)
        return b.reshape(num_heads, -1)

    names = [f"{ours}/{name}" for name in ("query", "key", "value")]
    if fused:
        rules = [
            _Rule((f"{hf}.in_proj_weight",), tuple(f"{n}/kernel" for n in names),
                  lambda w: tuple(split_kernel(x) for x in np.split(w, 3)),
                  lambda *k: (np.concatenate([merge_kernel(x) for x in k]),)),
            _Rule((f"{hf}.in_proj_bias",), tuple(f"{n}/bias" for n in names),
                  lambda b: tuple(split_bias(x) for x in np.split(b, 3)),
                  lambda *b: (np.concatenate([x.reshape(-1) for x in b]),)),
        ]
    else:
        rules = []
        for proj, name in zip(("q_proj", "k_proj", "v_proj"), names):
            rules += [
                _Rule((f"{hf}.{proj}.weight",), (f"{name}/kernel",),
                      lambda w: (split_kernel(w),), lambda k: (merge_kernel(k),)),
                _Rule((f"{hf}.{proj}.bias",), (f"{name}/bias",),
                      lambda b: (split_bias(b),), lambda b: (b.reshape(-1),)),
            ]
    rules += [  # out_proj (W, H*hd) <-> (H, hd, W)
        _Rule((f"{hf}.out_proj.weight",), (f"{ours}/attention_output/kernel",),
              lambda w: (w.T.reshape(num_heads, -1, w.shape[0]),),
              lambda k: (k.reshape(-1, k.shape[-1]).T,)),
        _same(f"{hf}.out_proj.bias", f"{ours}/attention_output/bias"),
    ]
    return rules


def _encoder(hf, ours, depth, num_heads):
    rules = []
    for i in range(depth):
        h, o = f"{hf}.layers.{i}", f"{ours}/block_{i}"
        rules += _norm(f"{h}.layer_norm1", f"{o}/layer_norm_0")
        rules += _attention(f"{h}.self_attn", f"{o}/attention", num_heads)
        rules += _norm(f"{h}.layer_norm2", f"{o}/layer_norm_1")
        rules += _dense(f"{h}.mlp.fc1", f"{o}/mlp/dense_0")
        rules += _dense(f"{h}.mlp.fc2", f"{o}/mlp/dense_1")
    return rules


def _rules(config):
    """Every HF tensor of a `SiglipModel` / `Siglip2Model` and its counterpart
    in the `SigLIPBackbone` built from our `config` (MAP image pooling,
    last-token text pooling, a text head)."""
    v, t = config["vision_encoder"], config["text_encoder"]
    patch, channels = v["patch_size"], v.get("num_channels", 3)
    grid = _grid(v)
    embed = "vision_model.embeddings"
    if v.get("input_format", "images") == "images":  # Conv2d (W, C, P, P)
        rules = [
            _Rule((f"{embed}.patch_embedding.weight",), ("vit/embedding/kernel",),
                  lambda w: (w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]),),
                  lambda k: (k.reshape(patch, patch, channels, -1).transpose(3, 2, 0, 1),)),
            _same(f"{embed}.patch_embedding.bias", "vit/embedding/bias"),
        ]
    else:  # NaFlex: Linear over (py, px, c) patches
        rules = _dense(f"{embed}.patch_embedding", "vit/embedding")
    rules.append(
        _Rule((f"{embed}.position_embedding.weight",), ("vit/position_embedding/embeddings",),
              lambda p: (p.reshape(*grid, -1),), lambda g: (g.reshape(-1, g.shape[-1]),))
    )
    rules += _encoder("vision_model.encoder", "vit/encoder", v["depth"], v["num_heads"])
    rules += _norm("vision_model.post_layernorm", "vit/encoder/encoder_norm")
    rules.append(_same("vision_model.head.probe", "vit/map_head/probe"))
    rules += _attention("vision_model.head.attention", "vit/map_head/attention", v["num_heads"], fused=True)
    rules += _norm("vision_model.head.layernorm", "vit/map_head/layer_norm")
    rules += _dense("vision_model.head.mlp.fc1", "vit/map_head/mlp/dense_0")
    rules += _dense("vision_model.head.mlp.fc2", "vit/map_head/mlp/dense_1")

    rules.append(_same("text_model.embeddings.token_embedding.weight", "transformer/token_embedding/embeddings"))
    rules.append(_same("text_model.embeddings.position_embedding.weight", "transformer/position_embedding"))
    rules += _encoder("text_model.encoder", "transformer/encoder", t["depth"], t["num_heads"])
    rules += _norm("text_model.final_layer_norm", "transformer/encoder/encoder_norm")
    rules += _dense("text_model.head", "transformer/head")

    rules.append(_same("logit_scale", "contrastive_head/log_temperature"))
    rules.append(_same("logit_bias", "contrastive_head/bias"))
    return rules


def _grid(vision):
    """The learned position grid `(h, w)` of our vision config."""
    size = vision["image_size"]
    h, w = (size, size) if isinstance(size, int) else size
    return h // vision["patch_size"], w // vision["patch_size"]


# -- configs -----------------------------------------------------------------------


def config_from_hf(hf_config, source="config.json"):
    """Our `{"vision_encoder": ..., "text_encoder": ...}` config from an HF
    `config.json` dict; raises one `ValueError` naming every field our towers
    cannot express."""
    model_type = hf_config.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not a two-tower SigLIP; keras_siglip reads "
            f"{', '.join(f'{k!r} ({c})' for k, c in _MODEL_TYPES.items())}."
        )
    architectures = hf_config.get("architectures") or [_MODEL_TYPES[model_type]]
    if _MODEL_TYPES[model_type] not in architectures:
        raise ValueError(
            f"{source}: architectures {architectures} hold no {_MODEL_TYPES[model_type]}; "
            "keras_siglip reads the two-tower model (image and text towers)."
        )
    v = {**_VISION_DEFAULTS, **(hf_config.get("vision_config") or {})}
    t = {**_TEXT_DEFAULTS, **(hf_config.get("text_config") or {})}
    problems = []
    for tower, sub in (("vision_config", v), ("text_config", t)):
        for key, value in _FIXED.items():
            if sub[key] != value:
                problems.append(f"{tower}.{key} = {sub[key]!r} (keras_siglip fixes {value!r})")
    if v["vision_use_head"] is not True:
        problems.append(f"vision_config.vision_use_head = {v['vision_use_head']!r} (the image tower needs its MAP head)")
    patch = _square(v["patch_size"], "vision_config.patch_size", problems)
    if model_type == "siglip2":
        side = int(round(np.sqrt(v["num_patches"])))
        if side * side != v["num_patches"]:
            problems.append(f"vision_config.num_patches = {v['num_patches']} (not a square grid)")
        image = dict(image_size=side * patch, input_format="naflex")
    else:
        image = dict(image_size=_square(v["image_size"], "vision_config.image_size", problems))
    if problems:
        raise ValueError(f"{source} asks for what keras_siglip's SigLIP cannot express:\n  " + "\n  ".join(problems))
    vision = dict(
        patch_size=patch, width=v["hidden_size"], depth=v["num_hidden_layers"],
        num_heads=v["num_attention_heads"], mlp_dim=v["intermediate_size"], pooling="map", **image,
    )
    if v["num_channels"] != 3:
        vision["num_channels"] = v["num_channels"]
    text = dict(
        vocabulary_size=t["vocab_size"], width=t["hidden_size"], depth=t["num_hidden_layers"],
        num_heads=t["num_attention_heads"], mlp_dim=t["intermediate_size"],
        sequence_length=t["max_position_embeddings"], pooling="last",
        num_classes=t["projection_size"] or t["hidden_size"],
    )
    return {"vision_encoder": vision, "text_encoder": text}


def _square(value, field, problems):
    """`s` from an int `s` or a square `[s, s]`; non-square values are listed."""
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    problems.append(f"{field} = {value!r} (HF SigLIP is square)")
    return 0


def config_to_hf(config, gemma=False):
    """The HF `config.json` dict of our backbone config.

    Args:
        config: `{"vision_encoder": ..., "text_encoder": ...}` with a text head
            (`num_classes`).
        gemma: Gemma vocabulary special ids (pad 0, eos 1, bos 2; SigLIP 2)
            instead of T5's (pad = eos = 1, no bos; SigLIP 1).
    """
    v, t = config["vision_encoder"], config["text_encoder"]
    problems = []
    if v.get("pooling", "map") != "map":
        problems.append(f"image pooling {v['pooling']!r} (HF has a MAP head only)")
    if v.get("num_classes"):
        problems.append(f"an image head of {v['num_classes']} classes (HF has none)")
    if t.get("pooling", "last") != "last":
        problems.append(f"text pooling {t['pooling']!r} (HF pools the last token)")
    grid = _grid(v)
    if grid[0] != grid[1]:
        problems.append(f"a non-square position grid {grid} (HF's is square)")
    if problems:
        raise ValueError("This backbone has no Hugging Face SigLIP counterpart: " + "; ".join(problems) + ".")
    naflex = v.get("input_format", "images") != "images"
    model_type = "siglip2" if naflex else "siglip"
    fixed = dict(_FIXED, attention_dropout=0.0)
    size = {"num_patches": grid[0] * grid[1]} if naflex else {"image_size": _grid_pixels(v)}
    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2) if gemma else dict(
        pad_token_id=1, eos_token_id=1, bos_token_id=None)
    return {
        "architectures": [_MODEL_TYPES[model_type]],
        "model_type": model_type,
        "dtype": "float32",
        "initializer_factor": 1.0,
        "vision_config": dict(
            model_type=f"{model_type}_vision_model", hidden_size=v["width"], intermediate_size=v["mlp_dim"],
            num_hidden_layers=v["depth"], num_attention_heads=v["num_heads"],
            num_channels=v.get("num_channels", 3), patch_size=v["patch_size"], vision_use_head=True,
            **size, **fixed,
        ),
        "text_config": dict(
            model_type=f"{model_type}_text_model", vocab_size=t["vocabulary_size"], hidden_size=t["width"],
            intermediate_size=t["mlp_dim"], num_hidden_layers=t["depth"], num_attention_heads=t["num_heads"],
            max_position_embeddings=t["sequence_length"], projection_size=t["num_classes"], **ids, **fixed,
        ),
    }


def _grid_pixels(vision):
    size = vision["image_size"]
    return size if isinstance(size, int) else size[0]


# -- reading -----------------------------------------------------------------------


def read_huggingface(folder, progress=None):
    """An HF `SiglipModel` / `Siglip2Model` folder as a `Checkpoint`.

    Args:
        folder: the folder with `config.json` and the safetensors weights;
            optional `spiece.model` (T5 / mT5 SentencePiece, SigLIP 1) or
            `tokenizer.model` (Gemma, SigLIP 2), `tokenizer_config.json` and
            `preprocessor_config.json`.
        progress: accepted for the readers' common signature; nothing slow
            happens here (only file headers are read), tensors are read when
            `load_into` iterates them and shows its own progress.

    Returns:
        A `Checkpoint` whose `tensors()` reads one tensor at a time (bfloat16 /
        float16 tensors stay so until assigned). Tensors without a counterpart
        are yielded as `huggingface:<name>` so `load_into` lists them as
        unexpected; tensors absent from the files show up there as missing.
    """
    del progress
    folder = os.fspath(folder)
    config_path = os.path.join(folder, "config.json")
    hf_config = _read_json(config_path)
    if hf_config is None:
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face model folder.")
    config = config_from_hf(hf_config, source=config_path)
    locations = _tensor_files(folder)
    rules = _rules(config)
    mapped = {name for rule in rules for name in rule.hf}
    extra = sorted(
        name for name in locations
        if name not in mapped and not name.endswith("embeddings.position_ids")  # old buffers
    )
    present = [rule for rule in rules if all(name in locations for name in rule.hf)]

    def get(name):
        # One open per tensor: safetensors memory-maps the file, and a handle kept
        # open for the whole load would keep every page read so far resident.
        return read_tensor(locations[name], name)

    def tensors():
        for rule in present:
            arrays = [get(name) for name in rule.hf]
            try:
                converted = rule.to_ours(*arrays)
            except (ValueError, IndexError):  # shapes the layout cannot take: listed as mis-shaped
                converted = [arrays[0]] * len(rule.ours)
            yield from zip(rule.ours, converted)
        for name in extra:
            yield f"huggingface:{name}", get(name)

    naflex = hf_config["model_type"] == "siglip2"
    return Checkpoint(
        config=config,
        tensors=tensors,
        num_tensors=sum(len(rule.ours) for rule in present) + len(extra),
        tokenizer=_read_tokenizer(folder, config["text_encoder"]["vocabulary_size"]),
        image_converter=_read_image_converter(folder, config["vision_encoder"], naflex),
        source=f"Hugging Face {_MODEL_TYPES[hf_config['model_type']]} {folder}",
        origins=tensor_origins(present, extra, lambda name: (name, locations[name])),
    )


def tensor_origins(present, extra, where):
    """`{our path: "file 'HF name'"}` for `load_into`'s errors.

    `present`: the rules read, `extra`: HF names without a rule (yielded as
    `huggingface:<name>`), `where(name)`: `(stored name, file path)` of an
    HF tensor.
    """

    def describe(name):
        stored, path = where(name)
        return f"{os.path.basename(path)} {stored!r}"

    origins = {ours: ", ".join(describe(name) for name in rule.hf) for rule in present for ours in rule.ours}
    origins.update({f"huggingface:{name}": describe(name) for name in extra})
    return origins


# Tensors larger than this are read in row blocks of about this size.
_READ_BLOCK_BYTES = 64 << 20


def read_tensor(path, name):
    """One tensor of a safetensors file as a numpy array; a clear error naming
    the file and tensor when it cannot be read.

    safetensors memory-maps the file, and every page read stays resident
    until the file is closed: read whole, a tensor would briefly cost twice
    its size. Large tensors (a 256k-row embedding is 1.2 GB) are therefore
    read a block of rows at a time, the file reopened for each block.
    """
    try:
        with _safe_open(path) as f:
            block = f.get_slice(name)
            shape = tuple(block.get_shape())
            first = block[0:1] if shape else f.get_tensor(name)
            row_bytes = first.nbytes
            if not shape or row_bytes * shape[0] <= _READ_BLOCK_BYTES:
                return f.get_tensor(name)
        out = np.empty(shape, first.dtype)
        rows = max(1, _READ_BLOCK_BYTES // max(row_bytes, 1))
        for start in range(0, shape[0], rows):
            stop = min(start + rows, shape[0])  # safetensors does not clip slices
            with _safe_open(path) as f:
                out[start:stop] = f.get_slice(name)[start:stop]
        return out
    except CorruptCheckpoint:
        raise
    except Exception as error:  # safetensors raises its own error types
        raise CorruptCheckpoint(f"{path}: cannot read tensor {name!r}: {error}") from None


def _read_json(path):
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CorruptCheckpoint(f"{path} is not valid JSON (truncated or damaged?): {error}") from None


def _safe_open(path):
    from safetensors import safe_open

    try:
        return safe_open(path, framework="numpy")
    except Exception as error:  # safetensors raises its own error types
        raise CorruptCheckpoint(
            f"{path} is not a readable safetensors file (truncated, damaged or another format): {error}"
        ) from None


def _tensor_files(folder):
    """`{tensor name: safetensors path}`, from `model.safetensors` or the shards
    listed in `model.safetensors.index.json`; every file's header is checked."""
    single = os.path.join(folder, "model.safetensors")
    index_path = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(single):
        paths = [single]
    elif os.path.exists(index_path):
        index = _read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CorruptCheckpoint(f"{index_path} has no weight_map.")
        paths = [os.path.join(folder, name) for name in sorted(set(weight_map.values()))]
        absent = [os.path.basename(p) for p in paths if not os.path.exists(p)]
        if absent:
            raise FileNotFoundError(f"{index_path} lists shards that are not in {folder}: {', '.join(absent)}.")
    else:
        others = [name for name in _OTHER_WEIGHTS if os.path.exists(os.path.join(folder, name))]
        found = f" It has {', '.join(others)}, which" if others else " Other weight formats"
        raise FileNotFoundError(
            f"{folder} has no model.safetensors or model.safetensors.index.json.{found} "
            "keras_siglip does not read: only safetensors are read (never pickles). Resave with "
            "transformers: `AutoModel.from_pretrained(folder).save_pretrained(out, safe_serialization=True)`."
        )
    locations = {}
    for path in paths:
        with _safe_open(path) as f:
            for name in f.keys():
                if name in locations:  # which copy is right cannot be told
                    raise CorruptCheckpoint(
                        f"The tensor {name!r} is stored twice, in {os.path.basename(locations[name])} and "
                        f"{os.path.basename(path)} ({folder})."
                    )
                locations[name] = path
    return locations


def _read_tokenizer(folder, vocabulary_size):
    """`{"proto": bytes, "pad_token": "</s>" | "<pad>"}` from `spiece.model` /
    `tokenizer.model`, or None. SigLIP 1 (T5 / mT5) pads with `</s>`, SigLIP 2
    (Gemma) with `<pad>`: taken from `tokenizer_config.json` when it says, else
    from the vocabulary (Gemma's 256,000 ids, `tokenizer.model`)."""
    for filename in ("spiece.model", "tokenizer.model"):
        path = os.path.join(folder, filename)
        if os.path.exists(path):
            with open(path, "rb") as f:
                proto = f.read()
            break
    else:
        return None
    settings = _read_json(os.path.join(folder, "tokenizer_config.json")) or {}
    pad = settings.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    if pad not in ("</s>", "<pad>"):
        kind = str(settings.get("tokenizer_class", "")).lower()
        if "gemma" in kind or "siglip2" in kind:
            pad = "<pad>"
        elif "siglip" in kind or "t5" in kind:
            pad = "</s>"
        else:
            pad = "<pad>" if vocabulary_size == 256_000 or filename == "tokenizer.model" else "</s>"
    return {"proto": proto, "pad_token": pad}


def _read_image_converter(folder, vision, naflex):
    """The source's preprocessing as `(class name, kwargs)`: HF's defaults
    (bicubic with antialias for fixed resolution; 256 patches for NaFlex)
    unless `preprocessor_config.json` says otherwise."""
    settings = _read_json(os.path.join(folder, "preprocessor_config.json")) or {}
    if naflex:
        return ("NaFlexImageConverter", {
            "patch_size": vision["patch_size"], "max_num_patches": int(settings.get("max_num_patches", 256)),
        })
    size = settings.get("size") or {}
    default = _grid_pixels(vision)
    image_size = (int(size.get("height", default)), int(size.get("width", default)))
    resample = settings.get("resample", 3)
    if resample not in _RESAMPLE:
        raise ValueError(f"{folder}/preprocessor_config.json: resample {resample!r} has no keras counterpart.")
    rescale = settings.get("rescale_factor", 1 / 255) if settings.get("do_rescale", True) else 1.0
    normalize = settings.get("do_normalize", True)
    mean = np.broadcast_to(settings.get("image_mean", 0.5) if normalize else 0.0, (3,))
    std = np.broadcast_to(settings.get("image_std", 0.5) if normalize else 1.0, (3,))
    scale, offset = rescale / std, -mean / std

    def value(x):
        return float(x[0]) if np.all(x == x[0]) else [float(c) for c in x]

    exact = settings.get("keras_siglip") or {}  # written by `write_huggingface`
    return ("SigLIPImageConverter", {
        "image_size": image_size, "scale": value(scale), "offset": value(offset),
        "interpolation": exact.get("interpolation", _RESAMPLE[resample]),
        "antialias": bool(exact.get("antialias", True)),
    })


# -- writing -----------------------------------------------------------------------


def write_huggingface(backbone, folder, tokenizer=None, image_converter=None):
    """Export a `SigLIPBackbone` to an HF folder `transformers.AutoModel` loads.

    A fixed-resolution backbone becomes a `SiglipModel`, a NaFlex one (or a
    packed one: the same weights) a `Siglip2Model`. The folder gets
    `config.json`, `model.safetensors` (float32) and, with a tokenizer, its
    SentencePiece model (`spiece.model` for SigLIP 1's `</s>` padding,
    `tokenizer.model` for SigLIP 2's `<pad>`) and a `tokenizer_config.json`.
    A text tower without a head (`num_classes=None`, e.g. mSigLIP So400m/16
    i18n) is written with an identity head of its width, as HF and keras-hub
    ship it.

    With an image converter, `preprocessor_config.json` describes it for
    transformers' image processor (size, resample filter, rescale and
    normalisation; NaFlex: patch size and patch budget) and, under the key
    `"keras_siglip"`, exactly (filter and antialias): transformers' PIL
    resize always antialiases, and `read_huggingface` reads the exact form
    back, so a round trip keeps the preprocessing.

    The files are written into a temporary sibling folder that then replaces
    `folder` whole.

    Args:
        backbone: a `SigLIPBackbone` with MAP image pooling, no image head,
            last-token text pooling and a square position grid.
        folder: the output folder.
        tokenizer: optional `SigLIPTokenizer`.
        image_converter: optional `SigLIPImageConverter` or
            `NaFlexImageConverter` (a preprocessor's `image_converter`).

    Returns:
        `folder`.
    """
    from keras import ops
    from safetensors.numpy import save_file

    from keras_siglip.utils.preset import atomic_directory

    config = {
        "vision_encoder": backbone.vision_encoder.get_config(),
        "text_encoder": backbone.text_encoder.get_config(),
    }
    text = config["text_encoder"]
    headless = not text.get("num_classes")
    if headless:
        text["num_classes"] = text["width"]
    pad_token = getattr(tokenizer, "pad_token", None)
    gemma = pad_token == "<pad>" if tokenizer is not None else text["vocabulary_size"] == 256_000
    hf_config = config_to_hf(config, gemma=gemma)  # refuses what HF cannot express

    weights = {v.path: v for v in backbone.weights}
    if headless:
        weights["transformer/head/kernel"] = np.eye(text["width"], dtype="float32")
        weights["transformer/head/bias"] = np.zeros((text["width"],), "float32")
    rules = _rules(config)
    missing = sorted(path for rule in rules for path in rule.ours if path not in weights)
    unused = sorted(set(weights) - {path for rule in rules for path in rule.ours})
    if missing or unused:
        raise ValueError(
            f"The backbone's weights do not fit a Hugging Face SigLIP: missing {missing}, "
            f"without a counterpart {unused}."
        )
    tensors = {}
    for rule in rules:
        ours = [np.asarray(ops.convert_to_numpy(weights[path]), dtype="float32") for path in rule.ours]
        tensors.update((name, np.ascontiguousarray(a)) for name, a in zip(rule.hf, rule.to_hf(*ours)))
    preprocessor_config = None if image_converter is None else _preprocessor_config(image_converter)
    with atomic_directory(folder, merge=False) as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config, f, indent=2)
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            _write_tokenizer(tokenizer, tmp, gemma, text["sequence_length"])
        if preprocessor_config is not None:
            with open(os.path.join(tmp, "preprocessor_config.json"), "w") as f:
                json.dump(preprocessor_config, f, indent=2)
    return folder


def _preprocessor_config(image_converter):
    """HF's `preprocessor_config.json` for one of our image converters (the
    inverse of `_read_image_converter`)."""
    config = image_converter.get_config()
    if "max_num_patches" in config:  # NaFlex
        return {
            "image_processor_type": "Siglip2ImageProcessor", "processor_class": "Siglip2Processor",
            "patch_size": config["patch_size"], "max_num_patches": config["max_num_patches"],
            "do_resize": True, "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "do_convert_rgb": True,
        }
    resample = {name: code for code, name in _RESAMPLE.items()}.get(config["interpolation"])
    if resample is None:
        raise ValueError(f"transformers' image processors have no {config['interpolation']!r} resize.")
    # Ours: x * scale + offset on [0, 255] pixels; HF: (x / 255 - mean) / std.
    scale, offset = (np.broadcast_to(np.asarray(config[k], "float64"), (3,)) for k in ("scale", "offset"))
    std = (1 / 255) / scale
    mean = -offset * std
    height, width = config["image_size"]
    return {
        "image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor",
        "do_resize": True, "size": {"height": int(height), "width": int(width)}, "resample": resample,
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [float(m) for m in mean], "image_std": [float(s) for s in std],
        "keras_siglip": {"interpolation": config["interpolation"], "antialias": bool(config["antialias"])},
    }


def _write_tokenizer(tokenizer, folder, gemma, sequence_length):
    """The SentencePiece model and the `tokenizer_config.json` HF's SigLIP /
    SigLIP 2 checkpoints ship (T5: `SiglipTokenizer`, pad `</s>`; Gemma:
    `GemmaTokenizer` without BOS, with EOS, as HF's SigLIP 2 conversion)."""
    filename = "tokenizer.model" if gemma else "spiece.model"
    with open(os.path.join(folder, filename), "wb") as f:
        f.write(tokenizer.proto)
    if gemma:
        settings = dict(tokenizer_class="GemmaTokenizer", pad_token="<pad>", add_bos_token=False,
                        add_eos_token=True, padding_side="right")
    else:
        settings = dict(tokenizer_class="SiglipTokenizer", pad_token="</s>", do_lower_case=True)
    settings.update(model_max_length=sequence_length, model_input_names=["input_ids"])
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(settings, f, indent=2)
