"""PaliGemma with a NaFlex (SigLIP 2 native aspect ratio) image tower.

The same weights as the fixed-resolution model: on the NaFlex patches of an
image already at the position grid's size (the NaFlex positions coincide with
the learned grid, no resize) the text logits equal the fixed-resolution ones,
however many padding slots there are and wherever they sit, whatever they hold
(padding is never attended). Cached greedy generation equals recomputing the
whole forward; a batch of images of different aspect ratios and prompts of
different lengths equals each example alone; the task with its preprocessor
(raw images -> patches) trains and survives a preset round trip.
"""

import numpy as np
import pytest

import keras
from keras import ops

from keras_siglip.layers import NaFlexImageConverter
from keras_siglip.models.cappa.cappa_generation import compile_stateless
from keras_siglip.models.pali_gemma import (
    PaliGemmaBackbone,
    PaliGemmaCausalLM,
    PaliGemmaCausalLMPreprocessor,
    PaliGemmaTokenizer,
)
from tests.helpers import numpy
from tests.pali_gemma_reference import uncached_greedy

ATOL = 1e-5
VOCAB = 64
BOS, EOS, PAD = 2, 1, 0
PATCH, IMAGE_SIZE = 4, 16  # a 4 x 4 learned position grid
GRID = IMAGE_SIZE // PATCH
SLOTS = 24  # NaFlex image prefix: 16 real patches + 8 padding slots
CONFIG = dict(vocabulary_size=VOCAB, image_size=IMAGE_SIZE, num_layers=1, num_query_heads=2, num_key_value_heads=1,
              hidden_dim=16, intermediate_dim=24, head_dim=8, vit_patch_size=PATCH, vit_hidden_dim=16,
              vit_num_layers=1, vit_num_heads=2, vit_intermediate_dim=24, attention_logit_soft_cap=5.0,
              final_logit_soft_cap=8.0, query_pre_attn_scalar=6, use_post_norms=True)
TEXTS = ["caption en", "detect cat ; dog", "a red circle", "two green triangles", "answer en what colour"] * 8


def perturbed(backbone, seed):
    """Every weight moved by noise (no zero bias, no unit norm scale); EOS's
    embedding row zeroed so that greedy decoding rarely stops at once."""
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        value = numpy(variable)
        value = value + 0.3 * rng.normal(size=value.shape).astype(value.dtype)
        if variable.path.endswith("token_embedding/embeddings"):
            value[EOS] = 0.0
        variable.assign(value)
    return backbone


@pytest.fixture(scope="module")
def fixed():
    keras.utils.set_random_seed(0)
    return perturbed(PaliGemmaBackbone(**CONFIG), seed=1)


@pytest.fixture(scope="module")
def naflex(fixed):
    backbone = PaliGemmaBackbone(**CONFIG, input_format="naflex", max_num_patches=SLOTS)
    backbone.set_weights(fixed.get_weights())
    return backbone


def jitted(backbone):
    """The backbone's forward, compiled (eager on torch), on numpy inputs."""
    forward = compile_stateless(backbone, backbone)
    return lambda inputs: forward({k: ops.convert_to_tensor(v) for k, v in inputs.items()})


def text_inputs(batch, seed, prefix=(3, 5, 4), suffix=(3, 1, 2), length=9):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, (batch, length)).astype("int32")
    padding = np.zeros_like(ids)
    response = np.zeros_like(ids)
    for row in range(batch):
        n, m = prefix[row % len(prefix)], suffix[row % len(suffix)]
        padding[row, : n + m] = 1
        response[row, n:] = 1
        ids[row, n + m:] = PAD
    return dict(token_ids=ids, padding_mask=padding, response_mask=response)


def grid_patches(images):
    """NaFlex inputs of `(B, 16, 16, 3)` images at the grid size (via the
    converter, no resize) and the images they hold, for the fixed model."""
    raw = ((images + 1) * 127.5).round().astype("uint8")
    exact = {k: numpy(v) for k, v in NaFlexImageConverter(PATCH, GRID * GRID)(raw).items()}
    batch = len(images)
    whole = exact["patches"].reshape(batch, GRID, GRID, PATCH, PATCH, 3).transpose(0, 1, 3, 2, 4, 5)
    return exact, whole.reshape(batch, IMAGE_SIZE, IMAGE_SIZE, 3)


def pad_slots(exact, slots, seed, where="end"):
    """Add `slots - 16` padding slots holding garbage, at the end or spread
    between the real patches (their order kept)."""
    rng = np.random.default_rng(seed)
    batch, real = exact["patch_mask"].shape
    extra = slots - real
    junk = {"patches": rng.normal(size=(batch, extra, exact["patches"].shape[-1])) * 5,
            "patch_coords": rng.integers(0, 7, (batch, extra, 2)), "patch_mask": np.zeros((batch, extra))}
    padded = {k: np.concatenate([v, junk[k].astype(v.dtype)], axis=1) for k, v in exact.items()}
    if where == "spread":
        order = rng.permutation(slots)
        real_slots = np.sort(order[:real])
        pad_slots_ = np.sort(order[real:])
        index = np.empty(slots, int)
        index[real_slots], index[pad_slots_] = np.arange(real), real + np.arange(extra)
        padded = {k: v[:, index] for k, v in padded.items()}
    return padded


def test_naflex_matches_fixed_resolution_and_ignores_padding(fixed, naflex):
    x = np.random.default_rng(3).uniform(-1, 1, (3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    exact, whole = grid_patches(x)
    text = text_inputs(3, seed=4)
    reference = numpy(jitted(fixed)({"images": whole, **text}))
    real = text["padding_mask"].astype(bool)

    # No padding slots at all: a NaFlex model with exactly 16 slots.
    snug = PaliGemmaBackbone(**CONFIG, input_format="naflex", max_num_patches=GRID * GRID)
    snug.set_weights(fixed.get_weights())
    diffs = [np.abs(numpy(jitted(snug)({**exact, **text})) - reference)[real].max()]
    # 8 padding slots of garbage, at the end or between the real patches, two draws.
    outputs, forward = [], jitted(naflex)
    for seed, where in ((5, "end"), (6, "end"), (7, "spread")):
        logits = numpy(forward({**pad_slots(exact, SLOTS, seed, where), **text}))
        diffs.append(np.abs(logits - reference)[real].max())
        outputs.append(logits)
    print("max |naflex - fixed| logits:", max(diffs))
    assert max(diffs) < ATOL, diffs
    np.testing.assert_allclose(outputs[0][real], outputs[1][real], atol=ATOL, rtol=0)  # pad rows: unused


def test_bad_inputs_raise_clear_errors(naflex):
    text = text_inputs(1, seed=0)
    with pytest.raises(ValueError, match="NaFlex patches"):
        naflex({"images": np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), "float32"), **text})
    wrong = {"patches": np.zeros((1, 10, PATCH * PATCH * 3), "float32"), "patch_coords": np.zeros((1, 10, 2), "int32"),
             "patch_mask": np.ones((1, 10), "int32")}
    with pytest.raises(ValueError, match="max_num_patches"):
        naflex({**wrong, **text})
    with pytest.raises(ValueError, match="input_format"):
        PaliGemmaBackbone(**CONFIG, input_format="packed")
    with pytest.raises(ValueError, match="naflex"):
        PaliGemmaBackbone(**CONFIG, max_num_patches=8)


# === Generation ===


def aspect_ratio_batch(seed):
    """Two raw images of different aspect ratios (9 x 20 and 24 x 12 px) as
    NaFlex inputs: a 3 x 7 and a 6 x 3 patch grid (21 and 18 real of 24 slots)."""
    rng = np.random.default_rng(seed)
    raw = [rng.integers(0, 256, (9, 20, 3)).astype("uint8"), rng.integers(0, 256, (24, 12, 3)).astype("uint8")]
    patches = {k: numpy(v) for k, v in NaFlexImageConverter(PATCH, SLOTS)(raw).items()}
    assert patches["patch_mask"].sum(1).tolist() == [21, 18]
    return raw, patches


def prompts(lengths, seed):
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), max(lengths)), "int32")
    for row, n in enumerate(lengths):
        ids[row, 0] = BOS
        ids[row, 1:n] = rng.integers(3, VOCAB, n - 1)
    return ids, (np.arange(max(lengths))[None] < np.array(lengths)[:, None]).astype("int32")


def test_cached_batched_generation_equals_uncached_one_by_one(naflex):
    lm = PaliGemmaCausalLM(naflex)
    _, patches = aspect_ratio_batch(seed=8)
    prompt, mask = prompts([3, 6], seed=9)
    steps = 6
    batched = lm.generate(patches, token_ids=prompt, padding_mask=mask, max_new_tokens=steps)
    uncached = uncached_greedy(naflex, patches, prompt, mask, steps)
    np.testing.assert_array_equal(batched, uncached)
    for row in range(2):  # alone (one compiled shape for both rows)
        alone = lm.generate({k: v[row] for k, v in patches.items()}, token_ids=prompt[row], padding_mask=mask[row],
                            max_new_tokens=steps)
        np.testing.assert_array_equal(alone, batched[row])
    assert (batched[:, 0] != EOS).all() and not np.array_equal(batched[0], batched[1]), batched  # not trivial


# === Task with a preprocessor: raw images of any aspect ratio ===


@pytest.fixture(scope="module")
def tokenizer():
    return PaliGemmaTokenizer.from_texts(TEXTS, vocabulary_size=1500)


@pytest.fixture(scope="module")
def lm(tokenizer):
    keras.utils.set_random_seed(2)
    config = {**CONFIG, "vocabulary_size": tokenizer.vocabulary_size(), "num_layers": 1}
    backbone = PaliGemmaBackbone(**config, input_format="naflex", max_num_patches=SLOTS)
    preprocessor = PaliGemmaCausalLMPreprocessor(tokenizer, NaFlexImageConverter(PATCH, SLOTS), sequence_length=10)
    return PaliGemmaCausalLM(backbone, preprocessor)


def test_preprocessor_makes_patches_and_generation_batches(lm):
    raw, patches = aspect_ratio_batch(seed=10)
    x, y, w = lm.preprocessor({"images": raw, "prompts": ["caption en", "detect cat"], "responses": ["a", "cat"]})
    assert set(x) == {"patches", "patch_coords", "patch_mask", "token_ids", "padding_mask", "response_mask"}
    for key in patches:
        np.testing.assert_array_equal(numpy(x[key]), patches[key])
    texts, ids = lm.generate(raw, ["caption en", "detect cat ; dog"], max_new_tokens=5, return_token_ids=True)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    # Raw images of two aspect ratios = their patches given directly (batching
    # equals one-by-one: test_cached_batched_generation_equals_uncached_one_by_one).
    packed = lm.preprocessor.generate_preprocess({"prompts": ["caption en", "detect cat ; dog"]})
    _, direct = lm.generate(patches, token_ids=packed["token_ids"], padding_mask=packed["padding_mask"],
                            max_new_tokens=5, return_token_ids=True)
    np.testing.assert_array_equal(direct, ids)


def test_fit_lowers_the_loss(lm):
    images = np.random.default_rng(11).integers(0, 256, (4, 12, 20, 3)).astype("uint8")
    data = {"images": np.tile(images, (2, 1, 1, 1)), "prompts": ["caption en"] * 8,
            "responses": ["a red circle", "two green triangles", "a red circle", "detect cat ; dog"] * 2}
    lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = lm.fit(data, batch_size=4, epochs=3, shuffle=False, verbose=0).history["loss"]
    assert np.isfinite(history).all() and history[-1] < history[0], history


def test_save_and_load_preset_round_trip(lm, tmp_path):
    lm.save_to_preset(str(tmp_path / "pg_naflex"))
    restored = PaliGemmaCausalLM.from_preset(str(tmp_path / "pg_naflex"))
    assert restored.backbone.get_config() == lm.backbone.get_config()
    assert restored.backbone.input_format == "naflex" and restored.backbone.max_num_patches == SLOTS
    assert isinstance(restored.preprocessor.image_converter, NaFlexImageConverter)
    assert restored.preprocessor.image_converter.max_num_patches == SLOTS
    raw, _ = aspect_ratio_batch(seed=12)
    data = {"images": raw, "prompts": ["caption en", "detect cat"], "responses": ["a", "cat"]}
    x, _, _ = lm.preprocessor(data)
    x2, _, _ = restored.preprocessor(data)
    for key in x:
        np.testing.assert_array_equal(numpy(x[key]), numpy(x2[key]))
    np.testing.assert_allclose(numpy(jitted(restored.backbone)(x2)), numpy(jitted(lm.backbone)(x)), atol=ATOL, rtol=0)
