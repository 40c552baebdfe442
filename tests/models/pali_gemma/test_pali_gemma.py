"""PaliGemma 1 and 2 against Hugging Face `PaliGemmaForConditionalGeneration`.

Tiny random HF models (every parameter shifted by noise, so no bias is zero
and no RMSNorm scale is one) are saved with `save_pretrained` (safetensors),
converted with `keras_siglip.convert.pali_gemma`, and fed the same prefix-LM
input: 16 image tokens + a text prefix (full attention) + a causal suffix, with
right padding. The Gemma 2 model has attention and final soft caps that bite
(3 and 5), `query_pre_attn_scalar` != head_dim (the 27B rule) and a sliding
window of 4 tokens on its even layers, shorter than the 26-token sequences.

Tolerance ATOL = 1e-5 on the logits of the real text positions (padded query
rows differ by design: big_vision masks them, HF does not; they are never
used). Measured max abs differences (CPU, float32, logits up to ~5 in size),
Gemma 1 / Gemma 2: jax 1.2e-6 / 1.9e-6, tensorflow 1.4e-6 / 1.4e-6,
torch 1.4e-6 / 1.7e-6.
"""

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import keras  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from keras_siglip.convert.common import CheckpointMismatch  # noqa: E402
from keras_siglip.convert.pali_gemma import load_pali_gemma  # noqa: E402
from keras_siglip.layers.gemma import make_attention_mask  # noqa: E402
from keras_siglip.models.pali_gemma import PaliGemmaBackbone  # noqa: E402
from tests.pali_gemma_reference import (  # noqa: E402
    GEMMA_1, GEMMA_2, NUM_IMAGE_TOKENS, TEXT_LENGTH, VOCAB, hf_text_logits, keras_logits, make_inputs,
    max_real_difference, saved_hf_pali_gemma,
)

ATOL = 1e-5


@pytest.fixture(scope="module")
def gemma1(tmp_path_factory):
    model, folder = saved_hf_pali_gemma(tmp_path_factory, "paligemma1", GEMMA_1, seed=0)
    return model, folder, load_pali_gemma(folder)


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    model, folder = saved_hf_pali_gemma(tmp_path_factory, "paligemma2", GEMMA_2, seed=1)
    return model, folder, load_pali_gemma(folder, sliding_window="config")


@pytest.mark.parametrize("which", ["gemma1", "gemma2"])
def test_logits_match_transformers(request, which):
    """Prefix-LM logits equal HF's on every real text position."""
    model, _, backbone = request.getfixturevalue(which)
    for seed in (0, 1):
        inputs = make_inputs(seed)
        expected = hf_text_logits(model, inputs)
        actual = keras_logits(backbone, inputs)
        assert actual.shape == expected.shape == (2, TEXT_LENGTH, VOCAB)
        assert max_real_difference(actual, expected, inputs) <= ATOL


def test_gemma2_options_are_exercised(gemma2):
    """Each Gemma 2 option changes these logits, so the parity above covers it:
    dropping the window, either soft cap or the query scalar moves them by > 1e-2."""
    model, _, backbone = gemma2
    inputs = make_inputs(2)
    reference = keras_logits(backbone, inputs)
    config = backbone.get_config()
    for change in (dict(sliding_window=None), dict(attention_logit_soft_cap=None),
                   dict(final_logit_soft_cap=None), dict(query_pre_attn_scalar=None)):
        variant = PaliGemmaBackbone.from_config({**config, **change})
        variant.set_weights(backbone.get_weights())
        assert max_real_difference(keras_logits(variant, inputs), reference, inputs) > 1e-2, change


def test_default_conversion_drops_the_sliding_window(gemma2):
    """Without `sliding_window="config"` the converter follows big_vision (global
    attention); on sequences within the window both agree with HF."""
    model, folder, _ = gemma2
    backbone = load_pali_gemma(folder)
    assert backbone.get_config()["sliding_window"] is None
    assert load_pali_gemma(folder, sliding_window=64).get_config()["sliding_window"] == 64


def test_cached_decoding_matches_full_forward(gemma2):
    """Prefill image + prefix, then one suffix token per step: the cached logits
    equal the full forward's (sliding window, soft caps and GQA included)."""
    _, _, backbone = gemma2
    inputs = make_inputs(3, prefix_lengths=(5, 5), suffix_lengths=(5, 3))
    full = keras_logits(backbone, inputs)
    decoder = backbone.decoder
    embeddings = backbone.embed_inputs(inputs["images"], inputs["token_ids"])
    padding_mask, ar_mask = backbone.sequence_masks(inputs["padding_mask"], inputs["response_mask"])
    total = NUM_IMAGE_TOKENS + TEXT_LENGTH
    cache = decoder.initial_cache(2, total)
    prefill = NUM_IMAGE_TOKENS + 5
    logits, _, cache = decoder.call_with_cache(embeddings[:, :prefill], cache, 0, padding_mask, ar_mask)
    steps = [keras.ops.convert_to_numpy(logits)[:, NUM_IMAGE_TOKENS:]]
    for index in range(prefill, total):
        index_tensor = keras.ops.convert_to_tensor(index, "int32")
        logits, _, cache = decoder.call_with_cache(
            embeddings[:, index:index + 1], cache, index_tensor, padding_mask, ar_mask
        )
        steps.append(keras.ops.convert_to_numpy(logits))
    cached = np.concatenate(steps, axis=1)
    assert max_real_difference(cached, full, inputs) <= ATOL


def test_prefix_lm_mask_is_big_vision_make_attn_mask():
    """`make_attention_mask` equals big_vision's formula on a PaliGemma layout:
    2 image tokens, BOS + prefix + "\\n", suffix, padding."""
    input_mask = np.array([[1, 1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1]], bool)
    mask_ar = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1, 0, 1]], "int32")
    cumsum = np.cumsum(mask_ar, axis=1)
    expected = (cumsum[:, None, :] <= cumsum[:, :, None]) & input_mask[:, :, None] & input_mask[:, None, :]
    actual = keras.ops.convert_to_numpy(make_attention_mask(input_mask, mask_ar))
    np.testing.assert_array_equal(actual, expected)
    # Image + prefix form one full block; the suffix sees it and is causal.
    assert actual[0, :4, :4].all() and not actual[0, :4, 4:].any()
    np.testing.assert_array_equal(actual[0, 4:7, 4:7], np.tril(np.ones((3, 3), bool)))


def test_bad_inputs_raise_clear_errors(gemma1):
    _, _, backbone = gemma1
    inputs = make_inputs(4)
    cases = [
        (dict(images=inputs["images"][:, :8]), "images of shape"),
        (dict(token_ids=inputs["token_ids"][:, :, None]), "token_ids of shape"),
        (dict(padding_mask=inputs["padding_mask"][:, :4]), "padding_mask must have the shape"),
        (dict(response_mask=inputs["response_mask"][:1]), "response_mask must have the shape"),
        (dict(token_ids=inputs["token_ids"] + VOCAB), "Token ids must lie in"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            backbone({**inputs, **change})
    with pytest.raises(ValueError, match="lack"):
        backbone({key: value for key, value in inputs.items() if key != "response_mask"})


def _rewrite(folder, out, edit):
    """Copy an HF folder with its tensors edited by `edit(dict) -> dict`."""
    shutil.copytree(folder, out)
    path = os.path.join(out, "model.safetensors")
    save_file(edit(load_file(path)), path, metadata={"format": "pt"})
    return out


def test_converter_reports_missing_and_unexpected_tensors(gemma1, tmp_path):
    _, folder, _ = gemma1

    def edit(tensors):
        del tensors["language_model.model.layers.1.self_attn.k_proj.weight"]
        tensors["language_model.model.layers.1.self_attn.k_proj.bias"] = np.zeros(16, "float32")
        return tensors

    with pytest.raises(CheckpointMismatch) as error:
        load_pali_gemma(_rewrite(folder, str(tmp_path / "broken"), edit))
    message = str(error.value)
    assert "missing (1): gemma/block_1/attention/key/kernel" in message
    assert "unexpected (1): huggingface:language_model.layers.1.self_attn.k_proj.bias" in message


def test_converter_reports_misshaped_tensors_and_bad_configs(gemma1, tmp_path):
    _, folder, _ = gemma1

    def edit(tensors):
        tensors["multi_modal_projector.linear.bias"] = np.zeros(7, "float32")
        return tensors

    with pytest.raises(CheckpointMismatch, match=r"mis-shaped \(1\): vit/head/bias"):
        load_pali_gemma(_rewrite(folder, str(tmp_path / "misshaped"), edit))
    bad = shutil.copytree(folder, str(tmp_path / "bad_config"))
    with open(os.path.join(bad, "config.json")) as f:
        config = json.load(f)
    config["text_config"].update(attention_bias=True, rms_norm_eps=1e-5)
    with open(os.path.join(bad, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=r"(?s)rms_norm_eps = 1e-05.*attention_bias = True"):
        load_pali_gemma(bad)


def test_converter_reads_every_tensor_naming(gemma1, tmp_path):
    """transformers 4.5x names (`model.vision_tower.vision_model.…`,
    `model.language_model.…`) with an explicit tied `lm_head.weight` load the same weights."""
    _, folder, backbone = gemma1

    def edit(tensors):
        renamed = {}
        for name, value in tensors.items():
            name = name.replace("vision_tower.", "vision_tower.vision_model.", 1)
            name = name.replace("language_model.model.", "language_model.", 1)
            renamed["model." + name] = value
        renamed["lm_head.weight"] = tensors["language_model.model.embed_tokens.weight"]
        return renamed

    other = load_pali_gemma(_rewrite(folder, str(tmp_path / "renamed"), edit))
    for a, b in zip(backbone.weights, other.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_config_round_trip(gemma2):
    _, _, backbone = gemma2
    clone = PaliGemmaBackbone.from_config(backbone.get_config())
    clone.set_weights(backbone.get_weights())
    inputs = make_inputs(5)
    np.testing.assert_allclose(keras_logits(clone, inputs), keras_logits(backbone, inputs), atol=1e-6)


def test_compiled_forward_and_cached_step(gemma2):
    """The forward compiles (`predict`: XLA on jax, tf.function on tensorflow) and a
    cached step runs with a tensor index as generation compiles it
    (`compile_stateless`: `jax.jit`, `tf.function(jit_compile=True)`, eager torch
    under `no_grad`; static shapes throughout): one compiled step serves two
    positions, each giving the full forward's logits."""
    from keras_siglip.models.cappa.cappa_generation import compile_stateless

    _, _, backbone = gemma2
    inputs = make_inputs(6, prefix_lengths=(4, 6), suffix_lengths=(6, 4))  # no padding
    expected = keras_logits(backbone, inputs)
    np.testing.assert_allclose(backbone.predict(inputs, verbose=0), expected, atol=1e-5)

    decoder = backbone.decoder
    embeddings = backbone.embed_inputs(inputs["images"], inputs["token_ids"])
    padding_mask, ar_mask = backbone.sequence_masks(inputs["padding_mask"], inputs["response_mask"])
    cache = decoder.initial_cache(2, NUM_IMAGE_TOKENS + TEXT_LENGTH)
    _, _, cache = decoder.call_with_cache(embeddings[:, :-2], cache, 0, padding_mask, ar_mask)
    step = compile_stateless(backbone, lambda x, cache, index: decoder.call_with_cache(
        x, cache, index, padding_mask, ar_mask)[::2])

    last = NUM_IMAGE_TOKENS + TEXT_LENGTH - 1
    for index in (last - 1, last):
        logits, cache = step(embeddings[:, index : index + 1], cache, keras.ops.convert_to_tensor(index, "int32"))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(logits), expected[:, index - NUM_IMAGE_TOKENS][:, None],
                                   atol=ATOL)
