"""SigLIPZeroShotClassifier: class embeddings, probabilities, ranking, presets."""

import numpy as np
import pytest
from keras import ops

from keras_siglip.models import (
    SigLIPImageConverter,
    SigLIPPreprocessor,
    SigLIPTokenizer,
    SigLIPZeroShotClassifier,
)
from tests.helpers import tiny_backbone

LABELS = ["red circle", "blue square", "green triangle"]
TEMPLATES = ("a photo of a {}.", "a {}")


@pytest.fixture
def classifier(gemma_proto):
    backbone = tiny_backbone()
    preprocessor = SigLIPPreprocessor(
        SigLIPTokenizer(gemma_proto, pad_token="<pad>"),
        SigLIPImageConverter(image_size=(32, 32)),
        sequence_length=8,
    )
    return SigLIPZeroShotClassifier(backbone, preprocessor, LABELS, TEMPLATES)


def test_class_embeddings_are_renormalised_template_means(classifier):
    pre, backbone = classifier.preprocessor, classifier.backbone
    for k, label in enumerate(LABELS):
        texts = [t.format(label) for t in TEMPLATES]
        mean = ops.convert_to_numpy(backbone.encode_texts(pre.pack_texts(texts))).mean(0)
        expected = mean / np.linalg.norm(mean)
        got = ops.convert_to_numpy(classifier.class_scores.class_embeddings)[k]
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_predict_gives_sigmoid_of_backbone_logits(classifier, rng):
    images = rng.integers(0, 256, (3, 40, 30, 3), dtype=np.uint8)
    probabilities = classifier.predict(images, verbose=0)
    assert probabilities.shape == (3, 3)
    x = ops.convert_to_numpy(classifier.preprocessor.convert_images(images))
    zimg = ops.convert_to_numpy(classifier.backbone.encode_images(x))
    ztxt = ops.convert_to_numpy(classifier.class_scores.class_embeddings)
    logits = 10.0 * zimg @ ztxt.T - 10.0
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-logits)), atol=1e-5)


def test_classify_ranks_labels_for_images_of_any_size(classifier, rng):
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(20, 90, 3), (64, 64, 3)]]
    ranked = classifier.classify(images, top_k=2)
    assert len(ranked) == 2 and all(len(r) == 2 for r in ranked)
    for r in ranked:
        assert r[0][1] >= r[1][1] and r[0][0] in LABELS


def test_repeated_classify_runs_compiled_with_the_eager_answers(classifier, rng):
    """From its second call `classify` runs the compiled
    model: the same ranking and probabilities as the eager model, and it
    follows weights quantized after compiling. The probabilities are small
    (logits near the bias, -10), so they are compared relatively: 1e-4 is
    XLA's float32 reordering (~1e-6 on the logits) times the temperature, with
    margin; int8 weights move them by far more."""
    images = [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8) for _ in range(3)]

    def expected():
        x = ops.convert_to_numpy(classifier.preprocessor.convert_images(np.stack(images)))
        return ops.convert_to_numpy(classifier({"images": x}, training=False))

    for _ in range(2):
        ranked = classifier.classify(images, top_k=3)
        got = np.array([[dict(r)[label] for label in LABELS] for r in ranked])
        np.testing.assert_allclose(got, expected(), rtol=1e-4, atol=0)
    assert classifier._compiled_forward is not None
    classifier.quantize("int8")
    got = np.array([[dict(r)[label] for label in LABELS] for r in classifier.classify(images, top_k=3)])
    np.testing.assert_allclose(got, expected(), rtol=1e-4, atol=0)


def test_bad_arguments(classifier):
    with pytest.raises(ValueError, match="non-empty list of label strings"):
        SigLIPZeroShotClassifier(classifier.backbone, classifier.preprocessor, [])
    with pytest.raises(ValueError, match="non-empty list of label strings"):
        SigLIPZeroShotClassifier(classifier.backbone, classifier.preprocessor, "cat")  # not 3 labels c, a, t
    for names, words in (([*LABELS, LABELS[0]], "given twice"), (["cat", " "], "non-blank"), (["cat", 3], "non-blank")):
        with pytest.raises(ValueError, match=words):
            SigLIPZeroShotClassifier(classifier.backbone, classifier.preprocessor, names)
    image = np.zeros((32, 32, 3), "uint8")
    for top_k in (0, -1, 1.5, True):  # -1 used to drop the last label without a word
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            classifier.classify(image, top_k=top_k)
    assert len(classifier.classify(image, top_k=len(LABELS) + 5)[0]) == len(LABELS)
    with pytest.raises(ValueError, match="exactly one"):
        SigLIPZeroShotClassifier(classifier.backbone, classifier.preprocessor, LABELS, ["a photo"])


def test_weights_hold_both_towers(classifier):
    """The graph runs only the image tower, yet the text tower (which embeds new
    class names) is part of the model's weights on every backend, so
    `get_weights` / `set_weights` carry it to another classifier."""
    held = {id(w) for w in classifier.weights}
    assert all(id(w) in held for w in classifier.backbone.weights)
    other = SigLIPZeroShotClassifier(tiny_backbone(seed=1), classifier.preprocessor, LABELS, TEMPLATES)
    ids = classifier.preprocessor.pack_texts(["a red circle"])
    before = ops.convert_to_numpy(other.backbone.encode_texts(ids))
    expected = ops.convert_to_numpy(classifier.backbone.encode_texts(ids))
    assert np.abs(before - expected).max() > 1e-3  # a different model to start with
    other.set_weights(classifier.get_weights())
    np.testing.assert_array_equal(ops.convert_to_numpy(other.backbone.encode_texts(ids)), expected)


@pytest.mark.parametrize("filters", [None, "dense"])
def test_quantize_leaves_the_preprocessor_alone(classifier, rng, filters):
    """int8 before any `predict`: Keras used to stop halfway at the preprocessor's
    unbuilt resizing layer, leaving the towers half quantized. A name filter still
    selects as in Keras (only layers whose name matches)."""
    images = rng.integers(0, 256, (2, 40, 30, 3), dtype=np.uint8)
    classifier.quantize("int8", filters=filters)
    quantized = [layer for layer in classifier.backbone._flatten_layers() if layer.quantization_mode]
    assert {layer.quantization_mode for layer in quantized} == {"int8"}
    names = {layer.name for layer in quantized}
    text_tower = {id(layer) for layer in classifier.backbone.text_encoder._flatten_layers()}
    assert any(id(layer) in text_tower for layer in quantized), names
    if filters:
        assert all("dense" in name for name in names) and "head" not in names
    else:
        assert "head" in names and "token_embedding" in names
    assert not any(layer.quantization_mode for layer in classifier.preprocessor._flatten_layers())
    assert np.isfinite(classifier.predict(images, verbose=0)).all()
