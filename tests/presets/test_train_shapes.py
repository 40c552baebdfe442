"""The script that trains the shipped preset runs end to end on a tiny stage."""

import json
import os

import numpy as np
import pytest

from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor
from keras_siglip.presets import SHIPPED_PRESETS, train_shapes


@pytest.mark.slow
def test_one_tiny_stage_trains_saves_and_loads(tmp_path, monkeypatch):
    stage = dict(seed=5, num_train=256, epochs=1, batch_size=64, learning_rate=1e-3)
    backbone, preprocessor, record, accuracy = train_shapes.train_stage(stage)
    assert np.isfinite(record["final_loss"]) and 0.0 <= record["zero_shot_accuracy"] <= 1.0
    out = str(tmp_path / "preset")
    assert set(accuracy) == {"all", "single_shape", "multi_shape"}
    train_shapes.save(backbone, preprocessor, [record], accuracy, out)
    card = json.load(open(os.path.join(out, "card.json")))
    assert card["training"]["stages"][0]["seed"] == 5
    restored = SigLIPBackbone.from_preset(out)
    assert SigLIPPreprocessor.from_preset(out).sequence_length == train_shapes.SEQUENCE_LENGTH
    # The saved preset holds no optimizer state: just the weights (a few MB).
    assert os.path.getsize(os.path.join(out, "model.weights.h5")) < 4 * restored.count_params() * 1.2


def test_the_held_out_seed_is_refused():
    with pytest.raises(ValueError, match="held-out"):
        train_shapes.train_stage(dict(seed=train_shapes.EVAL_SEED, num_train=8, epochs=1, batch_size=8, learning_rate=1e-3))


def test_shipped_card_reports_its_accuracy():
    card = json.load(open(os.path.join(SHIPPED_PRESETS["siglip2_shapes_tiny"], "card.json")))
    assert card["zero_shot_accuracy"] > 0.8
    assert card["zero_shot_accuracy_one_shape"] > 0.9
    assert [s["seed"] for s in card["training"]["stages"]] == [s["seed"] for s in train_shapes.RECIPE]
