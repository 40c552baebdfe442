"""SigLIPBackbone: outputs, any resolution, fit with one forward pass, presets, errors."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.hub import PresetUnavailable
from keras_siglip.models import SigLIPBackbone, SigLIPVisionEncoder
from keras_siglip.presets import PUBLISHED_PRESETS, siglip_config
from tests.helpers import numpy, tiny_backbone


def inputs(rng, batch=3, texts=None, size=32, vocab=60, length=8):
    return {
        "images": rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32"),
        "token_ids": rng.integers(0, vocab, (texts or batch, length)).astype("int32"),
    }


def test_outputs_are_normalised_and_logits_consistent(rng):
    model = tiny_backbone()
    out = numpy(model(inputs(rng, batch=3, texts=5)))
    assert out["image_embeddings"].shape == (3, 32) and out["text_embeddings"].shape == (5, 32)
    np.testing.assert_allclose(np.linalg.norm(out["image_embeddings"], axis=-1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["text_embeddings"], axis=-1), 1, atol=1e-5)
    expected = 10.0 * out["image_embeddings"] @ out["text_embeddings"].T - 10.0
    np.testing.assert_allclose(out["logits"], expected, atol=1e-5)
    np.testing.assert_allclose(float(model.temperature), 10.0, rtol=1e-6)


def test_encode_methods_match_forward(rng):
    model = tiny_backbone()
    x = inputs(rng)
    out = numpy(model(x))
    np.testing.assert_allclose(ops.convert_to_numpy(model.encode_images(x["images"])), out["image_embeddings"], atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(model.encode_texts(x["token_ids"])), out["text_embeddings"], atol=1e-6)


@pytest.mark.parametrize("size", [(32, 32), (48, 64), (16, 40), (35, 39)])
def test_runs_at_other_resolutions(rng, size):
    model = tiny_backbone()
    images = rng.uniform(-1, 1, (2, *size, 3)).astype("float32")
    embeddings = ops.convert_to_numpy(model.encode_images(images))
    assert embeddings.shape == (2, 32) and np.isfinite(embeddings).all()


def test_fit_lowers_the_loss_with_one_forward_per_step(rng, monkeypatch):
    model = tiny_backbone()
    calls = []
    vit = model.vision_encoder.vit
    original = type(vit).call
    monkeypatch.setattr(type(vit), "call", lambda self, x: calls.append(1) or original(self, x))
    x = inputs(rng, batch=8)
    if keras.backend.backend() == "jax":
        # Eager JAX compiles every op of the step separately (20 s): count the
        # forwards in one fresh trace of the compiled step instead.
        model.compile(optimizer=keras.optimizers.Adam(3e-3))
        model.fit(x, batch_size=4, epochs=1, verbose=0)  # includes a one-off symbolic build
        calls.clear()
        model.make_train_function(force=True)
        model.fit(x, batch_size=4, epochs=1, verbose=0)  # 2 train steps, one trace
        assert len(calls) == 1, f"{len(calls)} vision forward passes in one traced train step"
    else:
        model.compile(optimizer=keras.optimizers.Adam(3e-3), run_eagerly=True)
        model.fit(x, batch_size=4, epochs=1, verbose=0)  # includes a one-off symbolic build
        calls.clear()
        model.fit(x, batch_size=4, epochs=1, verbose=0)  # 2 eager train steps
        assert len(calls) == 2, f"{len(calls)} vision forward passes in 2 train steps"
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(x, batch_size=8, epochs=15, verbose=0).history["loss"]
    assert history[-1] < 0.5 * history[0]


def test_fit_logs_temperature_bias_and_pair_logits(rng):
    model = tiny_backbone()
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # weights stay put
    x = inputs(rng, batch=4)
    logs = model.fit(x, batch_size=4, epochs=1, verbose=0).history
    out = ops.convert_to_numpy(model(x)["logits"])
    np.testing.assert_allclose(logs["temperature"][0], 10.0, rtol=1e-6)
    np.testing.assert_allclose(logs["bias"][0], -10.0, rtol=1e-6)
    np.testing.assert_allclose(logs["positive_logit"][0], np.diag(out).mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["negative_logit"][0], out[~np.eye(4, dtype=bool)].mean(), rtol=1e-5)
    assert set(model.evaluate(x, batch_size=4, verbose=0, return_dict=True)) >= {"temperature", "positive_logit"}


def test_default_compile_follows_the_papers():
    model = tiny_backbone()
    model.compile(total_steps=100)
    assert model.optimizer.total_steps == 100 and model.optimizer.warmup_steps == 10
    assert model.optimizer.beta_2 == 0.95 and model.optimizer.global_clipnorm == 1.0
    with pytest.raises(ValueError, match="total_steps"):
        model.compile(optimizer=keras.optimizers.Adam(), total_steps=100)


def test_loss_uses_explicit_labels(rng):
    model = tiny_backbone()
    model.compile()
    x = inputs(rng, batch=4)
    logits = ops.convert_to_numpy(model(x)["logits"])
    labels = -np.ones((4, 4), "float32")
    labels[0, 1] = 1  # a custom positive pair
    loss = float(model.compute_loss(x, labels, model(x)))
    expected = np.mean(np.sum(np.logaddexp(0, -labels * logits), axis=-1))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_interrupted_save_keeps_the_old_preset(rng, tmp_path, monkeypatch):
    path = str(tmp_path / "preset")
    old = tiny_backbone(seed=1)
    old.save_to_preset(path)
    before = {f: open(os.path.join(path, f), "rb").read() for f in os.listdir(path)}

    from keras_hub.src.utils import preset_utils

    def crash(self, backbone):
        raise KeyboardInterrupt("interrupted while writing metadata")

    monkeypatch.setattr(preset_utils.KerasPresetSaver, "_save_metadata", crash)
    with pytest.raises(KeyboardInterrupt):
        tiny_backbone(seed=2).save_to_preset(path)
    after = {f: open(os.path.join(path, f), "rb").read() for f in os.listdir(path)}
    assert after == before
    assert [p for p in os.listdir(tmp_path) if p != "preset"] == []  # no temporary left behind


def test_unknown_preset_names_close_matches():
    with pytest.raises(ValueError, match="siglip2_base_patch16_224"):
        SigLIPBackbone.from_preset("siglip2_base_patch16_244")
    with pytest.raises(ValueError, match="Unknown preset"):
        SigLIPBackbone.from_preset("clowntown")


def test_published_card_builds_architecture_without_weights(monkeypatch):
    card = {"config": siglip_config("mu/8", 32, "mu", 100, 8), "sources": {"huggingface": "x/y"}}
    monkeypatch.setitem(PUBLISHED_PRESETS, "tiny_card", card)
    model = SigLIPBackbone.from_preset("tiny_card", load_weights=False)
    from keras_siglip.presets import parameter_count

    assert model.count_params() == parameter_count(card["config"])
    with pytest.raises(PresetUnavailable, match=r"Could not fetch the weights of 'tiny_card'.*offline.*convert"):
        SigLIPBackbone.from_preset("tiny_card")  # tests run offline (KERAS_SIGLIP_OFFLINE)


def test_bad_inputs_give_clear_errors(rng):
    model = tiny_backbone()
    x = inputs(rng)
    with pytest.raises(ValueError, match="3\\)"):
        model.encode_images(rng.uniform(-1, 1, (2, 32, 32, 4)).astype("float32"))
    with pytest.raises(ValueError, match="shape"):
        model.encode_images(rng.uniform(-1, 1, (32, 32, 3)).astype("float32"))
    with pytest.raises(ValueError, match="smaller than one"):
        model.encode_images(rng.uniform(-1, 1, (1, 4, 32, 3)).astype("float32"))
    with pytest.raises(ValueError, match=r"\[0, 60\)"):
        model.encode_texts(np.full((2, 8), 60, "int32"))
    with pytest.raises(ValueError, match=r"\[0, 60\)"):
        model.encode_texts(np.full((2, 8), -1, "int32"))
    bad = {**x, "token_ids": np.full((3, 8), 99, "int32")}
    with pytest.raises(ValueError, match=r"\[0, 60\)"):
        model.predict(bad, verbose=0)
    model.compile()
    with pytest.raises(ValueError, match=r"\[0, 60\)"):
        model.fit(bad, verbose=0)
    with pytest.raises(ValueError, match=r"token_ids.*\(None, 8\)|fixed length of 8"):
        model.encode_texts(x["token_ids"][:, :5])


def test_mismatched_embedding_widths_are_refused():
    from keras_siglip.models import SigLIPTextEncoder

    vision = SigLIPVisionEncoder(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, image_size=32)
    text = SigLIPTextEncoder(vocabulary_size=10, width=24, depth=1, num_heads=2, mlp_dim=48, sequence_length=4)
    with pytest.raises(ValueError, match="embedding width"):
        SigLIPBackbone(vision, text)


def test_shipped_preset_is_registered():
    from keras_siglip.presets import SHIPPED_PRESETS

    assert "siglip2_shapes_tiny" in SHIPPED_PRESETS
    assert "siglip2_shapes_tiny" in SigLIPBackbone.presets
