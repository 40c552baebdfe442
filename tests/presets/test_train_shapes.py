"""The script that trains the shipped preset runs end to end on a tiny stage."""

import json
import os

import numpy as np
import pytest

from keras_siglip.data import shapes
from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor
from keras_siglip.presets import SHIPPED_PRESETS, train_shapes


def constant_logit_loss(batch_size):
    """The sigmoid loss (summed over the B texts, mean over the images) of the best
    model that ignores its inputs: one logit for every pair, at sigmoid = 1/B. The
    positive pair costs log B, the B - 1 negatives (B - 1) log(B / (B - 1)):
    5.15 for B = 64, 5.85 for 128, 6.54 for 256."""
    p = 1.0 / batch_size
    return float(-np.log(p) - (batch_size - 1) * np.log1p(-p))


@pytest.mark.slow
@pytest.mark.parametrize("pairs", [None, "attributes"])
def test_one_tiny_stage_trains_saves_and_loads(tmp_path, pairs):
    stage = dict(seed=5, num_train=256, epochs=1, batch_size=64, learning_rate=1e-3)
    if pairs:  # every caption true of an image is a positive (`pair_labels`, batches of MatchingBatches)
        stage.update(pairs=pairs, num_train=512)
    backbone, preprocessor, record, accuracy = train_shapes.train_stage(stage)
    # At initialisation every logit is t cos + b with t = 10, b = -10 and cos ~ 0, so
    # each image's loss starts at softplus(10) = 10.0 per positive pair (measured 9.8 /
    # 10.3 / 9.8 on jax / tensorflow / torch, and kept by a stage that does not learn);
    # after the four steps the epoch's mean loss is 8.1 / 8.8 / 7.9. With every true
    # caption a positive (1.27 per image here: start 12.7), eight steps end at 8.0 / 8.5 / 7.9.
    assert (backbone.temperature_init, backbone.bias_init) == (10.0, -10.0)
    positives = 1.0
    if pairs:  # the stage's own batches (same seed): each positive pair starts at softplus(10)
        data = shapes.ShapesDataset(512, seed=5, image_size=train_shapes.IMAGE_SIZE)
        batches = train_shapes.MatchingBatches({}, *train_shapes.attribute_table(data), 64, seed=5)
        positives = float(np.mean([(batches[i][1] > 0).sum(1).mean() for i in range(len(batches))]))
    start = positives * float(np.logaddexp(0.0, -backbone.bias_init))
    assert record["final_loss"] < start - 0.75, record
    # Four steps leave zero-shot accuracy at chance (1/48 = 2.1%; measured 3.0-3.8%
    # over 500 images), so it is not asserted here: the shipped preset's is, below.
    # The record carries the measured numbers.
    assert record["zero_shot_accuracy"] == accuracy["all"] and record["seed"] == 5
    out = str(tmp_path / "preset")
    assert set(accuracy) == {"all", "single_shape", "multi_shape", "mean_correct_probability", "calibration_error"}
    train_shapes.save(backbone, preprocessor, [record], accuracy, out)
    card = json.load(open(os.path.join(out, "card.json")))
    assert card["training"]["stages"] == [record]
    assert (card["zero_shot_accuracy"], card["zero_shot_accuracy_one_shape"],
            card["zero_shot_accuracy_two_or_three_shapes"]) == (
        accuracy["all"], accuracy["single_shape"], accuracy["multi_shape"])
    restored = SigLIPBackbone.from_preset(out)
    # The preset holds the trained weights, not a fresh initialisation.
    assert [w.path for w in restored.weights] == [w.path for w in backbone.weights]
    for saved, trained in zip(restored.get_weights(), backbone.get_weights()):
        np.testing.assert_array_equal(saved, trained)
    assert card["params"] == backbone.count_params()
    assert SigLIPPreprocessor.from_preset(out).sequence_length == train_shapes.SEQUENCE_LENGTH
    # The saved preset holds no optimizer state: just the weights (a few MB).
    assert os.path.getsize(os.path.join(out, "model.weights.h5")) < 4 * restored.count_params() * 1.2


def test_the_held_out_seed_is_refused():
    with pytest.raises(ValueError, match="held-out"):
        train_shapes.train_stage(dict(seed=train_shapes.EVAL_SEED, num_train=8, epochs=1, batch_size=8, learning_rate=1e-3))


def test_shipped_card_reports_its_accuracy():
    """The card's numbers are the shipped weights' own: evaluated again here on the
    card's 500 held-out images (seed 1, 48 colour x shape labels: chance 2.1%) they
    agree within 0.01 (measured: identical on jax, tensorflow and torch); and every
    stage of the recipe ended with a loss well below that of a model that ignores its
    inputs, at that stage's batch size."""
    card = json.load(open(os.path.join(SHIPPED_PRESETS["siglip2_shapes_tiny"], "card.json")))
    backbone = SigLIPBackbone.from_preset("siglip2_shapes_tiny")
    measured = train_shapes.zero_shot_accuracy(backbone, SigLIPPreprocessor.from_preset("siglip2_shapes_tiny"))
    for key, field in (("all", "zero_shot_accuracy"), ("single_shape", "zero_shot_accuracy_one_shape"),
                       ("multi_shape", "zero_shot_accuracy_two_or_three_shapes"),
                       ("mean_correct_probability", "mean_correct_probability"),
                       ("calibration_error", "calibration_error")):
        assert abs(measured[key] - card[field]) <= 0.01, (key, measured[key], card[field])
    chance = 1 / len(shapes.class_names())
    assert card["zero_shot_accuracy"] >= 0.95 > 45 * chance
    assert min(card["zero_shot_accuracy_one_shape"], card["zero_shot_accuracy_two_or_three_shapes"]) >= 0.95
    # Confident when right: the true label's sigmoid probability is high on average, and the
    # top-1 probability tracks accuracy (a model at chance gives the true label ~0.0).
    assert card["mean_correct_probability"] > 0.8 and card["calibration_error"] < 0.15
    assert card["params"] == backbone.count_params()
    stages = card["training"]["stages"]
    assert [s["seed"] for s in stages] == [s["seed"] for s in train_shapes.RECIPE]
    assert stages[-1]["zero_shot_accuracy"] == card["zero_shot_accuracy"]
    for stage in stages:  # measured 0.40, 0.30, 0.29, ... of it
        assert stage["final_loss"] < 0.5 * constant_logit_loss(stage["batch_size"]), stage


def test_pair_labels_mark_exactly_the_captions_true_of_each_image():
    """Caption j is true of image i when re-drawing caption j (the same random
    choices: template, dropped words, phrasing) from image i's attributes gives
    the same string; a singular caption is re-drawn with count 1 ("a red circle"
    is true of two red circles). That independent rule and `pair_labels` agree
    on all 96 x 96 pairs."""
    import copy
    import dataclasses

    data = shapes.ShapesDataset(96, seed=7, image_size=24)
    examples = [data[i] for i in range(len(data))]
    labels = train_shapes.pair_labels(*train_shapes.attribute_table(data))
    expected = np.empty_like(labels)
    for j, caption_of in enumerate(examples):
        rng = np.random.default_rng([data.seed, j])  # replay example j up to its caption
        shapes.render(shapes.sample_attributes(rng), rng, 24, 24)
        for i, image in enumerate(examples):
            attrs = image["attributes"]
            if caption_of["attributes"].count == 1:
                attrs = dataclasses.replace(attrs, count=1)
            redrawn = shapes.caption(attrs, copy.deepcopy(rng), data.caption_drop_prob)
            expected[i, j] = 1.0 if redrawn == caption_of["caption"] else -1.0
    np.testing.assert_array_equal(labels, expected)
    assert (np.diagonal(labels) == 1).all()
    positives = (labels > 0).sum() - len(labels)
    assert positives > 30, positives  # measured 51: captions true of other images than their own


def test_expected_calibration_error_on_hand_computed_cases():
    confidence = np.array([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    correct = np.array([True, True, True, False, True, False])
    # Bin 14 holds 4 at confidence 0.95, accuracy 0.75; bin 8 holds 2 at 0.55, accuracy 0.5.
    assert np.isclose(train_shapes.expected_calibration_error(confidence, correct),
                      4 / 6 * 0.2 + 2 / 6 * 0.05)
    assert train_shapes.expected_calibration_error(np.ones(4), np.ones(4, bool)) == 0.0
