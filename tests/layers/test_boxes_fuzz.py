"""Property tests: box, detection and segmentation parsing take any model output
(arbitrary text, bytes or token ids) without raising, and keep only well-formed
objects; well-formed boxes survive a round trip."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from keras_siglip.layers.boxes import boxes_to_text, decode_boxes
from keras_siglip.models.pali_gemma import parse_detections
from keras_siglip.models.pali_gemma.pali_gemma_segmentation import parse_segmentation_tokens

PIECES = ["<loc0000>", "<loc1023>", "<loc1024>", "<loc0512>", "<loc12>", "<loc00100>", "<seg000>", "<seg127>",
          "<seg128>", "<seg0001>", " ; ", ";", " ", "cat", "<", ">", "loc", "\n", "\x00", "é", "٣", "<loc٣٣٣٣>",
          "<loc" + "9" * 5000 + ">"]
# Text made of the pieces a decoder emits (and their near misses), or any unicode at all.
outputs = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=40).map("".join),
    st.text(max_size=300),
    st.binary(max_size=100),
)


def check_box(box):
    assert box.dtype == np.float32 and box.shape == (4,)
    assert np.isfinite(box).all() and (box >= 0).all() and (box <= 1).all()
    assert box[2] >= box[0] and box[3] >= box[1]


@given(text=outputs)
def test_decode_boxes_never_raises_and_keeps_only_valid_boxes(text):
    for box, label in decode_boxes(text):
        assert isinstance(label, str) and "<loc" not in label.replace("<loc٣", "")
        if box is not None:
            check_box(box)


@given(text=outputs)
def test_parse_detections_never_raises(text):
    found = parse_detections(text, image_size=(480, 640))
    assert found.boxes.shape == (len(found), 4) and np.isfinite(found.boxes).all()
    assert (found.boxes >= 0).all() and (found.boxes[:, [0, 2]] <= 480).all() and (found.boxes[:, [1, 3]] <= 640).all()


@given(output=st.one_of(outputs, st.lists(st.integers(-(2**40), 2**40), max_size=40),
                        st.lists(st.integers(256_000, 256_000 + 1024 + 128), max_size=40)))
def test_parse_segmentation_tokens_never_raises(output):
    for found in parse_segmentation_tokens(output):
        check_box(found["box"])
        assert found["box"][2] > found["box"][0] and found["box"][3] > found["box"][1]
        codes = found["codes"]
        assert codes is None or (codes.shape == (16,) and ((codes >= 0) & (codes < 128)).all())


coordinates = st.floats(0, 1, width=32)
boxes = st.tuples(coordinates, coordinates, coordinates, coordinates).map(
    lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])))
labels = st.text(st.characters(blacklist_characters=";<>", blacklist_categories=("Cs", "Zs", "Cc")), max_size=12)


@given(objects=st.lists(st.tuples(boxes, labels), min_size=1, max_size=5))
def test_well_formed_detections_round_trip(objects):
    box_array = np.array([b for b, _ in objects], np.float32)
    parsed = decode_boxes(boxes_to_text(box_array, [label for _, label in objects]))
    assert len(parsed) == len(objects)
    for (box, label), (expected_box, expected_label) in zip(parsed, objects):
        assert label == expected_label
        np.testing.assert_allclose(box, expected_box, atol=0.5 / 1023 + 1e-6)
