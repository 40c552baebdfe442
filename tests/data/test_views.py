"""SILC views: static shapes, crop areas in range, seeded, usable in tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from keras_siglip.data import silc_views
from keras_siglip.data.views import crop_boxes

IMAGE = np.random.default_rng(0).integers(0, 256, (48, 64, 3)).astype("uint8")


def views(seed, **kwargs):
    out = silc_views(IMAGE, seed=[7, seed], global_size=(32, 32), local_size=(16, 16), **kwargs)
    return {k: v.numpy() for k, v in out.items()}


def test_shapes_dtype_and_value_scale():
    out = views(0)
    assert out["global_view"].shape == (32, 32, 3) and out["local_views"].shape == (8, 16, 16, 3)
    assert out["global_view"].dtype == np.float32
    for v in out.values():  # antialiased bilinear stays within the input's range, on its scale
        assert v.min() >= 0 and v.max() <= 255 and v.max() > 100


def test_same_seed_same_views_other_seed_other_views():
    a, b, c = views(3), views(3), views(4)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a[key], c[key])
    assert len({v.tobytes() for v in a["local_views"]}) == 8  # the local crops differ


@pytest.mark.parametrize("area", [(0.4, 1.0), (0.05, 0.4)])
def test_crop_areas_lie_in_range(area):
    area_of_image = 48 * 64
    for seed in range(40):
        boxes = crop_boxes(tf.shape(IMAGE), [seed, 1], 4, area).numpy()
        top, left, height, width = boxes.T
        assert (top >= 0).all() and (left >= 0).all() and (top + height <= 48).all() and (left + width <= 64).all()
        fractions = height * width / area_of_image
        assert (fractions >= area[0] - 0.03).all() and (fractions <= area[1] + 0.03).all(), fractions


def test_views_are_resized_crops_without_flip():
    seed = [7, 5]
    out = silc_views(IMAGE, seed=seed, global_size=(32, 32), local_size=(16, 16), num_local=2, flip=False)
    crop_seed, _ = tf.unstack(tf.random.experimental.stateless_split(tf.constant(seed, tf.int64), 2))
    box = crop_boxes(tf.shape(IMAGE), crop_seed, 1, (0.4, 1.0))[0].numpy()
    np.testing.assert_allclose(out["global_view"].numpy(), resized_crop(box, (32, 32)), atol=1e-4)
    local_boxes = crop_boxes(tf.shape(IMAGE), tf.random.experimental.stateless_fold_in(crop_seed, 1), 2,
                             (0.05, 0.4)).numpy()
    for view, box in zip(out["local_views"].numpy(), local_boxes):
        np.testing.assert_allclose(view, resized_crop(box, (16, 16)), atol=1e-4)


def resized_crop(box, size):
    crop = IMAGE[box[0]:box[0] + box[2], box[1]:box[1] + box[3]].astype("float32")
    return tf.image.resize(crop, size, method="bilinear", antialias=True).numpy()


def test_runs_in_tf_data_with_static_shapes():
    dataset = tf.data.Dataset.from_tensors(IMAGE).repeat(3).enumerate().map(
        lambda i, image: silc_views(image, seed=tf.stack([tf.constant(1, tf.int64), i]),
                                    global_size=(32, 32), local_size=(16, 16), num_local=4)
    ).batch(3)
    assert dataset.element_spec["local_views"].shape.as_list() == [None, 4, 16, 16, 3]
    batch = next(iter(dataset))
    assert batch["global_view"].shape == (3, 32, 32, 3)
    assert not np.array_equal(batch["global_view"][0].numpy(), batch["global_view"][1].numpy())


@pytest.mark.parametrize("kwargs,words", [
    ({"local_area": (0.5, 0.2)}, "local_area"), ({"global_area": (0.0, 1.0)}, "global_area"),
    ({"num_local": 0}, "num_local"),
])
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        views(0, **kwargs)
    with pytest.raises(ValueError, match=r"one image \(H, W, C\)"):
        silc_views(IMAGE[None], seed=[0, 0], global_size=(8, 8), local_size=(4, 4))


def test_flip_mirrors_some_views_and_keeps_the_crops():
    flipped, plain = views(2), views(2, flip=False)
    pairs = [(flipped["global_view"], plain["global_view"])] + list(zip(flipped["local_views"], plain["local_views"]))
    mirrored = 0
    for a, b in pairs:
        if np.array_equal(a, b[:, ::-1]) and not np.array_equal(a, b):
            mirrored += 1
        else:
            np.testing.assert_array_equal(a, b)
    assert 0 < mirrored < len(pairs)
