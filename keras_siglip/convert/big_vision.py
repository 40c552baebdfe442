"""big_vision SigLIP / SigLIP 2 checkpoints (`.npz`) <-> keras_siglip weights.

A released checkpoint is an `np.savez` archive of the Flax param tree with
`/`-joined keys: `params/img/...`, `params/txt/...`, `params/t`, `params/b`
(reference/big_vision.md section 8). The encoder blocks come in two layouts:

- per block (SigLIP): `img/Transformer/encoderblock_{i}/<leaf>` and
  `txt/Encoder_0/encoderblock_{i}/<leaf>`;
- scanned (SigLIP 2, `scan=True`): `img/Transformer/encoderblock/<leaf>` and
  `txt/Encoder_0/encoderblock/<leaf>`, every leaf with a leading depth axis,
  e.g. `MlpBlock_0/Dense_0/kernel (depth, W, M)`.

Most leaves are ours unchanged: Flax `DenseGeneral` attention kernels `(W, H, hd)`
/ `(H, hd, W)` are Keras `EinsumDense` layouts and LayerNorm `scale` / `bias` are
`gamma` / `beta`. Reshaped (same numbers, same order): the fixed-resolution conv
patch kernel `(P, P, C, W)` -> our Dense `(P*P*C, W)` (NaFlex stores the Dense
already), the image position table `(1, h*w, W)` -> our grid `(h, w, W)` (NaFlex
stores the `(G, G, W)` grid), the text table `(1, L, W)` -> `(L, W)`, and `t`, `b`
-> `(1,)`. bfloat16 leaves are stored as numpy void of itemsize 2.
"""

import math
import os
import re
import struct
import tokenize
import zipfile
import zlib

import ml_dtypes
import numpy as np

from keras_siglip.convert.common import Checkpoint, CheckpointMismatch, CorruptCheckpoint
from keras_siglip.presets import PUBLISHED_PRESETS

_ATTENTION = "MultiHeadDotProductAttention_0"


def _norm(bv, ours):
    return {f"{bv}/scale": f"{ours}/gamma", f"{bv}/bias": f"{ours}/beta"}


def _attention(bv, ours):
    names = {"query": "query", "key": "key", "value": "value", "out": "attention_output"}
    return {f"{bv}/{a}/{p}": f"{ours}/{b}/{p}" for a, b in names.items() for p in ("kernel", "bias")}


def _mlp(bv, ours):
    return {f"{bv}/Dense_{i}/{p}": f"{ours}/dense_{i}/{p}" for i in (0, 1) for p in ("kernel", "bias")}


# The leaves of one encoder block and of a MAP head, big_vision -> ours.
BLOCK = {
    **_norm("LayerNorm_0", "layer_norm_0"),
    **_attention(_ATTENTION, "attention"),
    **_norm("LayerNorm_1", "layer_norm_1"),
    **_mlp("MlpBlock_0", "mlp"),
}
MAP_HEAD = {
    "probe": "probe",
    **_attention(_ATTENTION, "attention"),
    **_norm("LayerNorm_0", "layer_norm"),
    **_mlp("MlpBlock_0", "mlp"),
}
# The image encoder is named `Transformer`, the text encoder auto-named `Encoder_0`.
ENCODERS = {"img/Transformer": "vit/encoder", "txt/Encoder_0": "transformer/encoder"}
TOWERS = {"img": "vit", "txt": "transformer"}


def _names():
    """Every leaf outside the encoder blocks, big_vision -> our weight path."""
    names = {
        "t": "contrastive_head/log_temperature",
        "b": "contrastive_head/bias",
        "img/embedding/kernel": "vit/embedding/kernel",
        "img/embedding/bias": "vit/embedding/bias",
        "img/pos_embedding": "vit/position_embedding/embeddings",
        "img/cls": "vit/cls_token",
        "txt/Embed_0/embedding": "transformer/token_embedding/embeddings",
        "txt/pos_embedding": "transformer/position_embedding",
    }
    for bv, ours in TOWERS.items():
        names.update({f"{bv}/head/{p}": f"{ours}/head/{p}" for p in ("kernel", "bias")})
        names.update({f"{bv}/MAPHead_0/{k}": f"{ours}/map_head/{v}" for k, v in MAP_HEAD.items()})
    for bv, ours in ENCODERS.items():
        names.update(_norm(f"{bv}/encoder_norm", f"{ours}/encoder_norm"))
    return names


NAMES = _names()
_BLOCK_KEY = re.compile(r"(img/Transformer|txt/Encoder_0)/encoderblock(?:_(\d+))?/(.+)")


def _our_paths(key, shape, npz_key=None):
    """Our weight paths of one big_vision leaf: `[(path, block index or None)]`.

    A scanned leaf gives one path per block (the index into its depth axis); a
    leaf without a counterpart keeps its `.npz` key, so `load_into` lists it
    as unexpected.
    """
    if key in NAMES:
        return [(NAMES[key], None)]
    match = _BLOCK_KEY.fullmatch(key)
    if match and match[3] in BLOCK:
        encoder, leaf = ENCODERS[match[1]], BLOCK[match[3]]
        if match[2] is not None:
            return [(f"{encoder}/block_{match[2]}/{leaf}", None)]
        if shape:
            return [(f"{encoder}/block_{i}/{leaf}", i) for i in range(shape[0])]
    return [(npz_key or key, None)]


def _grid(vision):
    size = vision["image_size"]
    h, w = (size, size) if isinstance(size, int) else size
    return h // vision["patch_size"], w // vision["patch_size"]


def _to_ours(key, value, config):
    """One leaf (one block's slice when scanned) in our layout."""
    if key == "img/embedding/kernel":  # conv (P, P, C, W) -> Dense (P*P*C, W)
        shape = (-1, value.shape[-1])
    elif key == "img/pos_embedding":  # (1, h*w, W), or NaFlex (G, G, W) -> (h, w, W)
        shape = (*_grid(config["vision_encoder"]), value.shape[-1])
    elif key == "txt/pos_embedding":  # (1, L, W) -> (L, W)
        shape = (-1, value.shape[-1])
    elif key in ("t", "b"):
        shape = (1,)
    else:
        return value
    try:
        return np.reshape(value, shape)
    except ValueError:  # left as stored: `load_into` reports it as mis-shaped
        return value


# -- reading -------------------------------------------------------------------

# What numpy and zipfile raise on damaged archives: a flipped compression method
# gives NotImplementedError, a flipped flag bit "encrypted" (RuntimeError), a
# damaged deflate stream zlib.error, a short record struct.error, a damaged
# `.npy` header dict tokenize.TokenError.
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, struct.error, tokenize.TokenError, SyntaxError, ValueError,
                   EOFError, OSError, NotImplementedError, RuntimeError)


def _describe(path):
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK\x03\x04"):
        return "a truncated or corrupt zip archive"
    if magic == b"\x93NUMPY":
        return "a single .npy array, not an .npz archive of named params"
    return "not an .npz (zip) archive"


def _load(path):
    """`np.load` (lazy: each array is read on access, no pickles) with clear errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No big_vision checkpoint at {path}.")
    try:
        npz = np.load(path, allow_pickle=False)
    except _ARCHIVE_ERRORS as error:
        # numpy calls any unknown content "pickled data" and suggests loading it unsafely: not quoted.
        detail = "" if "allow_pickle" in str(error) else f" ({error})"
        raise CorruptCheckpoint(f"{path} is {_describe(path)}{detail}.") from error
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CorruptCheckpoint(f"{path} is {_describe(path)}.")
    return npz


def _member_header(npz, member):
    """`(shape, dtype)` from one `.npy` member's header, checked against the
    member's size in the zip directory (a damaged header claiming another
    shape or dtype would otherwise be read as such)."""
    with npz.zip.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        header = f.tell()
    size = npz.zip.getinfo(member).file_size
    if not dtype.hasobject and header + math.prod(shape) * dtype.itemsize != size:
        raise ValueError(
            f"its .npy header says {tuple(shape)} {dtype} "
            f"({math.prod(shape) * dtype.itemsize} bytes) but the member holds {size - header}"
        )
    return tuple(shape), dtype


def _leaves(path, groups=tuple(TOWERS), model="two-tower (SigLIP)"):
    """`{key: (npz key, shape, dtype)}` from the `.npy` headers; no data is read.

    Keys lose their `params/` prefix; when the tree has `params`, everything
    outside it (optimizer state of a training checkpoint) is ignored, as
    big_vision's `load_params` does. Every top-level group in `groups` must
    be present (else the file is not a `model` checkpoint).
    """
    headers = {}
    with _load(path) as npz:
        for member in npz.zip.namelist():
            try:
                if not member.endswith(".npy"):
                    raise ValueError("it is not a .npy array")
                headers[member[: -len(".npy")]] = _member_header(npz, member)
            except _ARCHIVE_ERRORS as error:
                raise CorruptCheckpoint(
                    f"{path} is not a readable .npz archive: member {member!r}: {error}."
                ) from error
    for key, (_, dtype) in headers.items():
        if dtype.hasobject:
            raise CorruptCheckpoint(
                f"{path}: {key!r} is a pickled Python object array. big_vision "
                "checkpoints hold numeric arrays only, and this reader never "
                "unpickles (np.load(allow_pickle=False))."
            )
    nested = any(key.startswith("params/") for key in headers)
    leaves = {
        key[len("params/"):] if nested else key: (key, shape, dtype)
        for key, (shape, dtype) in headers.items()
        if key.startswith("params/") or not nested
    }
    for group in groups:
        if not any(key.startswith(group + "/") for key in leaves):
            found = ", ".join(sorted(headers)[:6]) or "none"
            raise ValueError(
                f"{path} holds no {group}/ params: not a big_vision {model} "
                f"checkpoint. Keys found: {found}."
            )
    return leaves


def _encoder(shapes, prefix, need):
    """depth, num_heads and mlp_dim of the blocks under `prefix`, either layout."""
    query, dense = f"{_ATTENTION}/query/kernel", "MlpBlock_0/Dense_0/kernel"
    if f"{prefix}/encoderblock/{query}" in shapes:  # scanned: (depth, W, H, hd)
        query = need(f"{prefix}/encoderblock/{query}")
        return dict(depth=query[0], num_heads=query[-2], mlp_dim=need(f"{prefix}/encoderblock/{dense}")[-1])
    blocks = [int(m[1]) for key in shapes if (m := re.match(rf"{prefix}/encoderblock_(\d+)/", key))]
    if not blocks:
        raise CheckpointMismatch(f"The checkpoint has no encoder blocks under {prefix}/.")
    first = f"{prefix}/encoderblock_{min(blocks)}"
    return dict(depth=max(blocks) + 1, num_heads=need(f"{first}/{query}")[-2], mlp_dim=need(f"{first}/{dense}")[-1])


def infer_config(shapes, given=None):
    """The `SigLIPBackbone` config that big_vision leaf shapes imply.

    Args:
        shapes: `{key: shape}` with keys as in the param tree (no `params/`).
        given: an optional config whose `image_size` resolves a non-square
            fixed-resolution position table and whose `num_channels` the NaFlex
            patch size is read with (default 3).

    Returns:
        `{"vision_encoder": kwargs, "text_encoder": kwargs}`.
    """
    given = given or {"vision_encoder": {}, "text_encoder": {}}

    def need(key):
        if key not in shapes:
            raise CheckpointMismatch(f"The checkpoint lacks {key!r}, from which the architecture is read.")
        return shapes[key]

    kernel, positions = need("img/embedding/kernel"), need("img/pos_embedding")
    vision = dict(patch_size=kernel[0], width=kernel[-1])
    if len(kernel) == 2:  # NaFlex: Dense (P*P*C, W) and a (G, G, W) grid
        channels = given["vision_encoder"].get("num_channels", 3)
        patch = math.isqrt(kernel[0] // channels)
        if patch * patch * channels != kernel[0]:
            raise ValueError(f"A patch embedding of {kernel[0]} inputs is not P*P*{channels}.")
        h, w = positions[:2]
        vision.update(patch_size=patch, num_channels=channels, input_format="naflex")
        image_size = (h * patch, w * patch)
    else:  # conv (P, P, C, W) and a flat (1, h*w, W) table, square unless a config says
        vision.update(num_channels=kernel[2])
        side, count = math.isqrt(positions[1]), positions[1]
        image_size = (side * kernel[0], side * kernel[0])
        if side * side != count:
            image_size = given["vision_encoder"].get("image_size")
            if image_size is None or math.prod(_grid({**vision, "image_size": image_size})) != count:
                raise ValueError(
                    f"The image position table has {count} entries, not a square grid; "
                    "pass a config whose image_size // patch_size has that many cells."
                )
    image_size = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
    vision["image_size"] = image_size[0] if image_size[0] == image_size[1] else image_size
    vision.update(_encoder(shapes, "img/Transformer", need))

    def has(prefix):
        return any(key.startswith(prefix) for key in shapes)

    vision["pooling"] = "map" if has("img/MAPHead_0/") else "token" if "img/cls" in shapes else "gap"
    vision["num_classes"] = shapes["img/head/kernel"][-1] if "img/head/kernel" in shapes else None

    embed, text_positions = need("txt/Embed_0/embedding"), need("txt/pos_embedding")
    text = dict(vocabulary_size=embed[0], width=embed[1], **_encoder(shapes, "txt/Encoder_0", need))
    text["sequence_length"] = text_positions[-2]
    text["pooling"] = "map" if has("txt/MAPHead_0/") else "last"
    text["num_classes"] = shapes["txt/head/kernel"][-1] if "txt/head/kernel" in shapes else None
    return {"vision_encoder": vision, "text_encoder": text}


def _signature(config):
    """What the weights' shapes fix in a config, per tower (for comparisons)."""
    v = {"pooling": "map", "num_classes": None, "num_channels": 3, **config["vision_encoder"]}
    t = {"sequence_length": 64, "pooling": "last", "num_classes": None, **config["text_encoder"]}
    vision = {k: v[k] for k in ("patch_size", "width", "depth", "num_heads", "mlp_dim", "num_channels")}
    vision.update(grid=_grid(v), num_classes=v["num_classes"] or None, map_head=v["pooling"] == "map",
                  class_token=v["pooling"] == "token")
    text = {k: t[k] for k in ("vocabulary_size", "width", "depth", "num_heads", "mlp_dim", "sequence_length")}
    text.update(num_classes=t["num_classes"] or None, map_head=t["pooling"] == "map")
    return {"vision_encoder": vision, "text_encoder": text}


def _given_config(config):
    """A card config dict, a whole card, or a published preset name -> config dict."""
    if isinstance(config, str):
        if config not in PUBLISHED_PRESETS:
            raise ValueError(f"Unknown published preset {config!r}; see `keras-siglip presets`.")
        config = PUBLISHED_PRESETS[config]
    config = config.get("config", config)
    return {"vision_encoder": dict(config["vision_encoder"]), "text_encoder": dict(config["text_encoder"])}


def _published_matches(config):
    """Published presets with this architecture (same shapes and input format)."""

    def fmt(c):
        return c["vision_encoder"].get("input_format", "images")

    return {
        name: card["config"] for name, card in PUBLISHED_PRESETS.items()
        if fmt(card["config"]) == fmt(config) and _signature(card["config"]) == _signature(config)
    }


def read_big_vision(path, config=None, progress=None):
    """A big_vision SigLIP / SigLIP 2 `.npz` as a `Checkpoint`.

    The architecture is read from the leaves' shapes (the `.npy` headers; no
    array data is read here): patch size, width and channels from the patch
    embedding, depth from the block indices or the scan axis, heads from the
    query kernel `(W, H, hd)`, mlp_dim, the position grid (square for fixed
    resolution, `(G, G)` for NaFlex, which sets `input_format="naflex"` and
    `image_size = G * P`), the text vocabulary, width, length and head. Without
    a `config`, shapes matching published presets of one image size take that
    size (So400m/14 at 384 px has a 27x27 grid of patches covering 378 px).

    Args:
        path: the `.npz` file.
        config: optional card config dict (`{"vision_encoder", "text_encoder"}`),
            whole card, or published preset name. Its keys override the
            inferred ones (image size, input format, pooling); where they
            disagree with the shapes a `CheckpointMismatch` lists every difference.
        progress: optional callable, called with each `.npz` key as its array
            is read from disk (a scanned leaf is read once for all its blocks).
            A bool (what `read_checkpoint` passes) calls nothing: `load_into`
            shows the progress bar.

    Returns:
        A `Checkpoint` whose `tensors()` reads one leaf at a time: a scanned
        leaf is read once and held only while its per-block slices (copies)
        are yielded, so reading needs about the largest leaf, not the model.
    """
    path = os.fspath(path)
    leaves = _leaves(path)
    shapes = {key: shape for key, (_, shape, _) in leaves.items()}
    given = _given_config(config) if config is not None else None
    try:
        inferred = infer_config(shapes, given)
    except ValueError as error:  # CheckpointMismatch included: name the file
        raise type(error)(f"{path}: {error}") from None
    source = f"big_vision checkpoint {path}"
    if given is None:
        resolved = inferred
        matches = _published_matches(inferred)
        sizes = {str(c["vision_encoder"]["image_size"]) for c in matches.values()}
        if len(sizes) == 1:
            resolved["vision_encoder"]["image_size"] = next(iter(matches.values()))["vision_encoder"]["image_size"]
        if len(matches) == 1:
            source += f" (the architecture of {next(iter(matches))})"
    else:
        resolved = {tower: {**inferred[tower], **given[tower]} for tower in inferred}
        ours, theirs = _signature(inferred), _signature(resolved)
        differences = [
            f"  {tower}.{key}: checkpoint {ours[tower][key]!r} vs config {theirs[tower][key]!r}"
            for tower in ours for key in ours[tower] if ours[tower][key] != theirs[tower][key]
        ]
        if differences:
            raise CheckpointMismatch(f"{path} does not match the given config:\n" + "\n".join(differences))
    vision = resolved["vision_encoder"]
    if vision.get("input_format", "images") == "images":
        size = vision["image_size"]
        converter = ("SigLIPImageConverter", {
            "image_size": (size, size) if isinstance(size, int) else tuple(size),
            "interpolation": "bilinear", "antialias": False,
        })
    else:
        converter = ("NaFlexImageConverter", {"patch_size": vision["patch_size"], "max_num_patches": 256})
    num_tensors = sum(len(_our_paths(key, shape)) for key, shape in shapes.items())
    return Checkpoint(
        config=resolved,
        tensors=lambda: _tensors(path, leaves, resolved, progress),
        num_tensors=num_tensors,
        tokenizer=None,
        image_converter=converter,
        source=source,
        origins=origins(leaves),
    )


def origins(leaves, our_paths=None):
    """`{our path: the .npz key (and block of a scanned leaf) it is read from}`."""
    our_paths = our_paths or _our_paths
    return {
        ours: repr(npz_key) + ("" if index is None else f"[{index}]")
        for key, (npz_key, shape, _) in leaves.items()
        for ours, index in our_paths(key, shape, npz_key)
    }


def _tensors(path, leaves, config, progress, our_paths=None, to_ours=None):
    """Yield `(our path, array)`; each leaf is read once, scanned ones sliced per
    block. `our_paths(key, shape, npz_key)` gives `[(path, index or None)]`
    (an index into the stacked leaf), `to_ours(key, value, config)` the layout."""
    our_paths, to_ours = our_paths or _our_paths, to_ours or _to_ours
    with _load(path) as npz:
        for key, (npz_key, shape, _) in leaves.items():
            try:
                value = npz[npz_key]
            except _ARCHIVE_ERRORS as error:
                raise CorruptCheckpoint(f"{path}: cannot read {npz_key!r} ({error}).") from error
            if callable(progress):
                progress(npz_key)
            if value.dtype.kind == "V" and value.dtype.itemsize == 2 and value.dtype.names is None:
                value = value.view(ml_dtypes.bfloat16)
            for ours, index in our_paths(key, shape, npz_key):
                # A slice is copied so that the consumer never holds the stacked leaf.
                yield ours, to_ours(key, value if index is None else np.array(value[index]), config)
            value = None


# -- writing -------------------------------------------------------------------


def write_big_vision(backbone, path, scan=False):
    """Save a `SigLIPBackbone` as a big_vision two-tower `.npz` (`params/...` keys).

    A fixed-resolution tower (`input_format="images"`) is written as big_vision's
    ViT: conv patch kernel `(P, P, C, W)`, flat position table `(1, h*w, W)`; a
    NaFlex or packed tower as the NaFlex ViT: Dense kernel `(P*P*C, W)`, grid
    `(h, w, W)`. The text position table becomes `(1, L, W)`. Blocks are written
    per block (`encoderblock_{i}`, SigLIP) or, with `scan=True`, stacked on a
    leading depth axis under `encoderblock` (SigLIP 2). bfloat16 weights are
    stored as numpy void of itemsize 2, as big_vision stores them.

    Args:
        backbone: a `SigLIPBackbone`.
        path: the file; `np.savez` appends `.npz` when missing.
        scan: write the scanned layout.
    """
    from keras import ops

    names = {ours: bv for bv, ours in NAMES.items()}
    leaves = {ours: bv for bv, ours in BLOCK.items()}
    encoders = {ours: bv for bv, ours in ENCODERS.items()}
    vit = backbone.vision_encoder.vit
    fixed = backbone.vision_encoder.input_format == "images"
    tree, stacks = {}, {}
    for variable in backbone.weights:
        value = ops.convert_to_numpy(variable)
        if value.dtype == ml_dtypes.bfloat16:
            value = value.view("V2")
        match = re.fullmatch(r"(vit/encoder|transformer/encoder)/block_(\d+)/(.+)", variable.path)
        if match:
            prefix, leaf = encoders[match[1]], leaves[match[3]]
            if scan:
                stacks.setdefault(f"{prefix}/encoderblock/{leaf}", {})[int(match[2])] = value
            else:
                tree[f"{prefix}/encoderblock_{match[2]}/{leaf}"] = value
            continue
        if variable.path not in names:
            raise ValueError(f"The weight {variable.path!r} has no big_vision counterpart.")
        key = names[variable.path]
        if fixed and key == "img/embedding/kernel":
            value = value.reshape(vit.patch_size, vit.patch_size, vit.num_channels, vit.width)
        elif fixed and key == "img/pos_embedding":
            value = value.reshape(1, -1, vit.width)
        elif key == "txt/pos_embedding":
            value = value[None]
        tree[key] = value
    for key, blocks in stacks.items():
        tree[key] = np.stack([blocks[i] for i in range(len(blocks))])
    np.savez(path, **{f"params/{key}": value for key, value in tree.items()})
