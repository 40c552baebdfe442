"""`quantize` on every family: outputs stay close to float (bounds measured on
these random, perturbed weights, jax CPU) and a quantized preset saves and
loads back exactly. The round trip used to fail for CapPa, LiT-decoder and
PaliGemma: keras-hub's backbone loader passed `dtype=None` over the saved
`DTypePolicyMap`, building float layers that refused the integer kernels."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.models import (
    CapPaBackbone, LiTDecoderBackbone, PaliGemmaBackbone, SigLIPBackbone, SigLIPTextEncoder,
    SigLIPVisionEncoder,
)

# mode -> floor of the minimum cosine to float32 over output rows. Measured
# minima over the four families (jax / tensorflow / torch: each backend draws
# its own random weights): int8 0.9994 / 0.9997 / 0.9998, int4 0.923 / 0.964 /
# 0.977, float8 0.985 / 0.982 / 0.991. int4 keeps one scale per output channel
# of a 4-bit kernel, hence its spread on these tiny random layers.
FLOORS = {"int8": 0.999, "int4": 0.9, "float8": 0.975}


def perturbed(model, seed=0):
    """Random weights everywhere (zero biases and unit norm scales included),
    so a layer that drops or misreads a quantized kernel shows."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = ops.convert_to_numpy(weight)
        weight.assign((value + 0.05 * rng.normal(size=value.shape)).astype(value.dtype))
    return model


def naflex_siglip(rng):
    model = SigLIPBackbone(
        SigLIPVisionEncoder(4, 32, 2, 2, 48, image_size=16, input_format="naflex"),
        SigLIPTextEncoder(60, 32, 1, 2, 48, sequence_length=6),
    )
    coords = np.stack(np.divmod(np.arange(20), 5), -1)
    inputs = {
        "patches": rng.uniform(-1, 1, (3, 20, 48)).astype("float32"),
        "patch_coords": np.stack([coords] * 3).astype("int32"),
        "patch_mask": (np.arange(20)[None] < np.array([[20], [12], [7]])).astype("int32"),
        "token_ids": rng.integers(2, 60, (3, 6)).astype("int32"),
    }
    return model, inputs


def cappa(rng):
    model = CapPaBackbone(vocabulary_size=20, patch_size=8, width=16, depth=2, num_heads=2, mlp_dim=32,
                          image_size=32, max_length=8, decoder_depth=1)
    inputs = {"images": rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32"),
              "token_ids": rng.integers(1, 20, (2, 8)).astype("int32")}
    return model, inputs


def lit_decoder(rng):
    encoder = SigLIPVisionEncoder(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, image_size=32)
    model = LiTDecoderBackbone(encoder, vocabulary_size=30, max_length=8, decoder_width=32, decoder_depth=1,
                               decoder_num_heads=2, decoder_mlp_dim=64)
    inputs = {"images": rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32"),
              "token_ids": rng.integers(2, 30, (2, 8)).astype("int32")}
    return model, inputs


def pali_gemma(rng):
    model = PaliGemmaBackbone(
        vocabulary_size=64, image_size=16, num_layers=2, num_query_heads=4, num_key_value_heads=1,
        hidden_dim=48, intermediate_dim=64, head_dim=16, vit_patch_size=4, vit_hidden_dim=32,
        vit_num_layers=2, vit_num_heads=2, vit_intermediate_dim=48,
    )
    inputs = {"images": rng.uniform(-1, 1, (2, 16, 16, 3)).astype("float32"),
              "token_ids": rng.integers(3, 60, (2, 8)).astype("int32"),
              "padding_mask": np.ones((2, 8), "int32"), "response_mask": np.zeros((2, 8), "int32")}
    return model, inputs


FAMILIES = {"siglip_naflex": naflex_siglip, "cappa": cappa, "lit_decoder": lit_decoder, "pali_gemma": pali_gemma}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    keras.utils.set_random_seed(0)
    model, inputs = FAMILIES[request.param](np.random.default_rng(0))
    perturbed(model)
    return model, inputs, outputs(model, inputs)


def outputs(model, inputs):
    """Each output as `(rows, features)`: embeddings, or logits per token."""
    out = model.predict(inputs, verbose=0)
    out = {k: v for k, v in out.items() if k != "logits"} if isinstance(out, dict) else {"logits": out}
    return {k: np.reshape(ops.convert_to_numpy(v), (-1, np.shape(v)[-1])) for k, v in out.items()}


def min_cosine(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=-1)))


@pytest.mark.parametrize("mode", sorted(FLOORS))
def test_quantized_family_stays_close_and_round_trips(family, mode, tmp_path):
    model, inputs, reference = family
    quantized = model.__class__.from_config(model.get_config())
    quantized.set_weights(model.get_weights())
    quantized.quantize(mode)
    ours = outputs(quantized, inputs)
    for key in reference:
        assert min_cosine(ours[key], reference[key]) > FLOORS[mode], key
    quantized.save_to_preset(str(tmp_path / "preset"))
    restored = model.__class__.from_preset(str(tmp_path / "preset"))
    modes = {layer.quantization_mode for layer in restored._flatten_layers() if layer.quantization_mode}
    assert modes == {mode}
    for key, value in outputs(restored, inputs).items():
        np.testing.assert_array_equal(value, ours[key])
