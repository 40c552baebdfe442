"""A keras-hub PaliGemma (Gemma 1 and Gemma 2 configs) converts to ours with the
same logits and the same greedy generations."""

import json

import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

from keras_siglip.convert import CheckpointMismatch
from keras_siglip.convert.keras_hub_pali_gemma import (
    config_from_keras_hub, is_keras_hub_pali_gemma, load_keras_hub_pali_gemma, read_keras_hub_pali_gemma,
)
from keras_siglip.models import PaliGemmaCausalLM
from tests.helpers import perturb_pali_gemma
from tests.keras_hub_pali_gemma_reference import BASE, CONFIGS, IMAGE, VOCAB, inputs, keras_hub_logits


def honour_query_flag(backbone):
    """keras-hub 0.32's `GemmaDecoderBlock` builds its attention with
    `query_head_dim_normalize=True` whatever the backbone's flag says; set the
    flag the config asks for on its attention layers (read at call time), so the
    reference computes the model the config describes."""
    for block in backbone.transformer_layers:
        block.attention.query_head_dim_normalize = backbone.query_head_dim_normalize


def make_keras_hub(name, seed=1):
    keras.utils.set_random_seed(0)
    theirs = keras_hub.models.PaliGemmaBackbone(**BASE, **CONFIGS[name])
    perturb_pali_gemma(theirs, np.random.default_rng(seed))
    return theirs


@pytest.fixture(params=sorted(CONFIGS))
def pair(request):
    theirs = make_keras_hub(request.param)
    ours = load_keras_hub_pali_gemma(theirs)
    honour_query_flag(theirs)
    return request.param, theirs, ours


def test_config_mapping(pair):
    name, theirs, ours = pair
    config = config_from_keras_hub(theirs.get_config())
    assert config["intermediate_dim"] == BASE["intermediate_dim"] // 2
    if name == "gemma2":
        assert config["use_post_norms"] and config["sliding_window"] == 9
        assert config["attention_logit_soft_cap"] == 2.0 and config["final_logit_soft_cap"] == 3.0
        assert config["query_pre_attn_scalar"] == BASE["hidden_dim"] // BASE["num_query_heads"]
    else:
        assert not config["use_post_norms"] and config["sliding_window"] is None
        assert config["query_pre_attn_scalar"] is None and config["final_logit_soft_cap"] is None
    assert ours.decoder.sliding_window == config["sliding_window"]


def test_same_logits(pair):
    _, theirs, ours = pair
    x = inputs(np.random.default_rng(2))
    expected = keras_hub_logits(theirs, x)
    got = ops.convert_to_numpy(ours(x))
    real = x["padding_mask"].astype(bool)  # padded rows differ (keras-hub zeroes them) and are unused
    assert np.abs(expected[real]).max() > 1.0  # not a trivially small comparison
    np.testing.assert_allclose(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_keras_hub_query_scale_option():
    """`query_pre_attn_scalar="keras_hub"` reproduces unpatched keras-hub (head_dim
    scaling); the default follows the config (hidden_dim / heads) and differs."""
    theirs = make_keras_hub("gemma2")
    x = inputs(np.random.default_rng(5))
    expected = keras_hub_logits(theirs, x)
    real = x["padding_mask"].astype(bool)
    as_computed = load_keras_hub_pali_gemma(theirs, query_pre_attn_scalar="keras_hub")
    assert as_computed.decoder.query_pre_attn_scalar is None
    np.testing.assert_allclose(ops.convert_to_numpy(as_computed(x))[real], expected[real], atol=1e-5, rtol=1e-5)
    configured = load_keras_hub_pali_gemma(theirs)
    assert configured.decoder.query_pre_attn_scalar == BASE["hidden_dim"] // BASE["num_query_heads"]
    assert np.abs(ops.convert_to_numpy(configured(x))[real] - expected[real]).max() > 1e-2


def test_same_greedy_generation(pair):
    _, theirs, ours = pair
    rng = np.random.default_rng(3)
    batch, prompt, new = 2, 4, 8
    images = rng.uniform(-1, 1, (batch, IMAGE, IMAGE, 3)).astype("float32")
    prompt_ids = rng.integers(2, VOCAB, (batch, prompt)).astype("int32")
    reference = keras_hub.models.PaliGemmaCausalLM(backbone=theirs, preprocessor=None)
    reference.compile(sampler="greedy")
    padded = np.concatenate([prompt_ids, np.zeros((batch, new), "int32")], axis=1)
    mask = np.concatenate([np.ones((batch, prompt), bool), np.zeros((batch, new), bool)], axis=1)
    out = reference.generate({"images": images, "token_ids": padded, "padding_mask": mask}, stop_token_ids=None)
    expected = np.asarray(ops.convert_to_numpy(out["token_ids"]))[:, prompt:]
    got = PaliGemmaCausalLM(ours, preprocessor=None).generate(images, token_ids=prompt_ids, max_new_tokens=new)
    assert got.shape == (batch, new)
    np.testing.assert_array_equal(got, expected)


def test_preset_folder(tmp_path):
    theirs = make_keras_hub("gemma1", seed=4)
    theirs.save_to_preset(str(tmp_path))
    assert is_keras_hub_pali_gemma(tmp_path)
    checkpoint = read_keras_hub_pali_gemma(str(tmp_path))
    assert checkpoint.tokenizer is None  # a backbone-only preset
    assert checkpoint.image_converter == ("PaliGemmaImageConverter", {"image_size": (IMAGE, IMAGE)})
    from_folder = load_keras_hub_pali_gemma(str(tmp_path))
    from_object = {v.path: ops.convert_to_numpy(v) for v in load_keras_hub_pali_gemma(theirs).weights}
    for variable in from_folder.weights:
        np.testing.assert_array_equal(ops.convert_to_numpy(variable), from_object[variable.path], err_msg=variable.path)


def test_convert_routes_a_keras_hub_pali_gemma_preset(tmp_path):
    from keras_siglip import convert
    from keras_siglip.models import PaliGemmaBackbone

    theirs = make_keras_hub("gemma2", seed=5)
    theirs.save_to_preset(str(tmp_path / "theirs"))
    assert convert.detect_model(tmp_path / "theirs") == "pali_gemma"
    convert.convert(tmp_path / "theirs", tmp_path / "ours", progress=False)
    ours = PaliGemmaBackbone.from_preset(str(tmp_path / "ours"))
    expected = {v.path: ops.convert_to_numpy(v) for v in load_keras_hub_pali_gemma(theirs).weights}
    for variable in ours.weights:
        np.testing.assert_array_equal(ops.convert_to_numpy(variable), expected[variable.path], err_msg=variable.path)


def test_not_a_pali_gemma_preset(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"registered_name": "keras_hub>SigLIPBackbone"}))
    assert not is_keras_hub_pali_gemma(tmp_path)
    with pytest.raises(ValueError, match="not a keras-hub PaliGemma preset"):
        read_keras_hub_pali_gemma(str(tmp_path))


def test_unsupported_config_lists_every_problem():
    config = dict(BASE, vit_pooling="map", layer_norm_epsilon=1e-5, use_post_ffw_norm=True)
    with pytest.raises(ValueError) as error:
        config_from_keras_hub(config)
    text = str(error.value)
    assert "vit_pooling" in text and "layer_norm_epsilon" in text and "use_post_ffw_norm" in text


def test_mismatch_names_every_weight():
    from keras_siglip.convert.common import load_into
    from keras_siglip.models import PaliGemmaBackbone

    keras.utils.set_random_seed(0)
    theirs = keras_hub.models.PaliGemmaBackbone(**BASE)
    checkpoint = read_keras_hub_pali_gemma(theirs)
    # A target with a different Gemma width: every Gemma tensor is mis-shaped, the
    # post norms of a Gemma 2 target are missing.
    wrong = dict(checkpoint.config, use_post_norms=True, intermediate_dim=BASE["intermediate_dim"])
    with pytest.raises(CheckpointMismatch) as error:
        load_into(PaliGemmaBackbone(**wrong), checkpoint, progress=False)
    text = str(error.value)
    assert "missing" in text and "gemma/block_0/post_ffw_norm/scale" in text
    assert "mis-shaped" in text and "gemma/block_1/ffw_linear/kernel" in text
