"""Model entry points take preprocessed images in [-1, 1]: raw uint8 images,
values beyond +-1.5 and NaN / inf raise when called eagerly; an empty batch of
images is an empty result (or, for `predict`, a clear error) on every backend."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.models import (
    CapPaBackbone,
    CapPaCaptioner,
    PaliGemmaBackbone,
    PaliGemmaCausalLM,
    SigLIPBackbone,
    SigLIPImageConverter,
    SigLIPPreprocessor,
    SigLIPTextEncoder,
    SigLIPTokenizer,
    SigLIPVisionEncoder,
    SigLIPZeroShotClassifier,
)
from keras_siglip.utils.images import check_model_images
from tests.helpers import tiny_backbone

ADVICE = r"takes preprocessed images in \[-1, 1\]; run the preprocessor / image_converter first"
RAW = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone()


@pytest.fixture(scope="module")
def naflex_backbone():
    keras.utils.set_random_seed(0)
    vision = SigLIPVisionEncoder(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, image_size=32,
                                 input_format="naflex")
    text = SigLIPTextEncoder(vocabulary_size=60, width=32, depth=1, num_heads=2, mlp_dim=64, sequence_length=8)
    return SigLIPBackbone(vision, text)


def naflex_inputs(batch, value=0.5):
    return {
        "patches": np.full((batch, 16, 8 * 8 * 3), value, "float32"),
        "patch_coords": np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1)
        .reshape(1, 16, 2).repeat(batch, 0).astype("int32"),
        "patch_mask": np.ones((batch, 16), "int32"),
    }


def test_encode_images_rejects_raw_and_out_of_range_images(backbone):
    """Raw uint8 images used to give garbage embeddings without a word."""
    with pytest.raises(ValueError, match=f"encode_images {ADVICE}.*uint8"):
        backbone.encode_images(RAW)
    with pytest.raises(ValueError, match=rf"encode_images {ADVICE}.*image 0 has values in \[0, 255\]"):
        backbone.encode_images(RAW.astype("float32"))
    images = np.zeros((3, 32, 32, 3), "float32")
    images[1, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="image 1 is not finite"):
        backbone.encode_images(images)
    images[1, 0, 0, 0] = 1.4  # resizing overshoot stays allowed
    assert ops.convert_to_numpy(backbone.encode_images(images)).shape == (3, 32)


def test_predict_fit_evaluate_check_images(backbone):
    x = {"images": RAW, "token_ids": np.ones((2, 8), "int32")}
    with pytest.raises(ValueError, match=f"SigLIPBackbone {ADVICE}"):
        backbone.predict(x, verbose=0)
    vision = backbone.vision_encoder
    vision.compile(loss="mse")
    for call in (lambda: vision.predict(RAW, verbose=0), lambda: vision.fit(RAW, np.zeros((2, 32)), verbose=0),
                 lambda: vision.evaluate(RAW, np.zeros((2, 32)), verbose=0)):
        with pytest.raises(ValueError, match=f"SigLIPVisionEncoder {ADVICE}"):
            call()


def test_naflex_patches_are_checked(naflex_backbone):
    assert ops.convert_to_numpy(naflex_backbone.encode_images(naflex_inputs(2))).shape == (2, 32)
    with pytest.raises(ValueError, match=rf"{ADVICE} \(image 0 has values in \[127, 127\]\)"):
        naflex_backbone.encode_images(naflex_inputs(2, value=127.0))
    padded = naflex_inputs(2)
    padded["patch_mask"][:, 10:] = 0
    padded["patches"][:, 10:] = 9.0  # padding content is ignored by the model, so not range-checked
    naflex_backbone.encode_images(padded)
    padded["patches"][1, 12, 0] = np.nan  # but NaN there would leak through attention (0 * NaN)
    with pytest.raises(ValueError, match="image 1 is not finite"):
        naflex_backbone.encode_images(padded)


def test_symbolic_images_are_not_value_checked():
    """Compiled paths are untouched: only concrete values are checked."""
    check_model_images(keras.KerasTensor((None, 32, 32, 3)), "encode_images")
    with pytest.raises(ValueError, match="dtype uint8"):  # a dtype is known without values
        check_model_images(keras.KerasTensor((None, 32, 32, 3), dtype="uint8"), "encode_images")


def test_classify_names_the_image_that_looks_like_unit_range(backbone, gemma_proto):
    preprocessor = SigLIPPreprocessor(SigLIPTokenizer(gemma_proto, pad_token="<pad>"),
                                      SigLIPImageConverter(image_size=(32, 32)), sequence_length=8)
    classifier = SigLIPZeroShotClassifier(backbone, preprocessor, ["red circle", "blue square"])
    images = [RAW[0], np.random.default_rng(1).random((20, 30, 3))]
    with pytest.raises(ValueError, match=r"classify: image 1 is float .*looks like \[0, 1\]"):
        classifier.classify(images)


@pytest.mark.slow
def test_pali_gemma_and_cappa_check_preprocessed_images():
    keras.utils.set_random_seed(0)
    pali = PaliGemmaBackbone(vocabulary_size=64, image_size=16, num_layers=1, num_query_heads=2,
                             num_key_value_heads=1, hidden_dim=16, intermediate_dim=32, head_dim=8,
                             vit_patch_size=4, vit_hidden_dim=16, vit_num_layers=1, vit_num_heads=2,
                             vit_intermediate_dim=32)
    tokens = np.ones((1, 4), "int32")
    images = RAW[:1, :16, :16]
    x = {"images": images, "token_ids": tokens, "padding_mask": tokens, "response_mask": 0 * tokens}
    with pytest.raises(ValueError, match=f"PaliGemmaBackbone {ADVICE}"):
        pali(x)
    with pytest.raises(ValueError, match=f"PaliGemmaCausalLM {ADVICE}"):
        PaliGemmaCausalLM(pali).generate(images, token_ids=tokens, max_new_tokens=1)
    cappa = CapPaBackbone(vocabulary_size=20, patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32,
                          image_size=32, max_length=8, decoder_depth=1)
    with pytest.raises(ValueError, match=f"encode_images {ADVICE}"):
        cappa.encode_images(RAW)
    with pytest.raises(ValueError, match=f"CapPaCaptioner {ADVICE}"):
        CapPaCaptioner(cappa).parallel_decode(RAW, detokenize=False)


def test_empty_batches_embed_to_empty_results(backbone, naflex_backbone):
    """Every backend: 0 images -> (0, D). The NaFlex tower raised on
    TensorFlow (InvalidArgumentError) and torch; `predict` raised
    UnboundLocalError inside Keras on all three."""
    assert ops.convert_to_numpy(backbone.encode_images(np.zeros((0, 32, 32, 3), "float32"))).shape == (0, 32)
    assert ops.convert_to_numpy(naflex_backbone.encode_images(naflex_inputs(0))).shape == (0, 32)
    with pytest.raises(ValueError, match=r"predict got 0 examples"):
        backbone.vision_encoder.predict(np.zeros((0, 32, 32, 3), "float32"), verbose=0)
