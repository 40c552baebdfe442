"""ThreeTowersBackbone (3T): the loss against numpy, a frozen third tower, fit,
save / load, and clear input errors."""


import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.losses import sigmoid_loss_from_embeddings, softmax_loss_from_embeddings
from keras_siglip.models import SigLIPTextEncoder, SigLIPVisionEncoder
from keras_siglip.models.three_towers import (
    ThreeTowersBackbone,
    precompute_third_tower_embeddings,
    three_towers_loss,
)
from tests.helpers import numpy

VOCAB, LENGTH, SIZE, BATCH = 40, 6, 16, 8


def numpy_sigmoid_loss(logits):
    labels = 2 * np.eye(len(logits)) - 1
    return np.mean(np.sum(np.logaddexp(0.0, -labels * logits), axis=1))  # -log sigmoid(z * l)


def numpy_softmax_loss(logits):
    def cross_entropy(rows):
        top = rows.max(axis=1, keepdims=True)
        lse = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
        return np.mean(lse - np.diag(rows))

    return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


NUMPY_LOSSES = {"sigmoid": numpy_sigmoid_loss, "softmax": numpy_softmax_loss}


def numpy_3t_loss(out, heads, kind, weights):
    """The 3T objective from the model's output embeddings and each term's (t, b)."""
    pairs = [
        (out["image_embeddings"], out["text_embeddings"]),
        (out["image_alignment_embeddings"], out["third_tower_embeddings"]),
        (out["text_alignment_embeddings"], out["third_tower_embeddings"]),
    ]
    terms = []
    for (a, b), (t, bias) in zip(pairs, heads):
        logits = np.exp(t) * a.astype(np.float64) @ b.astype(np.float64).T + bias
        terms.append(NUMPY_LOSSES[kind](logits))
    return sum(w * x for w, x in zip(weights, terms)), terms


def towers(seed=0):
    keras.utils.set_random_seed(seed)
    vision = SigLIPVisionEncoder(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, image_size=SIZE)
    text = SigLIPTextEncoder(
        vocabulary_size=VOCAB, width=32, depth=1, num_heads=2, mlp_dim=64, sequence_length=LENGTH, num_classes=32
    )
    return vision, text


def pretrained_tower(seed=1, image_size=SIZE):
    keras.utils.set_random_seed(seed)
    # The image tower's architecture (its shapes compile once on JAX), other weights.
    return SigLIPVisionEncoder(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, image_size=image_size)


def inputs(seed=0, batch=BATCH):
    rng = np.random.default_rng(seed)
    return {
        "images": rng.uniform(-1, 1, (batch, SIZE, SIZE, 3)).astype("float32"),
        "token_ids": rng.integers(0, VOCAB, (batch, LENGTH)).astype("int32"),
    }


def weights_of(layer):
    return [ops.convert_to_numpy(w).copy() for w in layer.weights]


@pytest.fixture(scope="module")
def parts():
    """One set of towers for the file (shared layers: each shape compiles once on JAX)."""
    return (*towers(), pretrained_tower())


@pytest.fixture(scope="module")
def model(parts):
    vision, text, third = parts
    return ThreeTowersBackbone(vision, text, third_tower=third)


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_loss_function_matches_numpy_on_fixed_embeddings(kind):
    rng = np.random.default_rng(3)

    def unit(n, d):
        x = rng.normal(size=(n, d))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")

    image, text, image_h, text_h, third = (unit(6, 5) for _ in range(5))
    heads = [(np.log(10.0), -10.0), (np.log(4.0), -2.0), (np.log(7.0), 1.5)]
    pairs = [(image, text), (image_h, third), (text_h, third)]
    logits = [np.exp(t) * a @ b.T + bias for (a, b), (t, bias) in zip(pairs, heads)]
    weights = (0.5, 0.3, 0.2)
    total, terms = three_towers_loss([ops.convert_to_tensor(x) for x in logits], kind, weights)
    expected_terms = [NUMPY_LOSSES[kind](x.astype(np.float64)) for x in logits]
    np.testing.assert_allclose([float(ops.convert_to_numpy(x)) for x in terms], expected_terms, rtol=1e-5)
    np.testing.assert_allclose(float(ops.convert_to_numpy(total)), np.dot(weights, expected_terms), rtol=1e-5)
    # The package's one loss module per form gives the same terms from embeddings.
    (t, b), from_embeddings = heads[1], {
        "sigmoid": lambda a, c, t, b: sigmoid_loss_from_embeddings(a, c, np.float32(t), np.float32(b)),
        "softmax": lambda a, c, t, b: softmax_loss_from_embeddings(a, c, np.float32(t)),
    }[kind]
    value = float(ops.convert_to_numpy(from_embeddings(image_h, third, t, b)))
    np.testing.assert_allclose(value, expected_terms[1], rtol=1e-5)


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_model_loss_matches_numpy(parts, kind):
    weights = (0.5, 0.3, 0.2)
    vision, text, third = parts
    model = ThreeTowersBackbone(vision, text, third_tower=third, contrastive_loss=kind, term_weights=weights)
    heads = [(np.log(10.0), -10.0), (np.log(3.0), -1.0), (np.log(6.0), 0.5)]
    for layer, (t, b) in zip(
        (model.contrastive_head, model.image_alignment_contrastive_head, model.text_alignment_contrastive_head), heads
    ):
        layer.log_temperature.assign([t])
        layer.bias.assign([b])
    x = inputs()
    y_pred = model(x)
    loss = float(ops.convert_to_numpy(model.compute_loss(x, y_pred=y_pred)))
    expected, _ = numpy_3t_loss(numpy(y_pred), heads, kind, weights)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_outputs_are_normalised_and_inference_uses_the_main_towers(model):
    x = inputs()
    out = numpy(model(x))
    for key in ("image_embeddings", "text_embeddings", "image_alignment_embeddings", "third_tower_embeddings"):
        assert out[key].shape == (BATCH, 32)
        np.testing.assert_allclose(np.linalg.norm(out[key], axis=-1), 1, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(model.encode_images(x["images"])), out["image_embeddings"], atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(model.encode_texts(x["token_ids"])), out["text_embeddings"], atol=1e-6)


def test_fit_keeps_the_third_tower_bit_identical_trains_the_rest_and_lowers_the_loss(parts):
    vision, text, third = parts
    model = ThreeTowersBackbone(vision, text, third_tower=third)
    frozen = weights_of(model.third_tower)
    trained = [
        model.vision_encoder, model.text_encoder, model.image_alignment_head, model.text_alignment_head,
        model.third_tower_head, model.contrastive_head, model.image_alignment_contrastive_head,
        model.text_alignment_contrastive_head,
    ]
    before = [weights_of(layer) for layer in trained]
    model.trainable = True  # everything trains except the third tower
    assert not any(w.trainable for w in model.third_tower.weights)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(inputs(), batch_size=BATCH, epochs=12, verbose=0).history
    for old, new in zip(frozen, weights_of(model.third_tower)):
        assert np.array_equal(old, new)
    for layer, old in zip(trained, before):
        new = weights_of(layer)
        assert any(not np.array_equal(o, n) for o, n in zip(old, new)), f"{layer.name} did not train"
    assert set(history) >= {"loss", "contrastive_loss", "image_alignment_loss", "text_alignment_loss"}
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    for term in ("contrastive_loss", "image_alignment_loss", "text_alignment_loss"):
        assert history[term][-1] < history[term][0]
    # The logged total is the weighted sum of the logged terms (equal weights).
    np.testing.assert_allclose(
        history["loss"][0],
        np.mean([history[t][0] for t in ("contrastive_loss", "image_alignment_loss", "text_alignment_loss")]),
        rtol=1e-4,
    )


def test_precomputed_embeddings_and_a_separate_third_tower_input(parts):
    vision, text, third = parts
    x = inputs()
    third_images = inputs(seed=9)["images"]  # the third tower's own images
    separate = ThreeTowersBackbone(vision, text, third_tower=third, third_tower_input="third_tower_images")
    out = numpy(separate({**x, "third_tower_images": third_images}))
    # The same weights fed precomputed embeddings give the same outputs.
    precomputed = ThreeTowersBackbone(vision, text, third_tower_input="third_tower_embeddings", third_tower_dim=32)
    for name in ("image_alignment_head", "text_alignment_head", "third_tower_head"):
        getattr(precomputed, name).set_weights(getattr(separate, name).get_weights())
    embeddings = precompute_third_tower_embeddings(third, third_images)
    assert embeddings.shape == (BATCH, 32)
    out2 = numpy(precomputed({**x, "third_tower_embeddings": embeddings}))
    for key in ("image_alignment_logits", "text_alignment_logits", "logits"):
        np.testing.assert_allclose(out2[key], out[key], atol=1e-4)


def test_clear_errors_for_wrong_inputs(parts, model):
    x = inputs(batch=4)
    with pytest.raises(ValueError, match="missing \\['token_ids'\\]"):
        model({"images": x["images"]})
    precomputed = ThreeTowersBackbone(*parts[:2], third_tower_input="third_tower_embeddings", third_tower_dim=32)
    with pytest.raises(ValueError, match="(?s)missing \\['third_tower_embeddings'\\].*precompute"):
        precomputed.predict(x, verbose=0)
    with pytest.raises(ValueError, match="'third_tower_embeddings' must have shape \\(B, 32\\); got \\(4, 12\\)"):
        precomputed({**x, "third_tower_embeddings": np.zeros((4, 12), "float32")})
    with pytest.raises(ValueError, match="same batch size"):
        precomputed({**x, "third_tower_embeddings": np.zeros((3, 32), "float32")})
    with pytest.raises(ValueError, match="contrastive_loss must be one of"):
        ThreeTowersBackbone(*parts, contrastive_loss="hinge")
    with pytest.raises(ValueError, match="trains with its 3T loss"):
        model.compile(loss="mse")


def test_third_tower_from_a_preset_name(parts):
    model = ThreeTowersBackbone(*parts[:2], third_tower="siglip2_shapes_tiny", third_tower_input="third_tower_images")
    assert isinstance(model.third_tower.tower, SigLIPVisionEncoder)
    assert model.third_tower_dim == 128
    assert model.expected_inputs()["third_tower_images"] == (None, None, 3)


def test_a_quantized_model_saves_and_loads(tmp_path):
    """int8 towers, including a third tower of the image tower's class (the same
    inner layer paths), come back from the preset quantized and give the same outputs."""
    vision, text = towers(seed=3)
    model = ThreeTowersBackbone(vision, text, third_tower=pretrained_tower(seed=4))
    model.quantize("int8")
    x = inputs(seed=2, batch=3)
    expected = {k: numpy(v) for k, v in model(x).items()}
    model.save_to_preset(str(tmp_path / "preset"))
    restored = ThreeTowersBackbone.from_preset(str(tmp_path / "preset"))
    for tower in ("vision_encoder", "text_encoder", "third_tower"):
        modes = {l.quantization_mode for l in getattr(restored, tower)._flatten_layers()
                 if isinstance(l, (keras.layers.Dense, keras.layers.EinsumDense))}
        assert modes == {"int8"}, (tower, modes)
    for key, value in restored(x).items():
        np.testing.assert_array_equal(numpy(value), expected[key], err_msg=key)


def unit_rows(x):
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def dense(layer, x):
    kernel, bias = layer.get_weights()
    return x.astype(np.float64) @ kernel + bias


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_inference_with_the_third_tower_is_the_convex_combination(parts, weight):
    """(1 - w) cos(f, g) + w cos(h, g_h), against numpy from each tower's raw features."""
    vision, text, third = parts
    model = ThreeTowersBackbone(vision, text, third_tower=third)
    x = inputs(seed=4)
    for head in (model.text_alignment_head, model.third_tower_head):  # off zero biases
        kernel, bias = head.get_weights()
        head.set_weights([kernel, bias + np.random.default_rng(5).normal(0, 0.1, bias.shape).astype("float32")])
    image_features, frozen = numpy(vision(x["images"])), numpy(third(x["images"]))
    text_features = numpy(text(x["token_ids"][:5]))
    expected = ((1 - weight) * unit_rows(image_features) @ unit_rows(text_features).T
                + weight * unit_rows(dense(model.third_tower_head, frozen))
                @ unit_rows(dense(model.text_alignment_head, text_features)).T)
    got = numpy(model.combined_similarity(x["images"], x["token_ids"][:5], weight))
    assert got.shape == (BATCH, 5)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    images = numpy(model.encode_images_combined(x["images"], weight))
    texts = numpy(model.encode_texts_combined(x["token_ids"][:5], weight))
    assert images.shape == (BATCH, 64) and texts.shape == (5, 64)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)  # sqrt weights: unit rows
    if weight == 0.0:  # the two-tower model
        main = numpy(model.encode_images(x["images"])) @ numpy(model.encode_texts(x["token_ids"][:5])).T
        np.testing.assert_allclose(got, main, atol=1e-6)


def test_inference_with_precomputed_or_separate_third_tower_inputs(parts):
    vision, text, third = parts
    x = inputs(seed=6)
    own_images = inputs(seed=7)["images"]
    separate = ThreeTowersBackbone(vision, text, third_tower=third, third_tower_input="third_tower_images")
    precomputed = ThreeTowersBackbone(vision, text, third_tower_input="third_tower_embeddings", third_tower_dim=32)
    for name in ("image_alignment_head", "text_alignment_head", "third_tower_head"):
        precomputed_layer = getattr(precomputed, name)
        precomputed_layer.set_weights(getattr(separate, name).get_weights())
    from_images = numpy(separate.combined_similarity(x["images"], x["token_ids"], 0.5, own_images))
    embeddings = precompute_third_tower_embeddings(third, own_images)
    from_embeddings = numpy(precomputed.combined_similarity(x["images"], x["token_ids"], 0.5, embeddings))
    np.testing.assert_allclose(from_embeddings, from_images, atol=1e-5)
    # The third tower saw its own images, not the main ones.
    main_images = numpy(separate.combined_similarity(x["images"], x["token_ids"], 0.5, x["images"]))
    assert np.max(np.abs(main_images - from_images)) > 1e-3
    with pytest.raises(ValueError, match="reads 'third_tower_images': pass them as `third_tower_inputs`"):
        separate.combined_similarity(x["images"], x["token_ids"], 0.5)
    with pytest.raises(ValueError, match="must have shape \\(B, 32\\); got \\(8, 12\\)"):
        precomputed.combined_similarity(x["images"], x["token_ids"], 0.5, np.zeros((8, 12), "float32"))
    with pytest.raises(ValueError, match="same batch size"):
        separate.combined_similarity(x["images"], x["token_ids"], 0.5, own_images[:3])
    for weight in (-0.1, 1.5):
        with pytest.raises(ValueError, match="third_tower_weight must be in \\[0, 1\\]"):
            separate.encode_texts_combined(x["token_ids"], weight)
