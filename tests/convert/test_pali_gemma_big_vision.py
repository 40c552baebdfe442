"""big_vision PaliGemma `.npz` -> `PaliGemmaBackbone`, against HF transformers.

Tiny random HF `PaliGemmaForConditionalGeneration` models (every parameter
perturbed) are written as big_vision trees by `hf_to_big_vision` below, which
is written from the two published layouts (HF PyTorch `Linear (out, in)`;
big_vision `gemma.py` einsums `q_einsum (N, D, H)`, `kv_einsum (2, K, D, H)`,
`qkv_einsum (3, N, D, H)`, `attn_vec_einsum (N, H, D)`, `gating_einsum
(2, D, F)`, `linear (F, D)`, and the ViT's Flax `DenseGeneral` kernels), not
from the reader. The reader's model must give HF's logits on a prefix-LM
input. Cases: Gemma 1 multi-query (scanned, as released), Gemma 1 multi-head
(`qkv_einsum`), Gemma 2 grouped-query with caps that bite and a query scalar
!= head_dim (per-layer layout, caps passed explicitly; HF's sliding window is
longer than the sequence, so global, as big_vision).

Measured max abs logit difference (float32, CPU, logits up to ~5): about 2e-6
on jax, tensorflow and torch (ATOL 1e-5).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import keras  # noqa: E402

from keras_siglip.convert.common import CheckpointMismatch  # noqa: E402
from keras_siglip.convert.pali_gemma import (  # noqa: E402
    infer_pali_gemma_config, load_pali_gemma_big_vision, read_pali_gemma_big_vision,
    write_pali_gemma_big_vision,
)

from tests.pali_gemma_reference import (  # noqa: E402  the same tiny HF models' layout
    IMAGE_SIZE, TEXT_LENGTH, VOCAB, hf_text_logits, make_inputs,
)
from tests.pali_gemma_reference import build_hf_pali_gemma as build_hf  # noqa: E402

ATOL = 1e-5

GEMMA_MQA = dict(model_type="gemma", vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=1, head_dim=16)
GEMMA_MHA = dict(GEMMA_MQA, num_key_value_heads=4)
GEMMA_2 = dict(GEMMA_MQA, model_type="gemma2", num_key_value_heads=2, sliding_window=64,
               attn_logit_softcapping=3.0, final_logit_softcapping=5.0, query_pre_attn_scalar=12)
GEMMA_2_OPTIONS = dict(attention_logit_soft_cap=3.0, final_logit_soft_cap=5.0, query_pre_attn_scalar=12)




def _hf_tensors(model):
    """HF state dict, names without the `model.` / `vision_model.` / `.model` nesting."""
    out = {}
    for name, value in model.state_dict().items():
        for old, new in (("model.", ""), ("vision_tower.vision_model.", "vision_tower."),
                         ("language_model.model.", "language_model.")):
            if name.startswith(old):
                name = new + name[len(old):]
        out[name] = value.detach().numpy().astype(np.float32)
    return out


def hf_to_big_vision(model, scan=True):
    """The big_vision PaliGemma tree (`params/...` keys) of an HF model."""
    t = _hf_tensors(model)
    v, g = model.config.vision_config, model.config.text_config
    w, vh = v.hidden_size, v.num_attention_heads
    d, n, k, h = g.hidden_size, g.num_attention_heads, g.num_key_value_heads, g.head_dim
    gemma2 = g.model_type == "gemma2"
    tree = {
        "img/embedding/kernel": t["vision_tower.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
        "img/embedding/bias": t["vision_tower.embeddings.patch_embedding.bias"],
        "img/pos_embedding": t["vision_tower.embeddings.position_embedding.weight"][None],
        "img/Transformer/encoder_norm/scale": t["vision_tower.post_layernorm.weight"],
        "img/Transformer/encoder_norm/bias": t["vision_tower.post_layernorm.bias"],
        "img/head/kernel": t["multi_modal_projector.linear.weight"].T,
        "img/head/bias": t["multi_modal_projector.linear.bias"],
        "llm/embedder/input_embedding": t["language_model.embed_tokens.weight"],
        "llm/final_norm/scale": t["language_model.norm.weight"],
    }
    vit_blocks, llm_layers = [], []
    for i in range(v.num_hidden_layers):
        p = f"vision_tower.encoder.layers.{i}"
        a = "MultiHeadDotProductAttention_0"
        block = {
            "LayerNorm_0/scale": t[f"{p}.layer_norm1.weight"], "LayerNorm_0/bias": t[f"{p}.layer_norm1.bias"],
            "LayerNorm_1/scale": t[f"{p}.layer_norm2.weight"], "LayerNorm_1/bias": t[f"{p}.layer_norm2.bias"],
            f"{a}/out/kernel": t[f"{p}.self_attn.out_proj.weight"].T.reshape(vh, w // vh, w),
            f"{a}/out/bias": t[f"{p}.self_attn.out_proj.bias"],
            "MlpBlock_0/Dense_0/kernel": t[f"{p}.mlp.fc1.weight"].T, "MlpBlock_0/Dense_0/bias": t[f"{p}.mlp.fc1.bias"],
            "MlpBlock_0/Dense_1/kernel": t[f"{p}.mlp.fc2.weight"].T, "MlpBlock_0/Dense_1/bias": t[f"{p}.mlp.fc2.bias"],
        }
        for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            block[f"{a}/{ours}/kernel"] = t[f"{p}.self_attn.{theirs}.weight"].T.reshape(w, vh, w // vh)
            block[f"{a}/{ours}/bias"] = t[f"{p}.self_attn.{theirs}.bias"].reshape(vh, w // vh)
        vit_blocks.append(block)
    for i in range(g.num_hidden_layers):
        p = f"language_model.layers.{i}"
        q = t[f"{p}.self_attn.q_proj.weight"].reshape(n, h, d).transpose(0, 2, 1)
        key = t[f"{p}.self_attn.k_proj.weight"].reshape(k, h, d).transpose(0, 2, 1)
        value = t[f"{p}.self_attn.v_proj.weight"].reshape(k, h, d).transpose(0, 2, 1)
        layer = {
            "attn/attn_vec_einsum/w": t[f"{p}.self_attn.o_proj.weight"].T.reshape(n, h, d),
            "mlp/gating_einsum": np.stack([t[f"{p}.mlp.gate_proj.weight"].T, t[f"{p}.mlp.up_proj.weight"].T]),
            "mlp/linear": t[f"{p}.mlp.down_proj.weight"].T,
            "pre_attention_norm/scale": t[f"{p}.input_layernorm.weight"],
        }
        if n == k:
            layer["attn/qkv_einsum/w"] = np.stack([q, key, value])
        else:
            layer["attn/q_einsum/w"] = q
            layer["attn/kv_einsum/w"] = np.stack([key, value])
        if gemma2:
            layer["post_attention_norm/scale"] = t[f"{p}.post_attention_layernorm.weight"]
            layer["pre_ffw_norm/scale"] = t[f"{p}.pre_feedforward_layernorm.weight"]
            layer["post_ffw_norm/scale"] = t[f"{p}.post_feedforward_layernorm.weight"]
        else:
            layer["pre_ffw_norm/scale"] = t[f"{p}.post_attention_layernorm.weight"]
        llm_layers.append(layer)
    if scan:
        tree.update({f"img/Transformer/encoderblock/{leaf}": np.stack([b[leaf] for b in vit_blocks])
                     for leaf in vit_blocks[0]})
        tree.update({f"llm/layers/{leaf}": np.stack([b[leaf] for b in llm_layers]) for leaf in llm_layers[0]})
    else:
        for i, block in enumerate(vit_blocks):
            tree.update({f"img/Transformer/encoderblock_{i}/{leaf}": x for leaf, x in block.items()})
        for i, layer in enumerate(llm_layers):
            tree.update({f"llm/layers/{i}/{leaf}": x for leaf, x in layer.items()})
    return {f"params/{key}": value for key, value in tree.items()}


def real_difference(backbone, model, inputs):
    actual = keras.ops.convert_to_numpy(backbone(inputs))
    expected = hf_text_logits(model, inputs)
    assert actual.shape == expected.shape == (2, TEXT_LENGTH, VOCAB)
    return float(np.max(np.abs(actual - expected)[inputs["padding_mask"].astype(bool)]))


CASES = {
    "gemma1_mqa_scanned": (GEMMA_MQA, True, {}),
    "gemma1_mha_scanned": (GEMMA_MHA, True, {}),
    "gemma2_gqa_per_layer": (GEMMA_2, False, GEMMA_2_OPTIONS),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    text, scan, options = CASES[request.param]
    model = build_hf(text, seed=sorted(CASES).index(request.param))
    path = str(tmp_path_factory.mktemp(request.param) / "paligemma.npz")
    np.savez(path, **hf_to_big_vision(model, scan=scan))
    return request.param, model, path, options


def test_logits_match_transformers(case):
    name, model, path, options = case
    backbone = load_pali_gemma_big_vision(path, **options)
    config = backbone.get_config()
    assert config["num_key_value_heads"] == model.config.text_config.num_key_value_heads
    assert config["use_post_norms"] == name.startswith("gemma2")
    assert all(config[key] == value for key, value in options.items())
    for seed in (0, 1):
        assert real_difference(backbone, model, make_inputs(seed)) <= ATOL


def test_writer_round_trip(case, tmp_path):
    """Our writer gives a file the reader loads to the same model, either layout."""
    name, model, path, options = case
    backbone = load_pali_gemma_big_vision(path, **options)
    inputs = make_inputs(3)
    expected = keras.ops.convert_to_numpy(backbone(inputs))
    for scan in (True, False):
        out = str(tmp_path / f"out_{scan}.npz")
        write_pali_gemma_big_vision(backbone, out, scan=scan)
        keys = set(np.load(out).files)
        assert ("params/llm/layers/mlp/linear" in keys) == scan
        assert ("params/llm/layers/attn/qkv_einsum/w" in keys) == (scan and "mha" in name)
        restored = load_pali_gemma_big_vision(out, **options)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(inputs)), expected)


def test_inferred_defaults():
    """Caps and query scale when not given: big_vision's gemma.py variants."""
    model = build_hf(GEMMA_2, seed=5)
    tree = hf_to_big_vision(model)
    shapes = {key[len("params/"):]: value.shape for key, value in tree.items()}
    config = infer_pali_gemma_config(shapes)
    assert config["attention_logit_soft_cap"] == 50.0 and config["final_logit_soft_cap"] == 30.0
    assert config["query_pre_attn_scalar"] is None and config["sliding_window"] is None
    assert config["image_size"] == IMAGE_SIZE and config["vocabulary_size"] == VOCAB
    assert infer_pali_gemma_config(shapes, final_logit_soft_cap=0.0)["final_logit_soft_cap"] is None
    gemma1 = {key: shape for key, shape in shapes.items() if "post_" not in key}
    config = infer_pali_gemma_config(gemma1)
    assert config["attention_logit_soft_cap"] is None and config["final_logit_soft_cap"] is None
    assert not config["use_post_norms"]
    # Gemma 2 27B shapes (PaliGemma 2 28B): queries scaled by (4608 / 32) ** -0.5.
    big = dict(shapes)
    big["llm/embedder/input_embedding"] = (257_152, 4608)
    big["llm/layers/attn/q_einsum/w"] = (46, 32, 4608, 128)
    big["llm/layers/attn/kv_einsum/w"] = (46, 2, 16, 4608, 128)
    big["llm/layers/mlp/gating_einsum"] = (46, 2, 4608, 36_864)
    big["llm/layers/pre_attention_norm/scale"] = (46, 4608)
    config = infer_pali_gemma_config(big)
    assert config["query_pre_attn_scalar"] == 144 and config["num_layers"] == 46
    assert config["intermediate_dim"] == 36_864 and config["num_key_value_heads"] == 16


def test_bfloat16_and_transposed_gating(tmp_path):
    """bfloat16 leaves (numpy void) load; a (2, F, D) gating einsum is transposed."""
    import ml_dtypes

    model = build_hf(GEMMA_MQA, seed=6)
    tree = hf_to_big_vision(model)
    reference = str(tmp_path / "f32.npz")
    np.savez(reference, **tree)
    gating = "params/llm/layers/mlp/gating_einsum"
    tree[gating] = np.ascontiguousarray(tree[gating].transpose(0, 1, 3, 2))
    bf16 = {key: value.astype(ml_dtypes.bfloat16).view("V2") for key, value in tree.items()}
    path = str(tmp_path / "bf16.npz")
    np.savez(path, **bf16)
    backbone = load_pali_gemma_big_vision(path)
    exact = load_pali_gemma_big_vision(reference)
    for ours, theirs in zip(backbone.weights, exact.weights):
        expected = keras.ops.convert_to_numpy(theirs).astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours), expected, err_msg=ours.path)


def test_mismatches_are_named(tmp_path):
    model = build_hf(GEMMA_MQA, seed=7)
    tree = hf_to_big_vision(model)
    tree.pop("params/llm/layers/mlp/linear")
    tree["params/llm/final_norm/scale"] = np.zeros(7, np.float32)
    tree["params/llm/layers/attn/extra"] = np.zeros(2, np.float32)
    path = str(tmp_path / "broken.npz")
    np.savez(path, **tree)
    with pytest.raises(CheckpointMismatch) as error:
        load_pali_gemma_big_vision(path)
    message = str(error.value)
    assert "gemma/block_0/ffw_linear/kernel" in message and "gemma/block_1/ffw_linear/kernel" in message
    assert "gemma/final_norm/scale: checkpoint (7,) vs model (48,)" in message
    assert "llm/layers/attn/extra" in message
    tree = hf_to_big_vision(model)
    tree.pop("params/llm/layers/mlp/gating_einsum")
    np.savez(path, **tree)
    with pytest.raises(CheckpointMismatch, match="lacks 'llm/layers/mlp/gating_einsum'"):
        read_pali_gemma_big_vision(path)
    np.savez(path, **{k: v for k, v in hf_to_big_vision(model).items() if not k.startswith("params/llm/")})
    with pytest.raises(ValueError, match="no llm/ params: not a big_vision PaliGemma"):
        read_pali_gemma_big_vision(path)


def test_config_argument(tmp_path):
    """A given config sets the options the shapes cannot tell and must agree with the rest."""
    model = build_hf(GEMMA_2, seed=8)
    path = str(tmp_path / "pg2.npz")
    np.savez(path, **hf_to_big_vision(model))
    checkpoint = read_pali_gemma_big_vision(path, config=dict(hidden_dim=48, final_logit_soft_cap=7.0))
    assert checkpoint.config["final_logit_soft_cap"] == 7.0
    assert checkpoint.config["attention_logit_soft_cap"] == 50.0  # the default, not given
    assert read_pali_gemma_big_vision(path, final_logit_soft_cap=None,
                                      config=dict(final_logit_soft_cap=7.0)).config["final_logit_soft_cap"] is None
    with pytest.raises(CheckpointMismatch, match="hidden_dim: checkpoint 48 vs config 2304"):
        read_pali_gemma_big_vision(path, config="paligemma2_3b_pt_224")
    with pytest.raises(ValueError, match="Unknown PaliGemma preset"):
        read_pali_gemma_big_vision(path, config="paligemma_7b")
