import dataclasses
import re

import numpy as np
import pytest

from keras_siglip.data import shapes
from keras_siglip.data.shapes import (COLORS, POSITIONS, PROMPT_TEMPLATES,
                                      SHAPES, SIZES, ShapesDataset,
                                      class_label, class_names, class_prompts)

PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles",
           "star": "stars", "diamond": "diamonds", "cross": "crosses"}
COUNT_WORDS = {2: "two", 3: "three"}


def assert_same_example(a, b):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["boxes"], b["boxes"])
    assert a["caption"] == b["caption"]
    assert a["label"] == b["label"]
    assert a["attributes"] == b["attributes"]


def shape_pixel_mask(example):
    """Pixels within the colour tolerance of the nominal shape colour."""
    rgb = np.array(shapes.COLOR_RGB[example["attributes"].color])
    dist = np.linalg.norm(example["image"].astype(np.float32) - rgb, axis=-1)
    return dist < 45


def pixel_box(box, h, w):
    y1, x1, y2, x2 = box
    return (int(round(y1 * h)), int(round(x1 * w)),
            int(round(y2 * h)), int(round(x2 * w)))


@pytest.mark.parametrize("image_size", [48, None])
def test_deterministic_and_independent_of_num_examples(image_size):
    small = ShapesDataset(10, seed=3, image_size=image_size)
    large = ShapesDataset(100, seed=3, image_size=image_size)
    for i in (0, 7, 9):
        assert_same_example(small[i], large[i])
        assert_same_example(small[i], small[i])
    assert_same_example(small[-1], small[9])
    with pytest.raises(IndexError):
        small[10]


def test_different_seeds_and_indices_differ():
    a, b = ShapesDataset(20, seed=0), ShapesDataset(20, seed=1)
    assert all(not np.array_equal(a[i]["image"], b[i]["image"]) for i in range(20))
    assert len({a[i]["caption"] for i in range(20)}) > 10
    assert not np.array_equal(a[0]["image"], a[1]["image"])


@pytest.mark.parametrize("image_size", [48, 64])
def test_fixed_image_size(image_size):
    ds = ShapesDataset(20, image_size=image_size)
    for i in range(len(ds)):
        image = ds[i]["image"]
        assert image.dtype == np.uint8
        assert image.shape == (image_size, image_size, 3)
        assert image.std() > 5  # not blank


def test_varied_image_sizes():
    ds = ShapesDataset(60, seed=5, image_size=None, min_side=32, max_side=160)
    sizes = [ds[i]["image"].shape for i in range(len(ds))]
    assert all(s[2] == 3 and 32 <= s[0] <= 160 and 32 <= s[1] <= 160 for s in sizes)
    assert all(ds[i]["image"].dtype == np.uint8 for i in range(3))
    ratios = [h / w for h, w, _ in sizes]
    assert min(ratios) < 0.8 and max(ratios) > 1.25
    assert len(set(sizes)) > 40


@pytest.mark.parametrize("image_size", [48, None])
def test_boxes_are_tight_and_cover_the_shapes(image_size):
    ds = ShapesDataset(200, seed=11, image_size=image_size)
    for i in range(len(ds)):
        ex = ds[i]
        image, boxes, attrs = ex["image"], ex["boxes"], ex["attributes"]
        h, w, _ = image.shape
        assert boxes.dtype == np.float32 and boxes.shape == (attrs.count, 4)
        assert np.all((boxes >= 0) & (boxes <= 1))
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        fg = shape_pixel_mask(ex)
        inside = np.zeros((h, w), bool)
        background = image[~fg].astype(np.float32).mean(0)
        for box in boxes:
            y1, x1, y2, x2 = pixel_box(box, h, w)
            region = fg[y1:y2, x1:x2]
            # Tight: the shape touches all four sides of its box.
            assert region[0].any() and region[-1].any()
            assert region[:, 0].any() and region[:, -1].any()
            assert region.mean() > 0.3
            mean = image[y1:y2, x1:x2].reshape(-1, 3).astype(np.float32).mean(0)
            assert np.linalg.norm(mean - background) > 30
            assert not inside[y1:y2, x1:x2].any(), "boxes overlap"
            inside[y1:y2, x1:x2] = True
        # No shape-coloured pixels outside the boxes.
        assert not (fg & ~inside).any()


def test_background_is_never_close_to_shape_colour():
    for i in range(300):
        ex = ShapesDataset(300, seed=2)[i]
        fg = shape_pixel_mask(ex)
        background = ex["image"][~fg].astype(np.float32).mean(0)
        rgb = np.array(shapes.COLOR_RGB[ex["attributes"].color])
        assert np.linalg.norm(background - rgb) > 60
        assert ex["attributes"].background in shapes.BACKGROUNDS


def test_box_centres_lie_in_named_position():
    ds = ShapesDataset(300, seed=4)
    for i in range(len(ds)):
        ex = ds[i]
        position, count = ex["attributes"].position, ex["attributes"].count
        words = position.split()
        for y1, x1, y2, x2 in ex["boxes"]:
            for centre, lo, hi in (((y1 + y2) / 2, "top", "bottom"),
                                   ((x1 + x2) / 2, "left", "right")):
                third = 0 if lo in words else 2 if hi in words else 1
                if count > 1 and third == 1:
                    continue  # a band ("top", ...) leaves the other axis free
                assert third / 3 - 0.06 <= centre <= (third + 1) / 3 + 0.06, (i, position)


def test_captions_match_attributes_and_labels():
    ds = ShapesDataset(1000, seed=7)
    names = class_names()
    assert len(names) == len(set(names)) == len(COLORS) * len(SHAPES) == 48
    assert names[0] == "red circle" and names[-1] == "black cross"
    captions, counts = [], set()
    for i in range(len(ds)):
        ex = ds[i]
        attrs, text = ex["attributes"], ex["caption"]
        captions.append(text)
        counts.add(attrs.count)
        assert text == text.lower() and text == text.strip()
        assert text[-1].isalpha()
        words = re.findall(r"[a-z]+", text)
        assert attrs.color in words
        if attrs.count == 1:
            assert attrs.shape in words and PLURALS[attrs.shape] not in words
            assert not {"two", "three"} & set(words)
        else:
            assert PLURALS[attrs.shape] in words and attrs.shape not in words
            assert COUNT_WORDS[attrs.count] in words
            assert set(COUNT_WORDS.values()) - {COUNT_WORDS[attrs.count]} - set(words)
        assert len(ex["boxes"]) == attrs.count
        assert names[ex["label"]] == class_label(attrs) == f"{attrs.color} {attrs.shape}"
        assert "a orange" not in text and "an red" not in text
    assert counts == {1, 2, 3}
    assert len(set(captions)) >= 0.6 * len(captions)


def test_caption_drop_prob_controls_size_and_position():
    attrs = shapes.ShapeAttributes("orange", "star", "large", "top left", 1, "gray")
    rng = np.random.default_rng(0)
    for _ in range(50):
        text = shapes.caption(attrs, rng, drop_prob=0.0)
        assert "large orange star" in text and "top left" in text
        text = shapes.caption(attrs, rng, drop_prob=1.0)
        words = set(text.split())
        assert "an orange star" in text
        assert not words & set(SIZES) and not words & {"top", "left"}
    plural = shapes.ShapeAttributes("red", "cross", "small", "bottom", 3, "teal")
    texts = {shapes.caption(plural, rng, drop_prob=0.0) for _ in range(50)}
    assert all("three small red crosses" in t and "bottom" in t for t in texts)
    assert any(t.startswith("there are") for t in texts)


def test_training_captions_cover_prompt_templates():
    ds = ShapesDataset(2000, seed=1)
    covered = set()
    for i in range(len(ds)):
        ex = ds[i]
        name = shapes.with_article(class_label(ex["attributes"]))
        covered |= {t for t in PROMPT_TEMPLATES if ex["caption"] == t.format(name)}
    assert covered == set(PROMPT_TEMPLATES)
    prompts = class_prompts(PROMPT_TEMPLATES[0])
    assert len(prompts) == 48 and prompts[0] == "a photo of a red circle"
    assert "a photo of an orange star" in prompts


def test_attribute_values_are_known():
    ds = ShapesDataset(300, seed=9)
    for i in range(len(ds)):
        a = ds[i]["attributes"]
        assert a.color in COLORS and a.shape in SHAPES and a.size in SIZES
        assert a.position in POSITIONS and 1 <= a.count <= 3


def test_arrays_match_getitem():
    ds = ShapesDataset(30, seed=2)
    arrays = ds.arrays()
    assert arrays["images"].shape == (30, 48, 48, 3) and arrays["images"].dtype == np.uint8
    assert arrays["captions"].shape == (30,)
    assert arrays["labels"].dtype == np.int32 and arrays["num_boxes"].dtype == np.int32
    assert arrays["boxes"].shape == (30, 3, 4) and arrays["boxes"].dtype == np.float32
    for i in range(30):
        ex = ds[i]
        n = len(ex["boxes"])
        np.testing.assert_array_equal(arrays["images"][i], ex["image"])
        assert arrays["captions"][i] == ex["caption"]
        assert arrays["labels"][i] == ex["label"] and arrays["num_boxes"][i] == n
        np.testing.assert_array_equal(arrays["boxes"][i, :n], ex["boxes"])
        assert np.all(arrays["boxes"][i, n:] == -1)
    with pytest.raises(ValueError):
        ShapesDataset(3, image_size=None).arrays()


@pytest.mark.parametrize("image_size", [48, None])
def test_tf_dataset_matches_getitem(image_size):
    pytest.importorskip("tensorflow")
    ds = ShapesDataset(6, seed=5, image_size=image_size)
    elements = list(ds.as_tf_dataset(include_boxes=True).take(4).as_numpy_iterator())
    assert len(elements) == 4
    for i, element in enumerate(elements):
        ex = ds[i]
        np.testing.assert_array_equal(element["images"], ex["image"])
        assert element["images"].dtype == np.uint8
        assert element["captions"].decode() == ex["caption"]
        assert element["labels"] == ex["label"]
        n = element["num_boxes"]
        assert n == len(ex["boxes"])
        np.testing.assert_array_equal(element["boxes"][:n], ex["boxes"])
    plain = next(iter(ds.as_tf_dataset()))
    assert set(plain) == {"images", "captions", "labels"}


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_have_their_geometry(shape):
    attrs = shapes.ShapeAttributes("red", shape, "large", "center", 1, "gray")
    image, boxes, drawn = shapes.render(attrs, np.random.default_rng(0), 160, 160)
    assert drawn == attrs and boxes.shape == (1, 4)
    fg = shape_pixel_mask({"image": image, "attributes": attrs})
    y1, x1, y2, x2 = pixel_box(boxes[0], 160, 160)
    r = fg[y1:y2, x1:x2]
    h, w = r.shape
    fill, top, bottom = r.mean(), r[:h // 4].mean(), r[-(h // 4):].mean()
    corner, edge = r[:h // 5, :w // 5].mean(), r[0].mean()
    assert r[h // 3:2 * h // 3, w // 3:2 * w // 3].all()  # solid centre
    assert fg.sum() == r.sum()  # nothing drawn outside the box
    if shape == "circle":
        assert 0.74 < fill < 0.83 and 0.02 < corner < 0.3
    elif shape == "square":
        assert fill > 0.97
    elif shape == "triangle":  # pointing up
        assert 0.45 < fill < 0.58 and bottom - top > 0.5 and r[-1].mean() > 0.9
    elif shape == "star":
        assert 0.33 < fill < 0.46 and corner == 0 and bottom > top
    elif shape == "diamond":
        assert 0.45 < fill < 0.56 and corner == 0 and edge < 0.1
        assert abs(top - bottom) < 0.05
    elif shape == "cross":
        assert 0.5 < fill < 0.62 and corner == 0 and 0.25 < edge < 0.45
        assert r[h // 2].all() and r[:, w // 2].all()


def test_render_draws_fewer_shapes_when_they_do_not_fit():
    # Three large shapes cannot share the top third of a 48 px image.
    attrs = shapes.ShapeAttributes("blue", "square", "large", "top", 3, "beige")
    image, boxes, drawn = shapes.render(attrs, np.random.default_rng(1), 48, 48)
    assert drawn.count == len(boxes) < 3
    assert dataclasses.replace(drawn, count=3) == attrs
    assert np.all(boxes[:, 2] <= 0.5)  # still at the top
    text = shapes.caption(drawn, np.random.default_rng(0), drop_prob=0.0)
    assert "three" not in text.split()


def test_numbers_for_text_reading_change_nothing_else():
    from keras_siglip.data import shapes_task_arrays

    plain, numbered = shapes.ShapesDataset(12, seed=9), shapes.ShapesDataset(12, seed=9, number_prob=0.5)
    written = 0
    for i in range(12):
        a, b = plain[i], numbered[i]
        assert a["caption"] == b["caption"] and a["label"] == b["label"]
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
        changed = np.any(a["image"] != b["image"], axis=-1)
        if b["attributes"].number is None:
            assert not changed.any()
        else:
            written += 1
            assert 10 <= b["attributes"].number <= 99
            ys, xs = np.nonzero(changed)  # the glyphs: 14 x 10 pixels in one corner
            assert ys.max() - ys.min() < 10 and xs.max() - xs.min() < 14
            assert min(ys.min(), 47 - ys.max()) == 2 and min(xs.min(), 47 - xs.max()) == 2
    assert 2 <= written <= 10
    read = shapes_task_arrays(numbered, "read")
    assert len(read["targets"]) == written and all(t.isdigit() for t in read["targets"])
    with pytest.raises(ValueError, match="number_prob"):
        shapes_task_arrays(plain, "read")
