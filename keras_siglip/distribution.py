"""Sharding layouts for `keras.distribution`: data parallel, FSDP and tensor parallel.

    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], keras.distribution.list_devices())
    layout_map = ks.models.SigLIPBackbone.get_layout_map(mesh)
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch"))
    backbone = ks.models.SigLIPBackbone.from_preset(...)   # built sharded

Every kernel gets one dimension on the model axis (tensor parallel: attention
heads, the MLP hidden units, the vocabulary) and another on the data axis
(FSDP: the weights are spread over the data-parallel devices and gathered for
use). Biases, LayerNorm, position embeddings and the MAP probe are replicated.
Give `model_axis=None` for pure FSDP on a 1-D data mesh, `data_axis=None` for
pure tensor parallelism.

`pali_gemma_layout_map` (`PaliGemmaBackbone.get_layout_map`) does the same for
PaliGemma's ViT, projector and Gemma decoder, with keras-hub's Gemma layout, and
names every replicated weight (`PALI_GEMMA_REPLICATED`).
"""

import keras

# Patterns match anywhere in a variable path (preset-loaded towers prefix their names).
_KERNELS = (
    ("embedding/kernel", ("data", "model")),  # patch embedding (P*P*C, W)
    ("token_embedding/embeddings", ("model", "data")),  # (vocabulary, W)
    ("attention/(query|key|value)/kernel", ("data", "model", None)),  # (W, heads, head_dim)
    ("attention/attention_output/kernel", ("model", None, "data")),  # (heads, head_dim, W)
    ("mlp/dense_0/kernel", ("data", "model")),  # (W, mlp_dim)
    ("mlp/dense_1/kernel", ("model", "data")),  # (mlp_dim, W)
    ("head/kernel", ("data", "model")),  # (W, embedding width)
)


def transformer_layout_map(device_mesh, model_axis="model", data_axis="batch"):
    """A `keras.distribution.LayoutMap` for the ViT and text transformer weights.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh`.
        model_axis, data_axis: mesh axis names (or None to not shard over one).

    Returns:
        The layout map; every sharded dimension must divide by its axis size.
    """
    names = set(device_mesh.axis_names)
    for axis in (model_axis, data_axis):
        if axis is not None and axis not in names:
            raise ValueError(f"Mesh axis {axis!r} is not in the device mesh's axes {device_mesh.axis_names}.")
    rename = {"model": model_axis, "data": data_axis, None: None}
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in _KERNELS:
        layout_map[f".*{pattern}$"] = tuple(rename[axis] for axis in axes)
    return layout_map


# PaliGemma: the ViT's rules above and keras-hub's Gemma rules, anchored on the
# backbone's `vit/` and `gemma/` layers (the two towers name their attention
# layers alike but order the kernels' axes differently). Heads before width in
# Gemma's (heads, hidden, head_dim) query / key / value kernels.
_VIT = "(.*/)?vit/"
_GEMMA = "(.*/)?gemma/"
_PALI_GEMMA_KERNELS = (
    # The patch embedding (P*P*3 = 588, W) stays whole on the data axis: 588 only
    # divides by 1, 2, 3, 4, 6, ... and the kernel is small (0.7M).
    (_VIT + "embedding/kernel", (None, "model")),
    (_VIT + r"encoder/block_\d+/attention/(query|key|value)/kernel", ("data", "model", None)),  # (W, heads, hd)
    (_VIT + r"encoder/block_\d+/attention/attention_output/kernel", ("model", None, "data")),  # (heads, hd, W)
    (_VIT + r"encoder/block_\d+/mlp/dense_0/kernel", ("data", "model")),  # (W, mlp_dim)
    (_VIT + r"encoder/block_\d+/mlp/dense_1/kernel", ("model", "data")),  # (mlp_dim, W)
    (_VIT + "head/kernel", ("data", "model")),  # the projector (W, hidden_dim)
    (_GEMMA + "token_embedding/embeddings", ("model", "data")),  # (V, hidden_dim), tied output layer
    (_GEMMA + r"block_\d+/attention/query/kernel", ("model", "data", None)),  # (heads, hidden, hd)
    (_GEMMA + r"block_\d+/attention/(key|value)/kernel", ("model", "data", None)),  # (kv_heads, hidden, hd)
    (_GEMMA + r"block_\d+/attention/attention_output/kernel", ("model", None, "data")),  # (heads, hd, hidden)
    (_GEMMA + r"block_\d+/ffw_gating(_2)?/kernel", ("data", "model")),  # (hidden, intermediate)
    (_GEMMA + r"block_\d+/ffw_linear/kernel", ("model", "data")),  # (intermediate, hidden)
)
# Replicated on every device, declared so that no weight is replicated by accident:
# biases, LayerNorm / RMSNorm, the learned position grid and LoRA factors (rank r).
PALI_GEMMA_REPLICATED = (
    _VIT + ".*/bias",
    _VIT + ".*/(gamma|beta)",
    _VIT + "position_embedding/embeddings(_x|_y)?",
    _GEMMA + ".*/scale",
    ".*/lora_kernel_(a|b)",
)


def pali_gemma_layout_map(device_mesh, model_axis="model", data_axis="batch", num_key_value_heads=None):
    """A `keras.distribution.LayoutMap` for every `PaliGemmaBackbone` weight.

    See `PaliGemmaBackbone.get_layout_map`. `num_key_value_heads` (the config's):
    when the model axis does not divide it (PaliGemma 1's single key / value
    head), the key and value kernels are not split over the model axis.
    """
    names = set(device_mesh.axis_names)
    for axis in (model_axis, data_axis):
        if axis is not None and axis not in names:
            raise ValueError(f"Mesh axis {axis!r} is not in the device mesh's axes {device_mesh.axis_names}.")
    rename = {"model": model_axis, "data": data_axis, None: None}
    model_size = dict(zip(device_mesh.axis_names, device_mesh.shape)).get(model_axis, 1)
    split_kv = num_key_value_heads is None or num_key_value_heads % model_size == 0
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in _PALI_GEMMA_KERNELS:
        if "(key|value)" in pattern and _GEMMA in pattern and not split_kv:
            axes = (None, *axes[1:])
        layout_map[pattern] = tuple(rename[axis] for axis in axes)
    for pattern in PALI_GEMMA_REPLICATED:
        layout_map[pattern] = ()  # PartitionSpec(): whole on every device, whatever the rank
    return layout_map
