"""Stage D (ACID): learnability, JEST joint selection against a numpy
reference, the trained sub-batch, counted forwards, and resumable draws."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.layers.vit import VisionTransformer
from keras_siglip.losses import pairwise_sigmoid_losses, sigmoid_loss_from_embeddings
from keras_siglip.models import ActiveCurationTrainer
from keras_siglip.models.siglip2.active_curation import (
    gumbel_noise,
    joint_selection,
    learnability_scores,
    random_subset_learnability,
    subset_learnability,
)
from tests.helpers import tiny_backbone

BACKEND = keras.backend.backend()
SUPER_BATCH, CHUNKS = 16, 4


def numpy_pair_losses(img, txt, t, b):
    logits = np.exp(t) * img @ txt.T + b
    labels = 2 * np.eye(len(img)) - 1
    return np.logaddexp(0, -labels * logits)


def numpy_jest(scores, num_selected, num_chunks, noise):
    """JEST's Algorithm 1, written from the paper, with the noise given."""
    size = len(scores)
    chosen = np.zeros(size, bool)
    order = []
    for chunk in range(num_chunks):
        logits = np.diag(scores).copy()
        if chunk:
            logits += scores[chosen].sum(0) + scores[:, chosen].sum(1)
        logits = np.where(chosen, -np.inf, logits + noise[chunk])
        drawn = np.argsort(-logits, kind="stable")[: num_selected // num_chunks]
        order.extend(drawn.tolist())
        chosen[drawn] = True
    return np.array(order)


def unit(rng, shape):
    x = rng.normal(size=shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype("float32")


def make_inputs(seed=0, batch=SUPER_BATCH, size=32):
    rng = np.random.default_rng(seed)
    return {"images": rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32"),
            "token_ids": rng.integers(2, 60, (batch, 8)).astype("int32")}


def make_trainer(reference_size=32, **kwargs):
    kwargs = {"num_chunks": CHUNKS, "seed": 5, **kwargs}
    model = ActiveCurationTrainer(tiny_backbone(seed=0), tiny_backbone(seed=1, image_size=reference_size),
                                  compile=False, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def as_numpy(x):
    return ops.convert_to_numpy(x)


def test_pairwise_losses_equal_numpy_and_sum_to_the_sigmoid_loss(rng):
    img, txt = unit(rng, (6, 5)), unit(rng, (6, 5))
    t, b = np.array([1.7], "float32"), np.array([-3.1], "float32")
    pairs = as_numpy(pairwise_sigmoid_losses(img, txt, t, b))
    np.testing.assert_allclose(pairs, numpy_pair_losses(img, txt, t, b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pairs.sum(1).mean(), as_numpy(sigmoid_loss_from_embeddings(img, txt, t, b)),
                               rtol=1e-5)


@pytest.mark.parametrize("noise_scale", [0.0, 1.0])
def test_joint_selection_equals_numpy_jest(rng, noise_scale):
    scores = rng.normal(size=(SUPER_BATCH, SUPER_BATCH)).astype("float32")
    noise = (noise_scale * rng.gumbel(size=(CHUNKS, SUPER_BATCH))).astype("float32")
    picked = as_numpy(joint_selection(scores, 8, CHUNKS, noise))
    np.testing.assert_array_equal(picked, numpy_jest(scores, 8, CHUNKS, noise))
    assert len(set(picked.tolist())) == 8


def test_later_chunks_are_conditioned_on_earlier_ones():
    """Pair 3 is poor alone but learnable together with pair 0 (a large A_03):
    chosen in the second chunk once 0 is in, never by its own score."""
    scores = np.zeros((6, 6), "float32")
    np.fill_diagonal(scores, [5.0, 1.0, 0.9, -1.0, 0.5, 0.4])
    scores[0, 3] = 4.0
    noise = np.zeros((2, 6), "float32")
    np.testing.assert_array_equal(as_numpy(joint_selection(scores, 2, 2, noise)), [0, 3])
    np.testing.assert_array_equal(as_numpy(joint_selection(scores, 2, 1, noise)), [0, 1])


def test_selection_keeps_clean_pairs_the_learner_has_not_learned(rng):
    """Half the pairs are mislabelled (the reference cannot match them
    either), a quarter are already learned by the learner: joint selection
    keeps the clean unlearned pairs, and its learnability beats a random
    sub-batch's."""
    size, dim = 32, 128
    images = unit(rng, (size, dim))
    texts = images.copy()
    texts[16:] = unit(rng, (16, dim))  # mislabelled pairs: the caption is unrelated
    t, b = np.log(20.0).reshape(1).astype("float32"), np.array([-10.0], "float32")
    learner_texts = unit(rng, (size, dim))
    learner_texts[:8] = images[:8]  # the learner already matches pairs 0-7
    scores = learnability_scores((images, learner_texts, t, b), (images, texts, t, b))
    noise = as_numpy(gumbel_noise((4, size), keras.random.SeedGenerator(0)))
    picked = as_numpy(joint_selection(scores, 8, 4, noise))
    assert set(picked.tolist()) <= set(range(8, 16)), picked
    chosen = np.zeros(size, "float32")
    chosen[picked] = 1
    assert float(subset_learnability(scores, chosen)) > float(random_subset_learnability(scores, 8)) + 1.0


def test_random_subset_learnability_is_the_mean_over_random_subsets(rng):
    scores = rng.normal(size=(8, 8)).astype("float32")
    draws = [np.isin(np.arange(8), rng.choice(8, 3, replace=False)) for _ in range(20000)]
    empirical = np.mean([float((s[:, None] * scores * s[None]).sum()) / 3 for s in map(np.float32, draws)])
    np.testing.assert_allclose(float(random_subset_learnability(scores, 3)), empirical, atol=0.03)


def test_a_step_trains_on_the_jointly_selected_pairs():
    """Selection = numpy JEST on numpy learnability of both models' embeddings
    with the trainer's Gumbel draws; the loss is the learner's sigmoid loss
    on exactly those pairs; the reference reads images resized to its size."""
    model = make_trainer(reference_size=48)
    x = make_inputs()
    learner, reference = model.backbone, model.reference
    resized = as_numpy(ops.image.resize(x["images"], (48, 48), interpolation="bilinear", antialias=True))
    l_img, l_txt = (as_numpy(e) for e in (learner.encode_images(x["images"]), learner.encode_texts(x["token_ids"])))
    r_img, r_txt = (as_numpy(e) for e in (reference.encode_images(resized), reference.encode_texts(x["token_ids"])))
    head, ref_head = learner.contrastive_head, reference.contrastive_head
    t, b = as_numpy(head.log_temperature), as_numpy(head.bias)
    scores = numpy_pair_losses(l_img, l_txt, t, b) - numpy_pair_losses(
        r_img, r_txt, as_numpy(ref_head.log_temperature), as_numpy(ref_head.bias))
    noise = as_numpy(gumbel_noise((CHUNKS, SUPER_BATCH), keras.random.SeedGenerator(5)))
    expected = numpy_jest(scores, 8, CHUNKS, noise)

    y_pred = model(x, training=True)
    picked = as_numpy(y_pred["selection"])
    np.testing.assert_array_equal(picked, expected)
    loss = as_numpy(model.compute_loss(x, y_pred=y_pred))
    numpy_loss = numpy_pair_losses(l_img[picked], l_txt[picked], t, b).sum(1).mean()
    np.testing.assert_allclose(loss, numpy_loss, rtol=1e-5)
    mask = np.isin(np.arange(SUPER_BATCH), picked)
    np.testing.assert_allclose(as_numpy(y_pred["learnability"]),
                               (scores * mask[:, None] * mask[None]).sum() / 8, rtol=1e-4, atol=1e-5)


def test_precomputed_reference_embeddings_select_the_same_pairs():
    model = make_trainer()
    x = make_inputs()
    state = as_numpy(model.seed_generator.state)
    computed = as_numpy(model(x, training=True)["selection"])
    model.seed_generator.state.assign(state)
    given = {**x, "reference_image_embeddings": model.reference.encode_images(x["images"]),
             "reference_text_embeddings": model.reference.encode_texts(x["token_ids"])}
    np.testing.assert_array_equal(as_numpy(model(given, training=True)["selection"]), computed)


class Counter:
    """Counts image-tower calls by model and batch (traces on JAX / TensorFlow)."""

    def __init__(self, monkeypatch, model):
        self.calls = {}
        original = VisionTransformer.call
        names = {id(model.backbone.vision_encoder.vit): "learner", id(model.reference.vision_encoder.vit): "reference"}

        def call(vit, inputs, *args, **kwargs):
            key = (names[id(vit)], inputs.shape[0])
            self.calls[key] = self.calls.get(key, 0) + 1
            return original(vit, inputs, *args, **kwargs)

        monkeypatch.setattr(VisionTransformer, "call", call)


def test_fit_forwards_and_trains_only_the_learner(monkeypatch):
    """Per step: the learner's image tower on the super-batch (scoring) and on
    the selected half (training), the reference's on the super-batch; the
    reference's weights never change; the logged learnability beats random."""
    model = make_trainer()
    x = make_inputs()
    if BACKEND == "torch":  # eager: count the second step (the first also builds)
        model.train_on_batch(x)
    counter = Counter(monkeypatch, model)
    reference_before = [as_numpy(w) for w in model.reference.weights]
    learner_before = [as_numpy(w) for w in model.backbone.trainable_weights]
    logs = model.train_on_batch(x, return_dict=True)
    traces = counter.calls[("learner", SUPER_BATCH)]
    assert traces >= 1
    assert counter.calls == {("learner", SUPER_BATCH): traces, ("learner", SUPER_BATCH // 2): traces,
                             ("reference", SUPER_BATCH): traces}, counter.calls
    for before, after in zip(reference_before, model.reference.weights):
        np.testing.assert_array_equal(before, as_numpy(after))
    assert any(np.abs(b - as_numpy(a)).max() > 0 for b, a in zip(learner_before, model.backbone.trainable_weights))
    assert np.isfinite(logs["loss"]) and logs["loss"] == pytest.approx(logs["sigmoid_loss"], rel=1e-5)
    assert logs["learnability"] > logs["random_learnability"]


def test_compiled_fit_traces_once_and_resumes_its_draws(tmp_path, monkeypatch):
    """Three fit steps trace the step once (JAX / TensorFlow); weights saved
    with the Gumbel generator's state give the same next selection."""
    model = make_trainer()
    x = make_inputs()
    traces = []
    original = ActiveCurationTrainer.compute_loss
    monkeypatch.setattr(ActiveCurationTrainer, "compute_loss",
                        lambda self, *a, **k: traces.append(1) or original(self, *a, **k))
    for _ in range(3):
        model.train_on_batch(x)
    if BACKEND != "torch":
        assert len(traces) == 1
    path = str(tmp_path / "d.weights.h5")
    model.save_weights(path)
    twin = make_trainer()
    twin.load_weights(path)
    np.testing.assert_array_equal(as_numpy(twin(x, training=True)["selection"]),
                                  as_numpy(model(x, training=True)["selection"]))


def test_fit_on_arrays_takes_whole_super_batches():
    """Arrays work on every backend (TensorFlow: batched statically) when they
    split into whole super-batches; otherwise a clear error before training."""
    model = make_trainer()
    x = make_inputs(batch=2 * SUPER_BATCH)
    history = model.fit(x, batch_size=SUPER_BATCH, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    with pytest.raises(ValueError, match="do not split into super-batches of 16"):
        model.fit(make_inputs(batch=SUPER_BATCH + 4), batch_size=SUPER_BATCH, verbose=0)


def test_config_round_trip_and_evaluation_selects_nothing():
    model = make_trainer(filter_ratio=0.75, num_chunks=2)
    clone = ActiveCurationTrainer.from_config(model.get_config())
    assert (clone.filter_ratio, clone.num_chunks, clone.selected_count(16)) == (0.75, 2, 4)
    outputs = model(make_inputs(), training=False)
    assert outputs["image_embeddings"].shape[0] == SUPER_BATCH and "selection" not in outputs


def test_bad_settings_and_inputs_are_named():
    with pytest.raises(ValueError, match="vocabulary_size 60 vs 70"):
        ActiveCurationTrainer(tiny_backbone(), tiny_backbone(vocabulary_size=70))
    with pytest.raises(ValueError, match="filter_ratio"):
        ActiveCurationTrainer(tiny_backbone(), tiny_backbone(), filter_ratio=1.0)
    model = make_trainer(num_chunks=3)
    with pytest.raises(ValueError, match="multiple of num_chunks"):
        model(make_inputs(), training=True)
    model = make_trainer()
    x = make_inputs()
    with pytest.raises(ValueError, match="reference_text_embeddings"):
        model({**x, "reference_image_embeddings": np.zeros((SUPER_BATCH, 32), "float32")}, training=True)
    with pytest.raises(ValueError, match="token_ids"):
        model({"images": x["images"]}, training=True)
