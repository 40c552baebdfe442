"""big_vision CapPa checkpoints (`.npz`) -> `CapPaBackbone`.

big_vision's `models/proj/cappa/cappa.py` tree (reference/big_vision.md 3, 8.2):

    encoder/...                       the ViT, SigLIP's image names (no MAP head)
    pos_embedding_decoder             (1, L, E)
    decoder/EmbedTargets/embedding    (V [+ 1 for [MASK]], E)
    decoder/EncDecBlock{i}/LayerNorm{1,2,3}/{scale[, bias]}
    decoder/EncDecBlock{i}/{SelfAttn,CrossAttn}/{query,key,value,out}/kernel
    decoder/EncDecBlock{i}/MLP/Dense_{0,1}/{kernel[, bias]}
    decoder/LayerNorm/{scale,bias}, decoder/LogitsDense/{kernel,bias}

Scanned checkpoints (`scan=True`) stack the encoder blocks under
`encoder/Transformer/encoderblock` on axis 0 (as SigLIP 2) and the decoder
blocks under `decoder/EncDecBlock` on axis **1** (`nn.scan(variable_axes=
{"params": 1})`), e.g. `MLP/Dense_0/kernel (E, depth, M)`.
"""

import math
import os
import re

import numpy as np

from keras_siglip.convert import big_vision
from keras_siglip.convert.common import Checkpoint, CheckpointMismatch, load_into


def _decoder_block():
    names = {}
    for i in (1, 2, 3):
        names.update(big_vision._norm(f"LayerNorm{i}", f"layer_norm_{i}"))
    for bv, ours in (("SelfAttn", "self_attention"), ("CrossAttn", "cross_attention")):
        names.update({f"{bv}/{a}/kernel": f"{ours}/{b}/kernel" for a, b in
                      (("query", "query"), ("key", "key"), ("value", "value"), ("out", "attention_output"))})
    names.update(big_vision._mlp("MLP", "mlp"))
    return names


DECODER_BLOCK = _decoder_block()
NAMES = {
    "encoder/embedding/kernel": "vit/embedding/kernel",
    "encoder/embedding/bias": "vit/embedding/bias",
    "encoder/pos_embedding": "vit/position_embedding/embeddings",
    **big_vision._norm("encoder/Transformer/encoder_norm", "vit/encoder/encoder_norm"),
    "pos_embedding_decoder": "decoder/position_embedding",
    "decoder/EmbedTargets/embedding": "decoder/token_embedding/embeddings",
    **big_vision._norm("decoder/LayerNorm", "decoder/final_norm"),
    "decoder/LogitsDense/kernel": "decoder/logits/kernel",
    "decoder/LogitsDense/bias": "decoder/logits/bias",
}
_ENCODER_BLOCK = re.compile(r"encoder/Transformer/encoderblock(?:_(\d+))?/(.+)")
_DECODER_BLOCK = re.compile(r"decoder/EncDecBlock(\d+)?/(.+)")
_SCANNED_QUERY = "decoder/EncDecBlock/SelfAttn/query/kernel"


def _our_paths(key, shape, npz_key=None):
    """`[(our path, index into a stacked leaf or None)]` for one leaf; a leaf
    without a counterpart keeps its key (`load_into` lists it as unexpected)."""
    if key in NAMES:
        return [(NAMES[key], None)]
    for pattern, leaves, prefix, axis in ((_ENCODER_BLOCK, big_vision.BLOCK, "vit/encoder", 0),
                                          (_DECODER_BLOCK, DECODER_BLOCK, "decoder", 1)):
        match = pattern.fullmatch(key)
        if match and match[2] in leaves:
            if match[1] is not None:
                return [(f"{prefix}/block_{match[1]}/{leaves[match[2]]}", None)]
            if len(shape) > axis:
                return [(f"{prefix}/block_{i}/{leaves[match[2]]}", (slice(None),) * axis + (i,))
                        for i in range(shape[axis])]
    return [(npz_key or key, None)]


def _to_ours(key, value, config):
    if key == "encoder/embedding/kernel":  # conv (P, P, C, W) -> Dense (P*P*C, W)
        return np.reshape(value, (-1, value.shape[-1]))
    if key == "encoder/pos_embedding":  # (1, h*w, W) -> (h, w, W)
        size, patch = config["image_size"], config["patch_size"]
        try:
            return np.reshape(value, (size // patch, size // patch, value.shape[-1]))
        except ValueError:  # left as stored: `load_into` reports it as mis-shaped
            return value
    return value


def infer_config(shapes):
    """`CapPaBackbone` arguments from the leaves' shapes (no data read)."""

    def need(key):
        if key not in shapes:
            raise CheckpointMismatch(f"The checkpoint has no {key!r}.")
        return shapes[key]

    patch, _, channels, width = need("encoder/embedding/kernel")
    side = math.isqrt(need("encoder/pos_embedding")[1])
    encoder = big_vision._encoder(shapes, "encoder/Transformer", need)
    embed, logits = need("decoder/EmbedTargets/embedding"), need("decoder/LogitsDense/kernel")
    if _SCANNED_QUERY in shapes:  # (E, depth, H, hd)
        query = shapes[_SCANNED_QUERY]
        depth, heads = query[1], query[2]
        mlp_dim, block = need("decoder/EncDecBlock/MLP/Dense_0/kernel")[-1], "decoder/EncDecBlock"
    else:
        blocks = [int(m[1]) for key in shapes if (m := _DECODER_BLOCK.fullmatch(key)) and m[1]]
        if not blocks:
            raise CheckpointMismatch("The checkpoint has no decoder blocks under decoder/EncDecBlock.")
        block = f"decoder/EncDecBlock{min(blocks)}"
        depth, heads = max(blocks) + 1, need(f"{block}/SelfAttn/query/kernel")[1]
        mlp_dim = need(f"{block}/MLP/Dense_0/kernel")[-1]
    return dict(
        vocabulary_size=logits[1], patch_size=patch, width=width, image_size=side * patch,
        num_channels=channels, max_length=need("pos_embedding_decoder")[1], **encoder,
        decoder_width=embed[1], decoder_depth=depth, decoder_num_heads=heads, decoder_mlp_dim=mlp_dim,
        masked_pred=embed[0] == logits[1] + 1, decoder_bias=f"{block}/LayerNorm1/bias" in shapes,
    )


def read_cappa(path, progress=None):
    """A big_vision CapPa `.npz` (per-block or scanned) as a `Checkpoint` whose
    `config` is the `CapPaBackbone` arguments; tensors are read one leaf at a time."""
    path = os.fspath(path)
    leaves = big_vision._leaves(path, groups=("encoder", "decoder"), model="CapPa")
    shapes = {key: shape for key, (_, shape, _) in leaves.items()}
    try:
        config = infer_config(shapes)
    except ValueError as error:
        raise type(error)(f"{path}: {error}") from None
    return Checkpoint(
        config=config,
        tensors=lambda: big_vision._tensors(path, leaves, config, progress, _our_paths, _to_ours),
        num_tensors=sum(len(_our_paths(key, shape)) for key, shape in shapes.items()),
        image_converter=("SigLIPImageConverter", {"image_size": (config["image_size"],) * 2,
                                                  "interpolation": "bilinear", "antialias": False}),
        source=f"big_vision CapPa checkpoint {path}",
        origins=big_vision.origins(leaves, _our_paths),
    )


def load_cappa(path, progress=True, dtype=None, allow_nan=False):
    """Build a `CapPaBackbone` of a big_vision CapPa checkpoint's architecture and load it.

    Raises `CheckpointMismatch` listing every missing, unexpected or
    mis-shaped tensor when the file does not fit, `NonFiniteWeights` for
    NaN / inf weights unless `allow_nan` (see `common.load_into`)."""
    from keras_siglip.models import CapPaBackbone

    checkpoint = read_cappa(path)
    return load_into(CapPaBackbone(**checkpoint.config, dtype=dtype), checkpoint, progress=progress,
                     allow_nan=allow_nan)
