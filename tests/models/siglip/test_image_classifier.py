"""SigLIPImageClassifier: head on the pooled image tower, linear probe vs full
fine-tuning, presets (two-tower and its own), errors."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.models import (
    SigLIPBackbone,
    SigLIPImageClassifier,
    SigLIPImageClassifierPreprocessor,
    SigLIPImageConverter,
    SigLIPPreprocessor,
    SigLIPTextEncoder,
    SigLIPTokenizer,
    SigLIPVisionEncoder,
)
from tests.helpers import changed, tiny_backbone, weights_by_path

NUM_CLASSES = 3


@pytest.fixture
def classifier():
    backbone = tiny_backbone().vision_encoder
    preprocessor = SigLIPImageClassifierPreprocessor(SigLIPImageConverter(image_size=(32, 32)))
    return SigLIPImageClassifier(backbone, NUM_CLASSES, preprocessor=preprocessor)


@pytest.fixture
def labelled(rng):
    images = rng.integers(0, 256, (8, 40, 30, 3), dtype=np.uint8)
    return images, np.arange(8) % NUM_CLASSES


def test_logits_are_the_head_on_the_pooled_image_embedding(classifier, rng):
    images = rng.integers(0, 256, (4, 40, 30, 3), dtype=np.uint8)
    logits = classifier.predict(images, verbose=0)
    assert logits.shape == (4, NUM_CLASSES)
    x = ops.convert_to_numpy(classifier.preprocessor(images))
    assert x.shape == (4, 32, 32, 3) and x.min() >= -1.0 and x.max() <= 1.0
    pooled = ops.convert_to_numpy(classifier.backbone(x))
    kernel, bias = (ops.convert_to_numpy(w) for w in classifier.output_dense.weights)
    np.testing.assert_allclose(logits, pooled @ kernel + bias, atol=1e-5)


def test_softmax_activation_gives_probabilities_and_a_matching_loss(rng):
    classifier = SigLIPImageClassifier(
        tiny_backbone().vision_encoder, NUM_CLASSES, activation="softmax", dropout=0.1
    )
    x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(classifier(x)).sum(-1), 1.0, atol=1e-5)
    assert classifier.loss.get_config()["from_logits"] is False
    logits_model = SigLIPImageClassifier(tiny_backbone().vision_encoder, NUM_CLASSES)
    assert logits_model.loss.get_config()["from_logits"] is True


def test_linear_probe_trains_only_the_head(classifier, labelled):
    classifier.backbone.trainable = False
    classifier.compile()
    assert float(ops.convert_to_numpy(classifier.optimizer.learning_rate)) == pytest.approx(1e-2)
    assert {id(v) for v in classifier.trainable_weights} == {
        id(v) for v in classifier.output_dense.weights
    }
    backbone_before = weights_by_path(classifier.backbone)
    head_before = weights_by_path(classifier.output_dense)
    classifier.fit(*labelled, batch_size=8, epochs=1, verbose=0)
    assert not changed(backbone_before, classifier.backbone)
    assert changed(head_before, classifier.output_dense) == set(head_before)


def test_full_fine_tuning_trains_the_image_tower_and_learns(classifier, labelled):
    assert float(ops.convert_to_numpy(classifier.optimizer.learning_rate)) == pytest.approx(1e-4)
    classifier.compile(optimizer=keras.optimizers.Adam(3e-3))
    backbone_before = weights_by_path(classifier.backbone)
    history = classifier.fit(*labelled, batch_size=8, epochs=12, verbose=0).history
    moved = changed(backbone_before, classifier.backbone)
    assert any("encoder/block_0/attention/query/kernel" in p for p in moved)
    assert any("map_head" in p for p in moved) and any("embedding" in p for p in moved)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["sparse_categorical_accuracy"][-1] == 1.0


def test_preprocessor_runs_in_tf_data(classifier, labelled):
    import tensorflow as tf

    images, labels = labelled
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4).map(classifier.preprocessor)
    x, y = next(iter(ds))
    assert tuple(x.shape) == (4, 32, 32, 3) and list(y.numpy()) == list(labels[:4])


def test_classifier_preset_round_trip(classifier, labelled, tmp_path):
    classifier.fit(*labelled, batch_size=8, epochs=1, verbose=0)
    images = labelled[0][:3]
    classifier.save_to_preset(str(tmp_path / "classifier"))
    restored = SigLIPImageClassifier.from_preset(str(tmp_path / "classifier"))
    assert restored.num_classes == NUM_CLASSES
    assert isinstance(restored.preprocessor, SigLIPImageClassifierPreprocessor)
    np.testing.assert_allclose(
        restored.predict(images, verbose=0), classifier.predict(images, verbose=0), atol=1e-5
    )
    # A new head of another size on the saved image tower.
    relabelled = SigLIPImageClassifier.from_preset(str(tmp_path / "classifier"), num_classes=5)
    assert relabelled.predict(images, verbose=0).shape == (3, 5)
    for a, b in zip(relabelled.backbone.weights, classifier.backbone.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))


def test_from_two_tower_preset_takes_the_image_tower(t5_proto, tmp_path, rng):
    two_towers = tiny_backbone()
    preprocessor = SigLIPPreprocessor(
        SigLIPTokenizer(t5_proto), SigLIPImageConverter(image_size=(32, 32)), sequence_length=8
    )
    two_towers.save_to_preset(str(tmp_path / "siglip"))
    preprocessor.save_to_preset(str(tmp_path / "siglip"))
    classifier = SigLIPImageClassifier.from_preset(str(tmp_path / "siglip"), num_classes=4)
    assert isinstance(classifier.backbone, SigLIPVisionEncoder)
    assert len(classifier.backbone.weights) == len(two_towers.vision_encoder.weights)
    for a, b in zip(classifier.backbone.weights, two_towers.vision_encoder.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    assert tuple(classifier.preprocessor.image_converter.image_size) == (32, 32)
    images = rng.integers(0, 256, (2, 50, 20, 3), dtype=np.uint8)
    x = ops.convert_to_numpy(classifier.preprocessor(images))
    np.testing.assert_allclose(
        ops.convert_to_numpy(classifier.backbone(x)),
        ops.convert_to_numpy(two_towers.vision_encoder(x)),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="num_classes"):
        SigLIPImageClassifier.from_preset(str(tmp_path / "siglip"))
    alone = SigLIPImageClassifierPreprocessor.from_preset(str(tmp_path / "siglip"))
    assert tuple(alone.image_converter.image_size) == (32, 32)


def test_from_shipped_preset():
    classifier = SigLIPImageClassifier.from_preset("siglip2_shapes_tiny", num_classes=48)
    reference = SigLIPBackbone.from_preset("siglip2_shapes_tiny").vision_encoder
    for a, b in zip(classifier.backbone.weights, reference.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    assert tuple(classifier.preprocessor.image_converter.image_size) == (48, 48)
    assert classifier.output_dense.units == 48


def test_wrong_preset_types_are_refused(tmp_path):
    text = SigLIPTextEncoder(
        vocabulary_size=60, width=24, depth=1, num_heads=2, mlp_dim=48, sequence_length=8
    )
    text.save_to_preset(str(tmp_path / "text"))
    with pytest.raises(ValueError, match="holds a SigLIPTextEncoder"):
        SigLIPImageClassifier.from_preset(str(tmp_path / "text"), num_classes=2)
    with pytest.raises(ValueError, match="holds a SigLIPTextEncoder"):
        SigLIPImageClassifierPreprocessor.from_preset(str(tmp_path / "text"))
    with pytest.raises(ValueError, match="Unknown preset"):
        SigLIPImageClassifier.from_preset("siglip2_shapes_tinny", num_classes=2)


def test_bad_arguments():
    two_towers = tiny_backbone()
    vision = two_towers.vision_encoder
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="num_classes"):
            SigLIPImageClassifier(vision, bad)
    with pytest.raises(TypeError, match="vision_encoder"):
        SigLIPImageClassifier(two_towers, 2)
    with pytest.raises(TypeError, match="SigLIPVisionEncoder"):
        SigLIPImageClassifier(two_towers.text_encoder, 2)
    with pytest.raises(ValueError, match="dropout"):
        SigLIPImageClassifier(vision, 2, dropout=1.0)
    unpooled = SigLIPVisionEncoder(
        patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32, image_size=32, pooling="none"
    )
    with pytest.raises(ValueError, match="one vector per image"):
        SigLIPImageClassifier(unpooled, 2)


def test_config_round_trip(rng):
    classifier = SigLIPImageClassifier(
        tiny_backbone().vision_encoder, 7, activation="softmax", dropout=0.2, head_dtype="float32"
    )
    config = classifier.get_config()
    assert config["num_classes"] == 7 and config["activation"] == "softmax"
    assert config["dropout"] == 0.2 and "pooling" not in config
    restored = SigLIPImageClassifier.from_config(config)
    restored.set_weights(classifier.get_weights())
    x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(restored(x)), ops.convert_to_numpy(classifier(x)), atol=1e-6
    )


def test_a_quantized_classifier_saves_and_loads(classifier, labelled, tmp_path):
    """int8 everywhere, the head included: its config, preset and `.keras` file
    rebuild the int8 head (they used to rebuild a float one and fail to load)."""
    images, _ = labelled
    classifier.quantize("int8")
    assert classifier.output_dense.quantization_mode == "int8"
    expected = classifier.predict(images, verbose=0)
    rebuilt = SigLIPImageClassifier.from_config(classifier.get_config())
    rebuilt.set_weights(classifier.get_weights())
    classifier.save_to_preset(str(tmp_path / "preset"))
    classifier.save(str(tmp_path / "model.keras"))
    for restored in (rebuilt, SigLIPImageClassifier.from_preset(str(tmp_path / "preset")),
                     keras.saving.load_model(str(tmp_path / "model.keras"))):
        assert restored.output_dense.quantization_mode == "int8"
        np.testing.assert_array_equal(restored.predict(images, verbose=0), expected)
