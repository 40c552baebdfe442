"""`PaliGemmaBackbone.get_layout_map`: every weight has a declared layout (every
backend; the layout map is plain Python). Sharded training on a JAX mesh is
checked in integration_tests/test_distribution.py."""

import re

import keras
import pytest

from keras_siglip import transfer
from keras_siglip.models.pali_gemma import PaliGemmaBackbone

GEMMA_1 = dict(
    vocabulary_size=64, image_size=16, num_layers=2, num_query_heads=4, num_key_value_heads=1,
    hidden_dim=16, intermediate_dim=32, head_dim=8, vit_patch_size=8, vit_hidden_dim=16,
    vit_num_layers=2, vit_num_heads=2, vit_intermediate_dim=32,
)
GEMMA_2 = dict(
    GEMMA_1, num_key_value_heads=2, query_pre_attn_scalar=8, attention_logit_soft_cap=50.0,
    final_logit_soft_cap=30.0, use_post_norms=True, sliding_window=4,
)
REPLICATED_NAMES = re.compile(r".*/(bias|gamma|beta|scale|embeddings|lora_kernel_a|lora_kernel_b)$")


def mesh(shape=(2, 2), names=("batch", "model")):
    count = 1
    for size in shape:
        count *= size
    return keras.distribution.DeviceMesh(shape, list(names), [f"cpu:{i}" for i in range(count)])


def backbone(config, lora=False, **overrides):
    keras.utils.set_random_seed(0)
    model = PaliGemmaBackbone(**{**config, **overrides})
    if lora:
        transfer.enable_lora(model, 2, lora_vit=True)
    return model


@pytest.mark.parametrize(
    "config, overrides, lora",
    [
        (GEMMA_1, {}, False),
        (GEMMA_2, {}, False),
        (GEMMA_2, {"input_format": "naflex", "max_num_patches": 6}, False),
        (GEMMA_2, {"remat": True}, False),
        (GEMMA_2, {}, True),
    ],
    ids=["gemma1", "gemma2", "naflex", "remat", "lora"],
)
def test_every_weight_has_a_declared_layout(config, overrides, lora):
    """No weight falls through to the default (replicated) layout: each path
    matches exactly one rule (the LayoutMap raises on several). Kernels and the
    token embedding are split on both axes; what is replicated is declared so
    (biases, norms, the position grid, LoRA factors) and nothing else."""
    model = backbone(config, lora, **overrides)
    # Gemma 1's single key / value head is not split over the model axis.
    layout_map = PaliGemmaBackbone.get_layout_map(mesh(), num_key_value_heads=config["num_key_value_heads"])
    replicated = set()
    for variable in model.weights:
        layout = layout_map[variable.path]
        assert layout is not None, f"{variable.path} has no rule"
        axes = tuple(layout.axes)
        if not axes:
            replicated.add(variable.path)
            assert REPLICATED_NAMES.fullmatch(variable.path), variable.path
            continue
        assert len(axes) == len(variable.shape), (variable.path, axes, variable.shape)
        assert "model" in axes or "/attention/key/" in variable.path or "/attention/value/" in variable.path
        if variable.path != "vit/embedding/kernel":  # 588 = P*P*3 inputs: not split
            assert "batch" in axes, variable.path
        for axis, size in zip(axes, variable.shape):  # this config divides by the (2, 2) mesh
            assert axis is None or size % 2 == 0, (variable.path, axes, variable.shape)
    assert any(path.startswith("gemma/") for path in replicated) and any(p.startswith("vit/") for p in replicated)
    if lora:
        assert any("lora_kernel" in path for path in replicated)


def test_layout_of_the_two_towers_and_the_axis_names():
    layout_map = PaliGemmaBackbone.get_layout_map(mesh((2, 4), ("data", "tensor")), "tensor", "data")
    axes = lambda path: tuple(layout_map[path].axes)  # noqa: E731
    # The ViT's (W, heads, head_dim) and Gemma's (heads, hidden, head_dim) query kernels.
    assert axes("vit/encoder/block_3/attention/query/kernel") == ("data", "tensor", None)
    assert axes("gemma/block_11/attention/query/kernel") == ("tensor", "data", None)
    assert axes("gemma/block_0/attention/value/kernel") == ("tensor", "data", None)
    assert axes("gemma/block_0/attention/attention_output/kernel") == ("tensor", None, "data")
    assert axes("gemma/token_embedding/embeddings") == ("tensor", "data")
    assert axes("gemma/block_2/ffw_gating/kernel") == ("data", "tensor")
    assert axes("gemma/block_2/ffw_linear/kernel") == ("tensor", "data")
    assert axes("vit/head/kernel") == ("data", "tensor")
    # Preset-loaded / wrapped models prefix their paths.
    assert axes("pali_gemma_backbone/gemma/block_0/ffw_linear/kernel") == ("tensor", "data")
    assert layout_map["some_other_layer/kernel"] is None


def test_single_key_value_head_and_missing_axes():
    # PaliGemma 1: one key / value head cannot be split over a model axis of 4.
    layout_map = PaliGemmaBackbone.get_layout_map(mesh((2, 4)), num_key_value_heads=1)
    assert tuple(layout_map["gemma/block_0/attention/key/kernel"].axes) == (None, "batch", None)
    assert tuple(layout_map["gemma/block_0/attention/query/kernel"].axes) == ("model", "batch", None)
    layout_map = PaliGemmaBackbone.get_layout_map(mesh((2, 4)), num_key_value_heads=8)
    assert tuple(layout_map["gemma/block_0/attention/key/kernel"].axes) == ("model", "batch", None)
    # Pure FSDP on a 1-D data mesh.
    fsdp = PaliGemmaBackbone.get_layout_map(mesh((4,), ("batch",)), model_axis=None)
    assert tuple(fsdp["gemma/block_0/ffw_gating/kernel"].axes) == ("batch", None)
    with pytest.raises(ValueError, match="'model' is not in the device mesh"):
        PaliGemmaBackbone.get_layout_map(mesh((4,), ("batch",)))
