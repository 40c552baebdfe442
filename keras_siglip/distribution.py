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
