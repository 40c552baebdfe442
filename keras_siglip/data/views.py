"""SILC views for SigLIP 2 self-distillation, inside `tf.data`.

The teacher sees one global crop of each image, the student `num_local` local
crops (SILC: crop areas 0.4-1.0 and 0.05-0.4 of the image, aspect ratios
3/4-4/3 as in Inception-style random resized crops), each resized with
antialiased bilinear interpolation to a fixed size, so every view has a static
shape. Crops are drawn with stateless random ops from an explicit seed: the
same seed gives the same views on every run and backend. The SigLIP and
decoder losses keep using the un-augmented image.

Only crops and horizontal flips are applied: the paper refers to SILC for its
augmentations and publishes none, so colour jitter or blur, if wanted, go in
the user's pipeline.
"""

import tensorflow as tf

GLOBAL_AREA = (0.4, 1.0)
LOCAL_AREA = (0.05, 0.4)
ASPECT_RATIOS = (3 / 4, 4 / 3)
NUM_LOCAL_VIEWS = 8


def crop_boxes(image_shape, seed, count, area_range, aspect_ratio_range=ASPECT_RATIOS):
    """`(count, 4)` int32 crop boxes `(top, left, height, width)` of an image
    of `(H, W, ...)` shape, areas in `area_range` of the image's, drawn from the
    `(2,)` int seed. Where no such box exists (an image far thinner than the
    aspect ratios allow), TensorFlow's sampler gives the whole image."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), count)
    boxes = []
    for i in range(count):  # `count` is a Python int: a fixed number of crops
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.convert_to_tensor(image_shape, tf.int32),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seeds[i],
            min_object_covered=0.0,
            aspect_ratio_range=aspect_ratio_range,
            area_range=area_range,
            max_attempts=100,
            use_image_if_no_bounding_boxes=True,
        )
        boxes.append(tf.stack([begin[0], begin[1], size[0], size[1]]))
    return tf.stack(boxes)


def _view(image, box, size, flip_seed=None):
    """The `box` crop of `image`, resized to `size` (static), maybe flipped."""
    crop = image[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
    view = tf.image.resize(tf.cast(crop, tf.float32), size, method="bilinear", antialias=True)
    if flip_seed is not None:
        view = tf.image.stateless_random_flip_left_right(view, flip_seed)
    return tf.ensure_shape(view, (*size, image.shape[-1]))


def silc_views(image, seed, global_size, local_size, num_local=NUM_LOCAL_VIEWS,
               global_area=GLOBAL_AREA, local_area=LOCAL_AREA, flip=True):
    """One image `(H, W, C)` -> its teacher and student views.

    Args:
        image: `(H, W, C)` image (any dtype, any value scale; kept).
        seed: `(2,)` int seed, e.g. `[base_seed, example_index]`.
        global_size: `(h, w)` of the global view.
        local_size: `(h, w)` of each local view.
        num_local: number of local views V.
        global_area, local_area: ranges of crop area, fractions of the image's.
        flip: flip each view horizontally with probability 0.5.

    Returns:
        `{"global_view": (h, w, C), "local_views": (V, h', w', C)}` float32,
        values on the input's scale.
    """
    for name, area in (("global_area", global_area), ("local_area", local_area)):
        if not 0 < area[0] <= area[1] <= 1:
            raise ValueError(f"{name} must be a range within (0, 1]; got {area}.")
    if num_local < 1:
        raise ValueError(f"num_local must be at least 1; got {num_local}.")
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3:
        raise ValueError(f"silc_views takes one image (H, W, C); got shape {image.shape}.")
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
    flip_seeds = tf.random.experimental.stateless_split(flip_seed, num_local + 1)
    shape = tf.shape(image)
    global_box = crop_boxes(shape, crop_seed, 1, global_area)[0]
    local_boxes = crop_boxes(shape, tf.random.experimental.stateless_fold_in(crop_seed, 1), num_local, local_area)

    def view(box, size, i):
        return _view(image, box, size, flip_seeds[i] if flip else None)

    return {
        "global_view": view(global_box, tuple(global_size), 0),
        "local_views": tf.stack([view(local_boxes[i], tuple(local_size), i + 1) for i in range(num_local)]),
    }
