"""keras_siglip.transfer: LiT / per-tower freezing and LoRA on the towers."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip import transfer
from keras_siglip.models import SigLIPImageClassifier
from tests.helpers import changed, tiny_backbone, weights_by_path


def paths(variables):
    return {v.path for v in variables}


@pytest.fixture
def pairs(rng):
    return {
        "images": rng.uniform(-1, 1, (8, 32, 32, 3)).astype("float32"),
        "token_ids": rng.integers(3, 60, (8, 8)).astype("int32"),
    }


def outputs(model, x):
    return {k: ops.convert_to_numpy(v) for k, v in model(x).items()}


# --- LiT and per-tower freezing -------------------------------------------


def test_lit_fit_step_changes_the_text_tower_and_not_the_image_tower(pairs):
    backbone = transfer.lock_image_tower(tiny_backbone())
    backbone.compile()
    image_paths, text_paths = paths(backbone.vision_encoder.weights), paths(backbone.text_encoder.weights)
    head_paths = paths(backbone.contrastive_head.weights)
    assert paths(backbone.trainable_weights) == text_paths | head_paths
    before = weights_by_path(backbone)
    backbone.fit(pairs, batch_size=8, epochs=1, verbose=0)
    moved = changed(before, backbone)
    assert not moved & image_paths
    assert moved == text_paths | head_paths  # every text weight and t, b


def test_set_trainable_per_tower_and_back(pairs):
    backbone = tiny_backbone()
    image_paths, text_paths = paths(backbone.vision_encoder.weights), paths(backbone.text_encoder.weights)
    head_paths = paths(backbone.contrastive_head.weights)
    assert transfer.set_trainable(backbone, image=True, text=False) is backbone
    backbone.compile()
    before = weights_by_path(backbone)
    backbone.fit(pairs, batch_size=8, epochs=1, verbose=0)
    assert changed(before, backbone) == image_paths | head_paths
    # Contrastive fine-tuning of both towers: everything trains again.
    transfer.set_trainable(backbone, image=True, text=True)
    backbone.compile()
    before = weights_by_path(backbone)
    backbone.fit(pairs, batch_size=8, epochs=1, verbose=0)
    assert changed(before, backbone) == image_paths | text_paths | head_paths
    assert transfer.trainable_parameter_count(backbone) == backbone.count_params()


def test_set_trainable_needs_two_towers():
    with pytest.raises(TypeError, match="two-tower"):
        transfer.lock_image_tower(tiny_backbone().vision_encoder)


# --- LoRA ----------------------------------------------------------------


def lora_paths(model):
    return {v.path for v in model.weights if "lora_kernel" in v.path}


@pytest.mark.parametrize(
    "tower, adapted",
    # (encoder blocks + MAP head) x (query, value); text blocks x (query, value).
    [(None, 2 * 2 + 2 + 2 * 2), ("vision_encoder", 2 * 2 + 2), ("text_encoder", 2 * 2)],
)
def test_enable_lora_reaches_query_and_value_of_every_attention(pairs, tower, adapted):
    backbone = tiny_backbone()
    model = getattr(backbone, tower) if tower else backbone
    x = pairs if tower is None else pairs["images" if tower == "vision_encoder" else "token_ids"]
    reference = ops.convert_to_numpy(ops.concatenate(list(_flat(model(x))), axis=-1))
    assert transfer.enable_lora(model, rank=2) is model
    layers = [l for l in model._flatten_layers() if getattr(l, "lora_enabled", False)]
    assert len(layers) == adapted
    assert {l.name for l in layers} == {"query", "value"}
    assert {l.path.split("/")[-2] for l in layers} <= {"attention"}
    # Only the LoRA factors train (keras-hub alone leaves the biases trainable).
    assert paths(model.trainable_weights) == lora_paths(model)
    assert len(lora_paths(model)) == 2 * adapted
    # B starts at zero: the outputs equal the model without LoRA.
    got = ops.convert_to_numpy(ops.concatenate(list(_flat(model(x))), axis=-1))
    np.testing.assert_allclose(got, reference, atol=1e-6)


def _flat(y):
    return [y[k] for k in sorted(y)] if isinstance(y, dict) else [y]


def lora_optimizer():
    # Plain AdamW: decays every trainable weight, the LoRA factors included.
    return keras.optimizers.AdamW(1e-3, weight_decay=1e-4)


def test_lora_fit_changes_only_lora_weights_and_saves_and_loads(pairs, tmp_path):
    backbone = transfer.enable_lora(tiny_backbone(), rank=2)
    backbone.compile(optimizer=lora_optimizer())
    before = weights_by_path(backbone)
    backbone.fit(pairs, batch_size=8, epochs=2, verbose=0)
    moved = changed(before, backbone)
    assert moved and moved <= lora_paths(backbone)
    assert {p for p in lora_paths(backbone) if p.endswith("lora_kernel_b")} <= moved
    trained = outputs(backbone, pairs)

    path = str(tmp_path / "towers.lora.h5")
    backbone.save_lora_weights(path)
    fresh = tiny_backbone()  # same seed: the same base weights
    assert not np.allclose(outputs(fresh, pairs)["logits"], trained["logits"], atol=1e-6)
    fresh.load_lora_weights(path)  # enables LoRA of the saved rank
    for key, value in outputs(fresh, pairs).items():
        np.testing.assert_allclose(value, trained[key], atol=1e-5)
    again = transfer.enable_lora(tiny_backbone(), rank=2)
    again.load_lora_weights(path)
    np.testing.assert_allclose(outputs(again, pairs)["logits"], trained["logits"], atol=1e-5)


def test_lora_model_saves_a_merged_preset(pairs, tmp_path):
    from keras_siglip.models import SigLIPBackbone

    backbone = transfer.enable_lora(tiny_backbone(), rank=2)
    backbone.compile(optimizer=lora_optimizer())
    backbone.fit(pairs, batch_size=8, epochs=2, verbose=0)
    backbone.save_to_preset(str(tmp_path / "merged"))
    restored = SigLIPBackbone.from_preset(str(tmp_path / "merged"))
    assert not lora_paths(restored)
    trained = outputs(backbone, pairs)
    for key, value in outputs(restored, pairs).items():
        np.testing.assert_allclose(value, trained[key], atol=1e-5)


def test_lora_fit_with_the_default_compile(pairs):
    """The default optimizer decays kernels only: with only LoRA factors training
    nothing is decayed (Keras' torch optimizer used to fail on the empty list)."""
    backbone = transfer.enable_lora(tiny_backbone(), rank=2)
    backbone.compile()
    before = weights_by_path(backbone)
    backbone.fit(pairs, batch_size=8, epochs=1, verbose=0)
    moved = changed(before, backbone)
    assert moved and moved <= lora_paths(backbone)


def test_lora_on_an_image_classifier_trains_factors_and_head(rng):
    classifier = SigLIPImageClassifier(tiny_backbone().vision_encoder, num_classes=3)
    assert transfer.enable_lora(classifier, rank=4) is classifier
    classifier.compile()
    head = paths(classifier.output_dense.weights)
    assert paths(classifier.trainable_weights) == lora_paths(classifier.backbone) | head
    assert float(ops.convert_to_numpy(classifier.optimizer.learning_rate)) == pytest.approx(3e-3)
    images = rng.uniform(-1, 1, (6, 32, 32, 3)).astype("float32")
    before = weights_by_path(classifier)
    classifier.fit(images, np.arange(6) % 3, batch_size=6, epochs=1, verbose=0)
    assert changed(before, classifier) == {
        p for p in lora_paths(classifier.backbone) if p.endswith("lora_kernel_b")
    } | head


def test_enable_lora_bad_arguments():
    backbone = tiny_backbone()
    for rank in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="rank"):
            transfer.enable_lora(backbone, rank)
    with pytest.raises(ValueError, match="supports LoRA"):
        transfer.enable_lora(backbone, 2, target_layer_names=["no_such_layer"])
    with pytest.raises(TypeError, match="Backbone or Task"):
        transfer.enable_lora(object(), 2)
