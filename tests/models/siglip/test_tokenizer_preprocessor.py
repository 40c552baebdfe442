"""SigLIPTokenizer and SigLIPPreprocessor: normalisation, packing rules, tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from keras_siglip.models import SigLIPImageConverter, SigLIPPreprocessor, SigLIPTokenizer
from keras_siglip.models.siglip.siglip_tokenizer import normalize_text, normalize_text_tf

EOS, PAD = 1, 0


def preprocessor(proto, pad_token, length=8):
    tokenizer = SigLIPTokenizer(proto=proto, pad_token=pad_token)
    return SigLIPPreprocessor(tokenizer, SigLIPImageConverter(image_size=(32, 32)), sequence_length=length)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A Photo of a RED circle.", "a photo of a red circle"),
        ("hot_dog,   on a  plate!", "hot dog on a plate"),
        ("  ", ""),
        ("Ärger über Öl", "ärger über öl"),
    ],
)
def test_normalize_python_and_tf_agree(text, expected):
    assert normalize_text(text) == expected
    assert normalize_text_tf(tf.constant(text)).numpy().decode("utf-8") == expected


def test_siglip1_pads_with_eos(t5_proto):
    p = preprocessor(t5_proto, "</s>")
    ids = np.asarray(p.pack_texts(["a photo of a red circle"]))[0]
    words = p.tokenizer("a photo of a red circle")
    n = len(words)
    np.testing.assert_array_equal(ids[:n], words)
    assert (ids[n:] == EOS).all() and ids[-1] == EOS


def test_siglip2_pads_with_pad_and_has_one_eos(gemma_proto):
    p = preprocessor(gemma_proto, "<pad>")
    ids = np.asarray(p.pack_texts(["a red circle"]))[0]
    n = len(p.tokenizer("a red circle"))
    assert ids[n] == EOS and (ids[n + 1 :] == PAD).all()
    assert 2 not in ids  # no BOS


@pytest.mark.parametrize("layout, pad", [("t5", "</s>"), ("gemma", "<pad>")])
def test_truncation_keeps_eos_last(layout, pad, t5_proto, gemma_proto):
    p = preprocessor({"t5": t5_proto, "gemma": gemma_proto}[layout], pad, length=4)
    text = "two blue squares at the bottom"
    ids = np.asarray(p.pack_texts([text]))[0]
    words = np.asarray(p.tokenizer(text))
    np.testing.assert_array_equal(ids, [*words[:3], EOS])


def test_empty_text_is_eos_then_padding(gemma_proto):
    ids = np.asarray(preprocessor(gemma_proto, "<pad>").pack_texts([""]))[0]
    np.testing.assert_array_equal(ids, [EOS] + [PAD] * 7)


def test_lowercasing_gives_same_ids(gemma_proto):
    p = preprocessor(gemma_proto, "<pad>")
    a, b = p.pack_texts(["A RED Circle."]), p.pack_texts(["a red circle"])
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_preprocessor_in_tf_data_equals_eager(gemma_proto, rng):
    p = preprocessor(gemma_proto, "<pad>")
    images = rng.integers(0, 256, (4, 40, 50, 3), dtype=np.uint8)
    texts = ["a red circle", "", "Two blue squares!", "x " * 50]
    eager = p({"images": images, "texts": texts})
    ds = tf.data.Dataset.from_tensor_slices({"images": images, "texts": texts}).batch(2).map(p)
    batches = list(ds.as_numpy_iterator())
    np.testing.assert_array_equal(
        np.concatenate([b["token_ids"] for b in batches]), np.asarray(eager["token_ids"])
    )
    np.testing.assert_allclose(
        np.concatenate([b["images"] for b in batches]), np.asarray(eager["images"]), atol=1e-6
    )
    assert np.asarray(eager["token_ids"]).shape == (4, 8)


def test_texts_only_and_images_only(gemma_proto, rng):
    p = preprocessor(gemma_proto, "<pad>")
    assert set(p(["a red circle"])) == {"token_ids"}
    assert set(p(rng.integers(0, 256, (2, 9, 9, 3), dtype=np.uint8))) == {"images"}
    with pytest.raises(ValueError, match="'images' and 'texts'"):
        p({"prompts": ["a"]})


def test_image_converter_range_and_dtypes(rng):
    converter = SigLIPImageConverter(image_size=(16, 16))
    for image in (
        rng.integers(0, 256, (50, 20, 3), dtype=np.uint8),
        rng.uniform(0, 255, (3, 7, 90, 3)).astype("float32"),
        np.full((1, 1, 3), 255, np.uint8),
    ):
        out = np.asarray(converter(image))
        assert out.shape[-3:] == (16, 16, 3)
        assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(np.asarray(converter(np.zeros((4, 4, 3), np.uint8))), -1.0)


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1), (8, 8, 4), (1, 2, 8, 8, 3)])
def test_image_converter_refuses_non_rgb(shape):
    with pytest.raises(ValueError, match="RGB"):
        SigLIPImageConverter(image_size=(8, 8))(np.zeros(shape, np.uint8))


def test_tokenizer_and_image_converter_load_from_a_backbone_preset():
    from keras_siglip.models import SigLIPImageConverter, SigLIPTokenizer

    assert SigLIPTokenizer.from_preset("siglip2_shapes_tiny").vocabulary_size() > 0
    assert tuple(SigLIPImageConverter.from_preset("siglip2_shapes_tiny").image_size) == (48, 48)


def test_tokenizer_survives_a_seed_reset_before_a_tf_data_pipeline(t5_proto):
    """TensorFlow drops eager kernels (and the tf_text SentencePiece resource) when
    the global seed is set; the tokenizer must still work in a later pipeline."""
    import keras
    import tensorflow as tf

    from keras_siglip.models import SigLIPTokenizer

    tokenizer = SigLIPTokenizer(t5_proto)
    expected = [list(ids) for ids in tokenizer(["a red circle", "two blue squares"])]
    keras.utils.set_random_seed(0)
    dataset = tf.data.Dataset.from_tensor_slices(["a red circle", "two blue squares"]).map(tokenizer)
    got = [t.numpy().tolist() for t in dataset]
    assert got == [[int(i) for i in ids] for ids in expected]
