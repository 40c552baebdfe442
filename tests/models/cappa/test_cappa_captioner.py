"""CapPaCaptioner: training loss and modes, cached decoding, scoring, preprocessing."""

import itertools

import keras
import numpy as np
import pytest

from keras_siglip.losses import CaptioningLoss, TokenAccuracy
from keras_siglip.models import (
    CapPaBackbone,
    CapPaCaptioner,
    CapPaPreprocessor,
    SigLIPImageConverter,
    SigLIPTokenizer,
)
from tests.helpers import numpy

VOCAB = 20
EOS = 1
TINY = dict(
    vocabulary_size=VOCAB, patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32,
    image_size=32, max_length=10, decoder_depth=2,
)


def randomize(model, seed=0, eos_bias=None):
    """Random weights everywhere (the zero-initialised logits layer too), so
    decoding is non-trivial; `eos_bias` sets the EOS logit's bias."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        scale = 1.0 if "embedding" in weight.path else 0.3
        weight.assign((scale * rng.normal(size=tuple(weight.shape))).astype("float32"))
    if eos_bias is not None:
        bias = numpy(model.decoder.logits_dense.bias)
        bias[EOS] = eos_bias
        model.decoder.logits_dense.bias.assign(bias)


def tiny_captioner(seed=0, masked_pred_prob=0.75, eos_bias=None, preprocessor=None, **overrides):
    keras.utils.set_random_seed(seed)
    backbone = CapPaBackbone(**{**TINY, **overrides})
    randomize(backbone, seed, eos_bias)
    return CapPaCaptioner(backbone, preprocessor, masked_pred_prob=masked_pred_prob, seed=seed)


def images(batch=3, seed=1):
    """Images that differ in brightness and texture, so the captions differ."""
    rng = np.random.default_rng(seed)
    offsets = rng.uniform(-0.8, 0.8, (batch, 1, 1, 3))
    scales = rng.uniform(0.05, 1.0, (batch, 1, 1, 1))
    noise = rng.uniform(-1, 1, (batch, 32, 32, 3))
    return np.clip(offsets + scales * noise, -1, 1).astype("float32")


def reference_greedy(model, images, length):
    """Greedy decoding without a cache: the whole prefix is recomputed each step."""
    encoded = model.backbone.encode_images(images)
    # One fixed shape (the causal mask hides the zeros after position t), so JAX
    # compiles each op once, not once per prefix length.
    targets = np.zeros((len(images), length), "int32")
    for t in range(length):
        targets[:, t] = numpy(model.decoder(targets, encoded))[:, t].argmax(-1)
    return targets


def pad_after_eos(ids):
    ids = ids.copy()
    for row in ids:
        hits = np.flatnonzero(row == EOS)
        if hits.size:
            row[hits[0] + 1 :] = 0
    return ids


# === Training ===


def test_loss_and_accuracy_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype("float32") * 3
    targets = np.array([[4, 2, 1, 0, 0], [3, 3, 5, 6, 1], [0, 0, 0, 0, 0]], "int32")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    weights = (targets != 0).astype("float32")
    # big_vision weighted_softmax_xent(normalize=True): per-caption mean, batch mean.
    per_example = (nll * weights).sum(1) / np.maximum(weights.sum(1), 2e-38)
    assert per_example[2] == 0.0
    loss = numpy(CaptioningLoss()(targets, logits))
    np.testing.assert_allclose(loss, per_example.mean(), rtol=1e-5)
    assert not np.isclose(loss, (nll * weights).sum() / weights.sum())  # not a global token mean
    metric = TokenAccuracy()
    metric.update_state(targets, logits)
    right = (logits.argmax(-1) == targets) & (targets != 0)
    np.testing.assert_allclose(numpy(metric.result()), right.sum() / weights.sum(), rtol=1e-6)


def record_decoder_inputs(model):
    seen = []
    prepare = model.decoder.prepare_inputs

    def recording(token_ids, parallel=None, mask_positions=None):
        input_ids, mask = prepare(token_ids, parallel, mask_positions)
        seen.append((numpy(input_ids), numpy(mask)))
        return input_ids, mask

    model.decoder.prepare_inputs = recording
    return seen


def test_training_mode_follows_masked_pred_prob(rng):
    targets = rng.integers(2, VOCAB, (4, 10)).astype("int32")
    x = {"images": images(4), "token_ids": targets}
    shifted = np.concatenate([np.zeros((4, 1), "int32"), targets[:, :-1]], axis=1)
    causal = np.tril(np.ones((10, 10), bool))

    model = tiny_captioner(masked_pred_prob=1.0)
    seen = record_decoder_inputs(model)
    logits = numpy(model(x, training=True))
    (inputs, mask), = seen
    assert np.all(inputs == model.decoder.mask_id) and np.all(mask)
    encoded = model.backbone.encode_images(x["images"])
    np.testing.assert_allclose(
        logits, numpy(model.decoder(targets, encoded, parallel=True)), atol=1e-5
    )
    model(x, training=False)  # inference is always autoregressive
    np.testing.assert_array_equal(seen[-1][0], shifted)
    np.testing.assert_array_equal(seen[-1][1], np.broadcast_to(causal, (4, 10, 10)))

    model = tiny_captioner(masked_pred_prob=0.0)
    seen = record_decoder_inputs(model)
    model(x, training=True)
    np.testing.assert_array_equal(seen[0][0], shifted)
    np.testing.assert_array_equal(seen[0][1], np.broadcast_to(causal, (4, 10, 10)))


def test_parallel_prediction_is_drawn_per_example(rng):
    model = tiny_captioner(masked_pred_prob=0.5)
    draws = np.concatenate([numpy(model.caption_decoder.parallel_choice(64)) for _ in range(4)])
    assert 0.35 < draws.mean() < 0.65
    first, second = numpy(model.caption_decoder.parallel_choice(64)), numpy(
        model.caption_decoder.parallel_choice(64)
    )
    assert not np.array_equal(first, second)  # the seed generator advances


def test_parallel_prediction_draws_resume_from_saved_weights(tmp_path):
    """The draws' generator state travels with the weights: a model loaded
    from a checkpoint draws what the saved one draws next."""
    model = tiny_captioner(masked_pred_prob=0.5)
    for _ in range(3):
        model.caption_decoder.parallel_choice(64)
    path = str(tmp_path / "captioner.weights.h5")
    model.save_weights(path)
    fresh = tiny_captioner(masked_pred_prob=0.5)
    fresh.load_weights(path)
    np.testing.assert_array_equal(numpy(fresh.caption_decoder.parallel_choice(64)),
                                  numpy(model.caption_decoder.parallel_choice(64)))


def test_cap_without_mask_token_and_bad_probability_are_refused():
    keras.utils.set_random_seed(0)
    backbone = CapPaBackbone(**TINY, masked_pred=False)
    with pytest.raises(ValueError, match="MASK"):
        CapPaCaptioner(backbone)
    CapPaCaptioner(backbone, masked_pred_prob=0.0)
    with pytest.raises(ValueError, match="masked_pred_prob"):
        CapPaCaptioner(backbone, masked_pred_prob=1.5)


@pytest.fixture
def preprocessor(t5_proto):
    return CapPaPreprocessor(
        SigLIPTokenizer(t5_proto), SigLIPImageConverter(image_size=(32, 32)), sequence_length=8
    )


def test_preprocessor_packs_captions_with_sticky_eos_and_zero_padding(preprocessor):
    assert preprocessor.tokenizer.pad_token_id == EOS  # SigLIP 1 pads with EOS; CapPa pads with 0
    raw = np.random.default_rng(0).integers(0, 256, (2, 40, 48, 3)).astype("uint8")
    captions = ["a photo of a red circle", "a small green triangle in the top left of it"]
    x, y = preprocessor({"images": raw, "texts": captions})
    ids = numpy(x["token_ids"])
    assert numpy(x["images"]).shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(numpy(y), ids)
    expected = numpy(preprocessor.tokenizer(captions[0]))
    np.testing.assert_array_equal(ids[0], [*expected, EOS, 0])
    assert ids[1, -1] == EOS and np.all(ids[1, :-1] > 1)  # truncated, EOS kept
    assert preprocessor.detokenize(ids) == ["a photo of a red circle", "a small green triangle in the top"]


def test_fit_lowers_the_loss(preprocessor):
    captions = ["a photo of a red circle", "two blue squares at the bottom"] * 4
    rng = np.random.default_rng(0)
    raw = np.stack([np.full((32, 32, 3), 40 + 160 * (i % 2)) for i in range(8)]).astype("uint8")
    raw = (raw + rng.integers(0, 20, raw.shape)).astype("uint8")
    keras.utils.set_random_seed(0)
    vocab = preprocessor.tokenizer.vocabulary_size()
    backbone = CapPaBackbone(**{**TINY, "vocabulary_size": vocab, "max_length": 8})
    model = CapPaCaptioner(backbone, masked_pred_prob=0.75, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y = preprocessor({"images": raw, "texts": captions})
    x, y = {k: numpy(v) for k, v in x.items()}, numpy(y)
    before = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    history = model.fit(x, y, batch_size=4, epochs=40, verbose=0).history
    after = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert np.isfinite(history["loss"]).all()
    assert after["loss"] < 0.5 * before["loss"], (before, after)
    assert after["token_accuracy"] > before["token_accuracy"]
    generated = model.generate(x["images"][:2], max_length=8)
    assert preprocessor.detokenize(generated) == captions[:2]


# === Decoding ===


@pytest.fixture(scope="module")
def decoder_model():
    # The EOS bias makes some rows stop early and others run on.
    return tiny_captioner(seed=1, eos_bias=0.0)


def test_greedy_with_cache_equals_recomputing_the_prefix(decoder_model):
    x = images(6)
    generated = decoder_model.generate(x, max_length=10)
    reference = reference_greedy(decoder_model, x, 10)
    np.testing.assert_array_equal(generated, pad_after_eos(reference))
    lengths = (generated != 0).sum(1)
    assert lengths.max() >= 8 and (generated == EOS).any(), generated  # long rows and stopped rows
    assert np.all(generated[(generated == EOS).cumsum(1) - (generated == EOS) > 0] == 0)


def caption_log_probs(model, encoded, ids):
    """`(N,)` log-probability of each caption `ids[n]` given encoder tokens
    `encoded[n]`, with numpy from teacher-forced logits: summed up to and
    including the first EOS; a finished row's padding costs nothing (as in
    decoding)."""
    logits = numpy(model.decoder(ids, encoded)).astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    chosen = np.take_along_axis(log_probs, ids[..., None].astype(np.int64), axis=-1)[..., 0]
    finished = np.cumsum(ids == EOS, axis=1) - (ids == EOS) > 0
    return np.where(finished, 0.0, chosen).sum(1)


def exhaustive_best(model, x, vocabulary, length):
    """The most likely caption of each image by enumeration: every sequence of
    `length` tokens that pads (0) after its first EOS and nowhere before it.
    Returns `(B, length)` ids and their `(B,)` log-probabilities."""
    candidates = []
    for ids in itertools.product(range(vocabulary), repeat=length):
        ids = np.array(ids, "int32")
        finished = np.cumsum(ids == EOS) - (ids == EOS) > 0
        if np.all((ids == 0) == finished):
            candidates.append(ids)
    candidates = np.array(candidates)
    encoded = numpy(model.backbone.encode_images(x))
    scores = np.stack([caption_log_probs(model, np.repeat(image[None], len(candidates), 0), candidates)
                       for image in encoded])  # (B, C)
    return candidates[np.argmax(scores, axis=1)], scores.max(1)


def test_beam_search_with_every_prefix_kept_is_exhaustive_search():
    """On a 5-token vocabulary and 3 generated tokens, beam search with 25 beams
    (every 2-token prefix) must return the most likely caption found by
    enumerating all of them; 2 beams may return a worse one, never a better one.
    The pad id's logit is pushed down so that no caption pads before EOS."""
    vocabulary, length = 5, 3
    model = tiny_captioner(seed=7, eos_bias=0.5, vocabulary_size=vocabulary)
    bias = numpy(model.decoder.logits_dense.bias)
    bias[0] = -30.0
    model.decoder.logits_dense.bias.assign(bias)
    x = images(6, seed=2)
    best, best_scores = exhaustive_best(model, x, vocabulary, length)
    beam = model.generate(x, strategy="beam", num_beams=vocabulary ** (length - 1), max_length=length)
    np.testing.assert_array_equal(beam, best)
    np.testing.assert_allclose(caption_log_probs(model, numpy(model.backbone.encode_images(x)), beam), best_scores,
                               atol=1e-9)
    narrow = model.generate(x, strategy="beam", num_beams=2, max_length=length)
    encoded = numpy(model.backbone.encode_images(x))
    narrow_scores = caption_log_probs(model, encoded, narrow)
    assert np.all(narrow_scores <= best_scores + 1e-6)
    greedy = model.generate(x, max_length=length)
    greedy_scores = caption_log_probs(model, encoded, greedy)
    # Here greedy misses the best caption of every image (by 0.9-1.4 nats), 2 beams of two.
    assert np.all(greedy_scores < best_scores - 0.5), (greedy_scores, best_scores)
    assert np.any(narrow_scores < best_scores - 0.5), (narrow_scores, best_scores)


def test_batched_equals_one_by_one(decoder_model):
    x = images(3)
    for strategy in ("greedy", "beam"):
        batched = decoder_model.generate(x, strategy=strategy, num_beams=3)
        single = np.concatenate(
            [decoder_model.generate(x[i : i + 1], strategy=strategy, num_beams=3) for i in range(3)]
        )
        np.testing.assert_array_equal(batched, single)


def test_beam_search(decoder_model):
    x = images(6)
    greedy = decoder_model.generate(x)
    np.testing.assert_array_equal(decoder_model.generate(x, strategy="beam", num_beams=1), greedy)
    beam = decoder_model.generate(x, strategy="beam", num_beams=4)
    greedy_score = decoder_model.score(x, token_ids=greedy)
    beam_score = decoder_model.score(x, token_ids=beam)
    assert np.all(beam_score >= greedy_score - 1e-4), (beam_score, greedy_score)
    assert np.any(beam_score > greedy_score + 1e-3)  # beam search finds better captions here
    assert np.all(beam[(beam == EOS).cumsum(1) - (beam == EOS) > 0] == 0)


def ranks(model, x, token_ids):
    """The rank (0: most likely) of each generated token among the logits at its
    position given the tokens before it (teacher-forced), up to the row's first EOS."""
    logits = numpy(model.decoder(token_ids, model.backbone.encode_images(x)))
    chosen = np.take_along_axis(logits, token_ids[..., None], axis=-1)
    rank = (logits > chosen).sum(-1)
    generated = (np.cumsum(token_ids == EOS, axis=1) - (token_ids == EOS)) == 0
    return rank[generated]


def test_sampling_is_reproducible_with_a_seed(decoder_model):
    """Same seed, same captions; and `top_k` reaches the sampler: with top_k=5 every
    sampled token is among the 5 most likely at its position, without it (at
    temperature 2, 20 tokens) some are not."""
    x = images(3)
    for top_k in (None, 5):
        first = decoder_model.generate(x, strategy="sampling", seed=7, top_k=top_k, temperature=2.0)
        again = decoder_model.generate(x, strategy="sampling", seed=7, top_k=top_k, temperature=2.0)
        other = decoder_model.generate(x, strategy="sampling", seed=8, top_k=top_k, temperature=2.0)
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)
        sampled = np.concatenate([ranks(decoder_model, x, ids) for ids in (first, other)])
        if top_k:
            assert sampled.max() < top_k, sampled
        else:
            assert sampled.max() >= 5, sampled
    # `top_p` reaches the sampler: a nucleus this small is the most likely token alone.
    nucleus = decoder_model.generate(x, strategy="sampling", seed=7, top_p=1e-6, temperature=2.0)
    np.testing.assert_array_equal(nucleus, decoder_model.generate(x, strategy="greedy"))


def test_eos_stops_every_row():
    model = tiny_captioner(seed=3, eos_bias=50.0)
    for strategy in ("greedy", "beam", "sampling"):
        out = model.generate(images(2), strategy=strategy, seed=0)
        np.testing.assert_array_equal(out, [[EOS] + [0] * 9] * 2)


def test_parallel_decode_is_argmax_of_all_mask_inputs(decoder_model):
    x = images(4)
    encoded = decoder_model.backbone.encode_images(x)
    logits = numpy(decoder_model.decoder(np.zeros((4, 10), "int32"), encoded, parallel=True))
    np.testing.assert_array_equal(
        decoder_model.parallel_decode(x), pad_after_eos(logits.argmax(-1).astype("int32"))
    )


# === Scoring ===


def test_score_is_the_teacher_forced_log_likelihood(decoder_model, rng):
    x = images(3)
    token_ids = rng.integers(2, VOCAB, (3, 10)).astype("int32")
    token_ids[:, 6] = EOS
    token_ids[:, 7:] = 0
    token_ids[2, 3:] = 0
    logits = numpy(decoder_model({"images": x, "token_ids": token_ids}))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, token_ids[..., None], -1)[..., 0]
    expected = (picked * (token_ids != 0)).sum(1)
    np.testing.assert_allclose(decoder_model.score(x, token_ids=token_ids), expected, rtol=1e-5)


def test_scoring_classifier(preprocessor):
    vocab = preprocessor.tokenizer.vocabulary_size()
    model = tiny_captioner(seed=2, preprocessor=preprocessor, vocabulary_size=vocab, max_length=8)
    raw = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype("uint8")
    names = ["red circle", "blue squares", "green triangle"]
    scores = model.class_log_likelihoods(raw, names, prompt="a photo of a ", batch_size=2)
    assert scores.shape == (3, 3)
    for k, name in enumerate(names):
        pair = model.score(raw, texts=["a photo of a " + name] * 3)
        np.testing.assert_allclose(scores[:, k], pair, rtol=1e-5)
    np.testing.assert_array_equal(
        model.zero_shot_classify(raw, names, prompt="a photo of a "), scores.argmax(1)
    )
    plain = model.class_log_likelihoods(raw, names)
    assert not np.allclose(plain, scores)


def test_fit_and_evaluate_on_raw_images_and_texts(preprocessor):
    """The task preprocesses raw data itself (keras-hub maps it over tf.data)."""
    keras.utils.set_random_seed(0)
    backbone = CapPaBackbone(**{**TINY, "vocabulary_size": preprocessor.tokenizer.vocabulary_size(), "max_length": 8})
    model = CapPaCaptioner(backbone, preprocessor, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    data = {
        "images": np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3)).astype("uint8"),
        "texts": ["a photo of a red circle", "two blue squares at the bottom"] * 4,
    }
    before = model.evaluate(data, batch_size=8, verbose=0, return_dict=True)["loss"]
    model.fit(data, batch_size=4, epochs=3, verbose=0)
    assert model.evaluate(data, batch_size=8, verbose=0, return_dict=True)["loss"] < before


# === NaFlex encoder ===


def test_naflex_captioner_matches_fixed_resolution_and_ignores_padding():
    """The same weights on NaFlex inputs: an image already at its NaFlex size
    gives the fixed-resolution logits, captions do not depend on how many
    padding patches follow (the decoder never attends to them), and cached
    generation equals recomputation."""
    from keras_siglip.layers import NaFlexImageConverter

    fixed = tiny_captioner(seed=2, eos_bias=0.0)
    backbone = CapPaBackbone(**{**TINY, "input_format": "naflex"})
    backbone.set_weights(fixed.backbone.get_weights())
    naflex = CapPaCaptioner(backbone, masked_pred_prob=0.0)
    x = images(3, seed=4)
    tokens = np.random.default_rng(0).integers(2, VOCAB, (3, 6)).astype("int32")
    converter = NaFlexImageConverter(patch_size=8, max_num_patches=16)
    exact = {k: numpy(v) for k, v in converter(((x + 1) * 127.5).round().astype("uint8")).items()}  # no resize
    # The same 16 real patches followed by 12 padding patches (garbage content).
    junk = {"patches": np.random.default_rng(1).normal(size=(3, 12, 192)), "patch_coords": np.zeros((3, 12, 2)),
            "patch_mask": np.zeros((3, 12))}
    padded = {k: np.concatenate([v, junk[k].astype(v.dtype)], axis=1) for k, v in exact.items()}
    reference = numpy(fixed.backbone({"images": exact["patches"].reshape(3, 4, 4, 8, 8, 3)
                                      .transpose(0, 1, 3, 2, 4, 5).reshape(3, 32, 32, 3),
                                      "token_ids": tokens}))
    for inputs in (exact, padded):
        logits = numpy(naflex.backbone({**inputs, "token_ids": tokens}))
        np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5)
    generated = naflex.generate(padded, max_length=8)
    np.testing.assert_array_equal(generated, naflex.generate(exact, max_length=8))
    encoded = naflex.backbone.encode_images(padded)
    mask = naflex.backbone.encoder_mask(padded)
    targets = np.zeros((3, 8), "int32")
    for t in range(8):
        targets[:, t] = numpy(naflex.decoder(targets, encoded, encoder_mask=mask))[:, t].argmax(-1)
    np.testing.assert_array_equal(generated, pad_after_eos(targets))


def test_beam_length_normalisation(decoder_model):
    """GNMT length normalisation re-ranks the finished beams: the chosen
    caption has the best normalised score, which plain ranking may miss."""
    x = images(6)
    plain = decoder_model.generate(x, strategy="beam", num_beams=4)
    normalised = decoder_model.generate(x, strategy="beam", num_beams=4, length_penalty=2.0)
    np.testing.assert_array_equal(decoder_model.generate(x, strategy="beam", num_beams=4, length_penalty=0.0), plain)

    def gnmt(ids):
        lengths = (ids != 0).sum(1)
        return decoder_model.score(x, token_ids=ids) / ((5.0 + lengths) / 6.0) ** 2.0

    assert np.all(gnmt(normalised) >= gnmt(plain) - 1e-4)
    assert np.all(decoder_model.score(x, token_ids=plain) >= decoder_model.score(x, token_ids=normalised) - 1e-4)
    assert (normalised != 0).sum() > (plain != 0).sum()  # longer captions win here
