"""Location tokens: PaliGemma's quantisation, text and id forms, malformed output, IoU."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.layers import (
    PALIGEMMA_LOC_OFFSET,
    box_iou,
    boxes_to_ids,
    boxes_to_text,
    decode_boxes,
    encode_box,
    grounding_metrics,
    ids_to_boxes,
)

STEP = 1.0 / 1023


def random_boxes(rng, shape):
    """`shape + (4,)` valid normalised boxes, with exact 0 and 1 mixed in."""
    y = np.sort(rng.uniform(0, 1, shape + (2,)), axis=-1)
    x = np.sort(rng.uniform(0, 1, shape + (2,)), axis=-1)
    boxes = np.stack([y[..., 0], x[..., 0], y[..., 1], x[..., 1]], -1)
    edges = rng.uniform(size=boxes.shape) < 0.1
    lows = np.array([True, True, False, False])
    return np.where(edges, np.where(lows, 0.0, 1.0), boxes)


def test_quantisation_matches_big_vision():
    # big_vision: tf.cast(tf.round(bbox * 1023), tf.int32) then clip to [0, 1023].
    boxes = np.array([0.0, 1.0, -0.3, 1.7], np.float32)
    np.testing.assert_array_equal(boxes_to_ids(boxes), [0, 1023, 0, 1023])
    # round half to even, as tf.round: 0.5 / 1023 * 1023 lands on 0.5 -> 0; 1.5 -> 2.
    v = np.float32(np.float32(1.5) / np.float32(1023))
    assert np.float32(v * np.float32(1023)) == 1.5
    assert boxes_to_ids([v, 0, v, 0])[0] == 2
    np.testing.assert_array_equal(boxes_to_ids([0.1, 0.2, 0.3, 0.4], offset=PALIGEMMA_LOC_OFFSET),
                                  [256102, 256205, 256307, 256409])


def test_quantisation_matches_tf_round():
    tf = pytest.importorskip("tensorflow")
    boxes = np.random.default_rng(1).uniform(-0.1, 1.1, (1000, 4)).astype(np.float32)
    expected = tf.clip_by_value(tf.cast(tf.round(boxes * 1023), tf.int32), 0, 1023).numpy()
    np.testing.assert_array_equal(boxes_to_ids(boxes), expected)


def test_encode_box_strings():
    assert encode_box([0.1202, 0.4457, 0.7713, 0.9775]) == "<loc0123><loc0456><loc0789><loc1000>"
    assert encode_box([0, 0, 1, 1]) == "<loc0000><loc0000><loc1023><loc1023>"
    batch = encode_box(np.zeros((2, 3, 4)))
    assert batch.shape == (2, 3) and batch[1, 2] == "<loc0000>" * 4
    assert encode_box(np.zeros((0, 4))).shape == (0,)
    with pytest.raises(ValueError):
        encode_box([np.nan, 0, 1, 1])


def test_boxes_to_text_paligemma_format():
    boxes = np.array([[0.1202, 0.4457, 0.7713, 0.9775], [0, 0, 0.5, 0.5]])
    assert boxes_to_text(boxes, ["cat", "dog"]) == (
        "<loc0123><loc0456><loc0789><loc1000> cat ; <loc0000><loc0000><loc0512><loc0512> dog")
    assert boxes_to_text(boxes[:1], "cat") == "<loc0123><loc0456><loc0789><loc1000> cat"
    assert boxes_to_text(boxes[:1]) == "<loc0123><loc0456><loc0789><loc1000>"
    assert boxes_to_text(np.zeros((0, 4)), []) == ""
    with pytest.raises(ValueError):
        boxes_to_text(boxes, ["cat"])


def test_text_round_trip_within_half_a_step():
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, (2000,))
    labels = [f"thing {i}" for i in range(len(boxes))]
    decoded = decode_boxes(boxes_to_text(boxes, labels))
    assert [label for _, label in decoded] == labels
    out = np.stack([box for box, _ in decoded])
    assert out.dtype == np.float32
    np.testing.assert_array_less(np.abs(out - boxes), 0.5 * STEP + 1e-6)
    edges = (boxes == 0) | (boxes == 1)
    assert edges.any()
    np.testing.assert_array_equal(out[edges], boxes[edges])  # 0 and 1 come back exactly


def test_id_round_trip_batched():
    rng = np.random.default_rng(2)
    boxes = random_boxes(rng, (3, 5, 7))
    ids = boxes_to_ids(boxes, offset=PALIGEMMA_LOC_OFFSET)
    assert ids.shape == (3, 5, 7, 4) and ids.dtype == np.int32
    out, valid = ids_to_boxes(ids, offset=PALIGEMMA_LOC_OFFSET)
    assert valid.shape == (3, 5, 7) and valid.all()
    np.testing.assert_array_less(np.abs(out - boxes), 0.5 * STEP + 1e-6)


def test_ids_to_boxes_invalid():
    o = PALIGEMMA_LOC_OFFSET
    ids = np.array([
        [o, o, o + 1023, o + 1023],  # whole image
        [o + 5, o, o + 5, o + 9],  # zero height: valid, zero area
        [o + 9, o, o + 5, o + 9],  # y2 < y1
        [o, o + 9, o + 9, o + 5],  # x2 < x1
        [o - 1, o, o + 5, o + 5],  # below the loc range (an ordinary word)
        [o, o, o + 1024, o + 5],  # above it (a <seg> token)
    ])
    boxes, valid = ids_to_boxes(ids, offset=o)
    np.testing.assert_array_equal(valid, [True, True, False, False, False, False])
    np.testing.assert_array_equal(boxes[0], [0, 0, 1, 1])
    np.testing.assert_array_equal(boxes[2:], 0)


def test_ids_backend_tensors():
    boxes = random_boxes(np.random.default_rng(3), (4, 6))
    ids = boxes_to_ids(ops.convert_to_tensor(boxes.astype(np.float32)), offset=7)
    assert not isinstance(ids, np.ndarray)
    np.testing.assert_array_equal(ops.convert_to_numpy(ids), boxes_to_ids(boxes, offset=7))
    out, valid = ids_to_boxes(ids, offset=7)
    expected, expected_valid = ids_to_boxes(boxes_to_ids(boxes, offset=7), offset=7)
    np.testing.assert_allclose(ops.convert_to_numpy(out), expected, atol=1e-7)
    np.testing.assert_array_equal(ops.convert_to_numpy(valid), expected_valid)


def test_ids_to_boxes_compiles():
    """No data-dependent shapes: works inside the backend's compiled function."""
    ids = boxes_to_ids(random_boxes(np.random.default_rng(4), (8,)), offset=100)

    class Decode(keras.layers.Layer):
        def call(self, x):
            boxes, valid = ids_to_boxes(x, offset=100)
            return boxes * ops.cast(valid, "float32")[:, None]

    x = keras.Input((4,), dtype="int32")
    model = keras.Model(x, Decode()(x))
    out = model.predict(ids, verbose=0)
    np.testing.assert_allclose(out, ids_to_boxes(ids, offset=100)[0], atol=1e-7)


@pytest.mark.parametrize("text", [
    "",
    "   ",
    " ; ; ",
])
def test_decode_empty(text):
    assert decode_boxes(text) == []


@pytest.mark.parametrize("text, label", [
    ("<loc0123><loc0456><loc0789>", ""),  # too few (cut off)
    ("<loc0123><loc0456><loc0789> cat", "cat"),
    ("<loc0123><loc0456><loc0789><loc1000><loc0001> cat", "cat"),  # too many
    ("cat <loc0123><loc0456><loc0789><loc1000>", "cat"),  # label first
    ("<loc0123><loc0456> cat <loc0789><loc1000>", "cat"),  # text in between
    ("<loc0123><loc0456><loc0789><loc1000> cat <loc0001>", "cat"),  # loc after the label
    ("<loc0789><loc0456><loc0123><loc1000> cat", "cat"),  # y2 < y1
    ("<loc0123><loc1000><loc0789><loc0456> cat", "cat"),  # x2 < x1
    ("<loc0123><loc0456><loc0789><loc1024> cat", "cat"),  # out of range
    ("<loc0123><loc0456><loc0789><loc9999> cat", "cat"),
    ("<loc123><loc0456><loc0789><loc1000> cat", "cat"),  # not four digits
    ("<loc00123><loc0456><loc0789><loc1000> cat", "cat"),
    ("<loc0123><loc0456><loc0789><locabcd> cat", "<locabcd> cat"),  # not a number
    ("<loc-001><loc0456><loc0789><loc1000> cat", "<loc-001> cat"),
    ("hello world", "hello world"),  # plain garbage
    ("<seg001><seg002>", ""),
    ("<unk></s>\x00 ünïcode ٠١٢٣", "<unk></s>\x00 ünïcode ٠١٢٣"),
])
def test_decode_malformed_gives_none(text, label):
    assert decode_boxes(text) == [(None, label)]


def test_decode_mixed_and_tolerant():
    text = ("<loc0000><loc0000><loc1023><loc1023> a big cat ; garbage ;;"
            " <loc0100> <loc0200> <loc0300> <loc0400>  dog \n; <loc0001><loc0002>")
    (b0, l0), (b1, l1), (b2, l2), (b3, l3) = decode_boxes(text)
    np.testing.assert_array_equal(b0, [0, 0, 1, 1])
    assert l0 == "a big cat"
    assert (b1, l1) == (None, "garbage")
    np.testing.assert_allclose(b2, np.array([100, 200, 300, 400]) / 1023, rtol=1e-6)
    assert l2 == "dog"
    assert (b3, l3) == (None, "")


def test_decode_zero_area_and_segmentation_tokens():
    [(box, label)] = decode_boxes("<loc0005><loc0005><loc0005><loc0009>line")
    np.testing.assert_allclose(box, np.array([5, 5, 5, 9]) / 1023, rtol=1e-6)
    assert label == "line"
    seg = "".join(f"<seg{i:03d}>" for i in range(16))
    [(box, label)] = decode_boxes(f"<loc0010><loc0020><loc0030><loc0040>{seg} cat")
    np.testing.assert_allclose(box, np.array([10, 20, 30, 40]) / 1023, rtol=1e-6)
    assert label == "cat"


def test_decode_accepts_non_strings():
    [(box, label)] = decode_boxes("<loc0000><loc0000><loc0001><loc0001> caf\u00e9".encode())
    assert label == "caf\u00e9" and box is not None
    assert decode_boxes(b"\xff\xfe garbage") == [(None, "\ufffd\ufffd garbage")]
    assert decode_boxes(np.str_("<loc0000><loc0000><loc0001><loc0001> x"))[0][1] == "x"


def reference_iou(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            h = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            w = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])
            union = area(p) + area(q) - h * w
            out[i, j] = h * w / union if union > 0 else 0.0
    return out


def test_box_iou_known_values():
    a = np.array([[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0.2, 0.2, 0.2, 0.6], [-1, -1, -1, -1]])
    b = np.array([[0, 0, 0.5, 1], [0.2, 0.2, 0.2, 0.6]])
    expected = [[0.5, 0], [0.5, 0], [0, 0], [0, 0], [0, 0]]
    iou = box_iou(a, b)
    assert iou.shape == (5, 2) and isinstance(iou, np.ndarray)
    np.testing.assert_allclose(iou, expected, atol=1e-12)
    assert box_iou([[0.6, 0.6, 0.1, 0.1]], [[0, 0, 1, 1]])[0, 0] == 0  # reversed box is empty
    assert box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3]]).dtype == np.float32  # int input -> float32
    assert box_iou(a, b).dtype == np.float64
    np.testing.assert_allclose(box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3]]), [[1 / 7]], rtol=1e-6)


def test_box_iou_random_and_broadcast():
    rng = np.random.default_rng(5)
    a, b = random_boxes(rng, (3, 6)), random_boxes(rng, (3, 4))
    iou = box_iou(a, b)
    assert iou.shape == (3, 6, 4)
    for i in range(3):
        np.testing.assert_allclose(iou[i], reference_iou(a[i], b[i]), rtol=1e-12)
    assert box_iou(a, b[0]).shape == (3, 6, 4)  # b broadcast over a's batch
    np.testing.assert_allclose(box_iou(a[0], a[0]).diagonal()[a[0, :, 2] > a[0, :, 0]], 1.0)


def test_box_iou_backend_tensors():
    rng = np.random.default_rng(6)
    a, b = random_boxes(rng, (2, 5)).astype(np.float32), random_boxes(rng, (2, 3)).astype(np.float32)
    a[0, 0] = [0.3, 0.3, 0.3, 0.3]
    b[0, 0] = [0.3, 0.3, 0.3, 0.3]  # empty vs empty: 0, not NaN
    iou = box_iou(ops.convert_to_tensor(a), ops.convert_to_tensor(b))
    assert not isinstance(iou, np.ndarray)
    iou = ops.convert_to_numpy(iou)
    assert iou[0, 0, 0] == 0
    np.testing.assert_allclose(iou, box_iou(a, b), atol=1e-6)
    int_iou = box_iou(ops.convert_to_tensor([[0, 0, 2, 2]]), ops.convert_to_tensor([[1, 1, 3, 3]]))
    np.testing.assert_allclose(ops.convert_to_numpy(int_iou), [[1 / 7]], rtol=1e-6)


def test_box_iou_gradient_is_finite_for_empty_union():
    """An empty union must not put 0 / 0 into the backward pass (IoU as a loss)."""
    a = np.zeros((1, 4), np.float32)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        grad = jax.grad(lambda x: box_iou(x, a).sum())(a)
    elif backend == "tensorflow":
        import tensorflow as tf

        x = tf.Variable(a)
        with tf.GradientTape() as tape:
            y = ops.sum(box_iou(x, a))
        grad = tape.gradient(y, x)
    else:
        import torch

        x = torch.zeros((1, 4), requires_grad=True)
        ops.sum(box_iou(x, torch.zeros((1, 4)))).backward()
        grad = x.grad
    assert np.isfinite(ops.convert_to_numpy(grad)).all()


def test_grounding_metrics():
    target = np.array([[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0, 1, 1]])
    predicted = [np.array([0, 0, 1, 1]), np.array([0, 0, 0.5, 1]), None, np.array([0, 0, 1, 0.5])]
    scores = grounding_metrics(predicted, target)
    np.testing.assert_allclose(scores["mean_iou"], (1 + 0.5 + 0 + 0.5) / 4)
    assert scores["accuracy"] == 0.75  # IoU exactly 0.5 counts as correct
    assert scores["invalid"] == 0.25
    assert grounding_metrics(predicted, target, threshold=0.6)["accuracy"] == 0.25
    array_scores = grounding_metrics(np.array(target), target)
    assert array_scores == {"mean_iou": 1.0, "accuracy": 1.0, "invalid": 0.0}
    assert all(np.isnan(v) for v in grounding_metrics([], np.zeros((0, 4))).values())
    with pytest.raises(ValueError):
        grounding_metrics(predicted[:2], target)


def test_grounding_metrics_from_decoded_text():
    target = random_boxes(np.random.default_rng(7), (50,))
    texts = [boxes_to_text(t[None], "thing") for t in target]
    texts[3] = "<loc0001><loc0002> thing"  # truncated generation
    predicted = [decode_boxes(t)[0][0] for t in texts]
    scores = grounding_metrics(predicted, target)
    assert scores["invalid"] == 1 / 50
    assert scores["accuracy"] >= 48 / 50
