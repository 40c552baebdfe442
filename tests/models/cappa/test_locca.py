"""LocCa tasks on one captioner: serialisation, masked loss, prompted decoding, grounding."""

import io

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_siglip.data.shapes import ShapesDataset, with_article
from keras_siglip.layers.boxes import NUM_LOC_TOKENS, box_iou, ids_to_boxes
from keras_siglip.losses import CaptioningLoss
from keras_siglip.models import (
    CapPaBackbone,
    LocCaCaptioner,
    LocCaPreprocessor,
    SigLIPImageConverter,
    SigLIPTokenizer,
)
from keras_siglip.models.cappa.locca_preprocessor import AREF, CAP, GCAP, task_ids
from tests.helpers import numpy

EOS = 1
LENGTH = 16
SHAPES = ShapesDataset(48, seed=3, image_size=32)


@pytest.fixture(scope="module")
def tokenizer():
    import sentencepiece

    sentences = [SHAPES[i]["caption"] for i in range(len(SHAPES))] + ["cap aref gcap"] * 3
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=80, model_type="word",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    return SigLIPTokenizer(model.getvalue())


@pytest.fixture(scope="module")
def preprocessor(tokenizer):
    return LocCaPreprocessor(tokenizer, SigLIPImageConverter(image_size=(32, 32)), sequence_length=LENGTH)


def tiny_locca(preprocessor, seed=0, randomize=False, masked_pred_prob=0.5):
    keras.utils.set_random_seed(seed)
    backbone = CapPaBackbone(
        vocabulary_size=preprocessor.vocabulary_size, patch_size=8, width=32, depth=2, num_heads=2,
        mlp_dim=64, image_size=32, max_length=LENGTH, decoder_depth=2,
    )
    if randomize:
        rng = np.random.default_rng(seed)
        for weight in backbone.weights:
            scale = 1.0 if "embedding" in weight.path else 0.3
            weight.assign((scale * rng.normal(size=tuple(weight.shape))).astype("float32"))
    return LocCaCaptioner(backbone, preprocessor, masked_pred_prob=masked_pred_prob, seed=seed)


def examples(count=4, start=0):
    """Single-shape examples: image, caption, object text and its box."""
    picked = [SHAPES[i] for i in range(len(SHAPES)) if len(SHAPES[i]["boxes"]) == 1][start : start + count]
    assert len(picked) == count
    return (
        np.stack([e["image"] for e in picked]),
        [e["caption"] for e in picked],
        [with_article(f"{e['attributes'].color} {e['attributes'].shape}") for e in picked],
        np.stack([e["boxes"][0] for e in picked]).astype("float32"),
    )


# === Serialisation ===


def test_serialisation_layout_for_each_task(preprocessor, tokenizer):
    _, captions, texts, boxes = examples(3)
    offset = tokenizer.vocabulary_size()
    assert preprocessor.loc_offset == offset and preprocessor.vocabulary_size == offset + NUM_LOC_TOKENS
    prompt = {t: list(numpy(tokenizer(p))) for t, p in (("cap", "Cap:"), ("aref", "ARef:"), ("gcap", "GCap:"))}
    assert all(len(p) == 1 and p[0] > 2 for p in prompt.values())  # real words, not <unk>
    assert len(set(map(tuple, prompt.values()))) == 3
    assert preprocessor.constant_ids(":").size == 0  # SigLIP normalisation drops ":"
    words = [list(numpy(tokenizer(t))) for t in texts]
    locs = np.round(boxes * 1023).astype(int) + offset

    tasks = np.array([CAP, AREF, GCAP], "int32")
    x, y = preprocessor({"texts": [captions[0], texts[1], texts[2]], "boxes": boxes, "tasks": tasks})
    ids, y = numpy(x["token_ids"]), numpy(y)
    np.testing.assert_array_equal(numpy(x["tasks"]), tasks)
    cap = prompt["cap"] + list(numpy(tokenizer(captions[0]))) + [EOS]
    aref = prompt["aref"] + words[1] + list(locs[1]) + [EOS]
    gcap = prompt["gcap"] + list(locs[2]) + words[2] + [EOS]
    scored = [(1, len(cap)), (1 + len(words[1]), len(aref)), (5, len(gcap))]  # [first, end) of the target
    for row, (expected, (first, end)) in enumerate(zip((cap, aref, gcap), scored)):
        np.testing.assert_array_equal(ids[row], expected + [0] * (LENGTH - len(expected)))
        mask = np.zeros(LENGTH, bool)
        mask[first:end] = True
        np.testing.assert_array_equal(y[row], np.where(mask, ids[row], 0))
    # Box tokens: exact bins, decoded within half a quantisation step.
    decoded, valid = ids_to_boxes(ids[1, 1 + len(words[1]) : 5 + len(words[1])], offset=offset)
    assert valid and np.abs(decoded - boxes[1]).max() <= 0.5 / 1023 + 1e-7
    np.testing.assert_allclose(ids_to_boxes(ids[2, 1:5], offset)[0], boxes[2], atol=0.5 / 1023 + 1e-7)

    # The same in a tf.data pipeline (task names work too), and the LocCa
    # paper's loss on the condition as an option.
    data = tf.data.Dataset.from_tensor_slices(
        {"texts": [captions[0], texts[1], texts[2]], "boxes": boxes, "tasks": task_ids(["cap", "aref", "gcap"])}
    ).batch(3).map(preprocessor)
    (x_tf, y_tf), = list(data.as_numpy_iterator())
    np.testing.assert_array_equal(x_tf["token_ids"], ids)
    np.testing.assert_array_equal(y_tf, y)
    full = LocCaPreprocessor(tokenizer, sequence_length=LENGTH, score_condition=True)
    _, y_full = full({"texts": [captions[0], texts[1], texts[2]], "boxes": boxes, "tasks": tasks})
    y_full = numpy(y_full)
    np.testing.assert_array_equal(y_full[0], y[0])
    np.testing.assert_array_equal(y_full[1], np.where(np.arange(LENGTH) >= 1, ids[1], 0))
    np.testing.assert_array_equal(y_full[2], np.where(np.arange(LENGTH) >= 1, ids[2], 0))


def test_long_text_is_truncated_and_box_kept(preprocessor):
    long = " ".join(["red circle"] * 20)
    box = np.array([[0.1, 0.2, 0.7, 0.9]], "float32")
    for task in ("cap", "aref", "gcap"):
        x, y = preprocessor({"texts": [long], "boxes": box, "tasks": task})
        ids = numpy(x["token_ids"])[0]
        assert ids[-1] == EOS and np.all(ids > 0), (task, ids)
        locs = ids[ids >= preprocessor.loc_offset]
        assert len(locs) == (0 if task == "cap" else 4)


def test_prompts_are_the_prefixes(preprocessor):
    _, _, texts, boxes = examples(2)
    x, y = preprocessor({"texts": texts, "boxes": boxes, "tasks": "aref"})
    ids, y = numpy(x["token_ids"]), numpy(y)
    prompts = preprocessor.prompt_ids("aref", texts=texts)
    assert prompts.shape == (2, LENGTH - 5)
    for row in range(2):
        n = np.flatnonzero(y[row])[0]
        np.testing.assert_array_equal(prompts[row, :n], ids[row, :n])
        assert np.all(prompts[row, n:] == 0)
    gcap = preprocessor.prompt_ids("gcap", boxes=boxes)
    assert gcap.shape == (2, 5) and np.all(gcap[:, 1:] >= preprocessor.loc_offset)
    assert preprocessor.prompt_ids("cap", batch_size=3).shape == (3, 1)


# === Loss ===


def test_loss_ignores_the_prefix(preprocessor):
    images, captions, texts, boxes = examples(3)
    model = tiny_locca(preprocessor)
    model.compile()
    x, y = preprocessor({"images": images, "texts": [captions[0], texts[1], texts[2]], "boxes": boxes,
                         "tasks": np.array([CAP, AREF, GCAP], "int32")})
    ids, y = numpy(x["token_ids"]), numpy(y)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, LENGTH, preprocessor.vocabulary_size)).astype("float32")
    prefix = (y == 0) & (np.cumsum(y != 0, axis=1) == 0)  # before the first scored token
    assert prefix.sum(1).tolist() == [1, 1 + len(numpy(preprocessor.tokenizer(texts[1]))), 5]
    changed = logits + 10 * rng.normal(size=logits.shape).astype("float32") * prefix[..., None]
    loss = lambda z: float(numpy(CaptioningLoss()(y, z)))
    assert loss(changed) == pytest.approx(loss(logits), rel=1e-6)
    target = logits + 10 * rng.normal(size=logits.shape).astype("float32") * (y != 0)[..., None]
    assert abs(loss(target) - loss(logits)) > 1e-2
    # A (B, L) sample_weight is the same token mask.
    masked = model.compute_loss(x, ids, changed, sample_weight=(y != 0).astype("float32"))
    assert float(numpy(masked)) == pytest.approx(loss(logits), rel=1e-5)


def test_only_caption_examples_use_parallel_prediction(preprocessor, rng):
    model = tiny_locca(preprocessor, masked_pred_prob=1.0)
    seen = []
    prepare = model.decoder.prepare_inputs

    def recording(token_ids, parallel=None, mask_positions=None):
        seen.append(numpy(parallel))
        return prepare(token_ids, parallel, mask_positions)

    model.decoder.prepare_inputs = recording
    tasks = np.array([CAP, AREF, GCAP, CAP], "int32")
    ids = rng.integers(2, 50, (4, LENGTH)).astype("int32")
    model({"images": examples(4)[0].astype("float32") / 127.5 - 1, "token_ids": ids, "tasks": tasks},
          training=True)
    np.testing.assert_array_equal(seen[0], tasks == CAP)


# === Decoding ===


def reference_greedy(model, images, prompts, length, processor=None):
    """Greedy decoding without a cache: prompt and tokens so far recomputed each step."""
    encoded = model.backbone.encode_images(images)
    rows = []
    for b in range(len(images)):
        sequence = list(prompts[b][prompts[b] != 0])
        start = len(sequence)
        for _ in range(length):
            # Fixed shapes (the causal mask hides the zeros after the prefix), so
            # JAX compiles each op once, not once per prefix length.
            buffer = np.zeros((1, LENGTH), "int32")
            buffer[0, : len(sequence)] = sequence
            logits = numpy(model.decoder(buffer, encoded[b : b + 1]))[0, len(sequence)]
            if processor is not None:
                index, step = len(sequence) + 1, len(sequence) - start
                padded = np.zeros((1, LENGTH + 1), "int32")
                padded[0, 1 : len(sequence) + 1] = sequence
                logits = numpy(processor(ops.convert_to_tensor(logits[None]), ops.convert_to_tensor(padded),
                                         index, ops.convert_to_tensor(np.array([step], "int32"))))[0]
            sequence.append(int(logits.argmax()))
        generated = np.array(sequence[start:])
        hits = np.flatnonzero(generated == EOS)
        if hits.size:
            generated[hits[0] + 1 :] = 0
        rows.append(generated)
    return np.stack(rows)


def test_prompted_cached_generation_equals_recomputing(preprocessor):
    model = tiny_locca(preprocessor, seed=1, randomize=True)
    raw = examples(3)[0]  # the task converts raw images with its preprocessor
    images = numpy(preprocessor.convert_images(raw))
    rng = np.random.default_rng(0)
    prompts = np.zeros((3, 6), "int32")
    for row, n in enumerate((6, 2, 4)):  # prompts of different lengths in one batch
        prompts[row, :n] = rng.integers(2, preprocessor.vocabulary_size, n)
    generated = model.generate(raw, max_length=8, prompt_ids=prompts, detokenize=False)
    np.testing.assert_array_equal(generated, reference_greedy(model, images, prompts, 8))
    # Batched rows equal single rows (the shared prefill does not leak).
    single = model.generate(raw[1:2], max_length=8, prompt_ids=prompts[1:2, :2], detokenize=False)
    np.testing.assert_array_equal(single, generated[1:2])
    # Beam search with one beam is greedy, prompts included.
    beam = model.generate(raw, max_length=8, prompt_ids=prompts, strategy="beam", num_beams=1, detokenize=False)
    np.testing.assert_array_equal(beam, generated)


def test_constrained_grounding_always_gives_a_valid_box(preprocessor):
    model = tiny_locca(preprocessor, seed=2, randomize=True)
    images, _, texts, boxes = examples(4)
    bias = numpy(model.decoder.logits_dense.bias)
    bias[preprocessor.loc_offset :] -= 20.0  # the unconstrained model prefers text ids
    model.decoder.logits_dense.bias.assign(bias)
    free, free_valid = model.ground(images, texts, constrained=False)
    assert not free_valid.any() and np.all(free == 0)  # malformed -> no box
    predicted, valid = model.ground(images, texts)
    assert valid.all() and np.all(predicted[:, 2:] >= predicted[:, :2])
    prompts = preprocessor.prompt_ids("aref", texts=texts)
    encoded_images = preprocessor.convert_images(images)
    from keras_siglip.models.cappa.locca import box_processor

    expected = reference_greedy(model, numpy(encoded_images), prompts, 4, box_processor(preprocessor.loc_offset))
    np.testing.assert_allclose(predicted, ids_to_boxes(expected, preprocessor.loc_offset)[0])
    metrics = model.evaluate_grounding(images, texts, boxes)
    assert metrics["invalid"] == 0.0 and 0.0 <= metrics["mean_iou"] <= 1.0
    assert model.evaluate_grounding(images, texts, boxes, constrained=False)["invalid"] == 1.0
    captions = model.refer(images, boxes, max_length=5)
    assert len(captions) == 4 and all(isinstance(c, str) and "<loc" not in c for c in captions)


def test_training_learns_to_ground(preprocessor):
    """32 full-batch ARef steps on 24 single-shape images (measured on JAX:
    mean IoU 0 before, about 0.3-0.9 after; the mean training box scores 0.08)."""
    images, _, texts, boxes = examples(24)
    model = tiny_locca(preprocessor)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = model.evaluate_grounding(images, texts, boxes)
    data = {"images": images, "texts": texts, "boxes": boxes, "tasks": np.full(24, AREF, "int32")}
    history = model.fit(data, batch_size=24, epochs=32, verbose=0).history
    after = model.evaluate_grounding(images, texts, boxes)
    mean_box = np.broadcast_to(boxes.mean(0), boxes.shape)
    chance = float(np.mean(np.diagonal(box_iou(mean_box, boxes))))
    print("grounding before", before, "after", after, "mean-box IoU", chance, "loss", history["loss"][::8])
    assert np.isfinite(history["loss"]).all() and history["loss"][-1] < 0.5 * history["loss"][0]
    assert after["invalid"] == 0.0
    assert after["mean_iou"] > max(before["mean_iou"], chance) + 0.1, (before, after, chance)


def test_save_and_load_preset_keeps_tasks_and_locations(preprocessor, tmp_path):
    model = tiny_locca(preprocessor, seed=4, randomize=True)
    images, captions, texts, boxes = examples(3)
    model.save_to_preset(tmp_path / "locca")
    restored = LocCaCaptioner.from_preset(str(tmp_path / "locca"))
    assert isinstance(restored.preprocessor, LocCaPreprocessor)
    assert restored.loc_offset == model.loc_offset == preprocessor.loc_offset
    assert restored.masked_pred_prob == 0.5
    np.testing.assert_array_equal(restored.ground(images, texts)[0], model.ground(images, texts)[0])
    assert restored.refer(images, boxes, max_length=4) == model.refer(images, boxes, max_length=4)


def test_locca_examples_expand_each_image_into_three_tasks(preprocessor):
    from keras_siglip.models.cappa import locca_examples

    images, captions, texts, boxes = examples(2)
    data = locca_examples(images, captions, texts, boxes)
    np.testing.assert_array_equal(data["tasks"], [CAP, AREF, GCAP] * 2)
    assert list(data["texts"]) == [captions[0], texts[0], texts[0], captions[1], texts[1], texts[1]]
    np.testing.assert_array_equal(data["images"][3:], np.repeat(images[1:], 3, 0))
    np.testing.assert_array_equal(data["boxes"][::3], boxes)
    x, y = preprocessor(data)
    assert numpy(x["token_ids"]).shape == (6, LENGTH)
    with pytest.raises(ValueError, match="2 images, 1 captions"):
        locca_examples(images, captions[:1], texts, boxes)


def test_coarser_location_grid(tokenizer):
    coarse = LocCaPreprocessor(tokenizer, SigLIPImageConverter(image_size=(32, 32)), sequence_length=LENGTH,
                               num_loc_tokens=64)
    offset = tokenizer.vocabulary_size()
    assert coarse.vocabulary_size == offset + 64
    _, _, texts, boxes = examples(4)
    x, _ = coarse({"texts": texts, "boxes": boxes, "tasks": "gcap"})
    ids = numpy(x["token_ids"])[:, 1:5]
    np.testing.assert_array_equal(ids, np.round(boxes * 63).astype(int) + offset)
    decoded, valid = ids_to_boxes(ids, offset=offset, num_bins=64)
    assert valid.all() and np.abs(decoded - boxes).max() <= 0.5 / 63 + 1e-6
    backbone = CapPaBackbone(vocabulary_size=coarse.vocabulary_size, patch_size=8, width=16, depth=1,
                             num_heads=2, mlp_dim=32, image_size=32, max_length=LENGTH, decoder_depth=1)
    model = LocCaCaptioner(backbone, coarse)
    assert model.num_loc_tokens == 64 and model.loc_offset == offset
    predicted, valid = model.ground(examples(2)[0], texts[:2])
    assert valid.all() and np.all(predicted <= 1.0)
    with pytest.raises(ValueError, match="num_loc_tokens"):
        LocCaCaptioner(backbone, coarse, num_loc_tokens=32, loc_offset=offset)
