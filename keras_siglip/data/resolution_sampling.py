"""NaViT resolution sampling (Dehghani et al. 2023, sec. 3.2): each image at its own size.

NaViT trains on every image at a resolution drawn for that image, keeping its
aspect ratio. A draw `u` on [-1, 1] (uniform, or a normal of mean `mean` and
standard deviation `std` truncated to [-1, 1]) is mapped linearly onto the side
length range `[low, high]` (`on="side"`), or onto the area range
`[low², high²]` (`on="area"`, side = sqrt(area)). The paper's best choice is
the side length with `truncated_normal(mean=-0.5, std=1)`: biased towards small
images, so a sequence holds more of them.

Here "resolution r" becomes a patch budget, `floor((r / P)²)` patches: the NaFlex
resize gives the image the largest size with at most that many patches (the
area of an r x r square, any aspect ratio), padded to the converter's
`max_num_patches` so shapes stay static. Then `pack_dataset` packs the images:

    images = sample_resolutions(raw, NaFlexImageConverter(16, 576), side_range=(64, 384), seed=0)
    packed, stats = pack_dataset(images, 576, 8)

Draws are stateless: image k's draw depends only on `(seed, k)`, so runs repeat
exactly and `draw_side_lengths` lists the sides in advance.
"""

import numpy as np
import tensorflow as tf

DISTRIBUTIONS = ("uniform", "truncated_normal")
SCALES = ("side", "area")


def _check(side_range, distribution, std, on):
    low, high = side_range
    if not 0 < low <= high:
        raise ValueError(f"side_range must be (low, high) with 0 < low <= high; got {tuple(side_range)}.")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}; got {distribution!r}.")
    if not std > 0:
        raise ValueError(f"std must be positive; got {std}.")
    if on not in SCALES:
        raise ValueError(f"on must be one of {SCALES}; got {on!r}.")
    return float(low), float(high)


def _side_length(index, seed, side_range, distribution, mean, std, on):
    """The side length (float64 scalar) drawn for image `index` (TensorFlow ops)."""
    low, high = side_range
    key = tf.random.experimental.stateless_split(tf.constant([seed, 7], tf.int64), 1)[0]
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64))
    uniform = tf.random.stateless_uniform([], key, dtype=tf.float64)
    if distribution == "uniform":
        draw = 2.0 * uniform - 1.0
    else:  # inverse CDF of the normal restricted to [-1, 1]
        mean, std = tf.constant(mean, tf.float64), tf.constant(std, tf.float64)

        def cdf(x):
            return 0.5 * tf.math.erfc(-x / np.sqrt(2.0))

        lo, hi = cdf((-1.0 - mean) / std), cdf((1.0 - mean) / std)
        draw = tf.clip_by_value(mean + std * tf.math.ndtri(lo + uniform * (hi - lo)), -1.0, 1.0)
    fraction = (draw + 1.0) / 2.0
    if on == "side":
        return low + fraction * (high - low)
    return tf.sqrt(low**2 + fraction * (high**2 - low**2))


def token_budget(side_length, patch_size):
    """`floor((side / P)²)` patches, at least one (works on numbers and tensors)."""
    if isinstance(side_length, (tf.Tensor, tf.Variable)):
        ratio = tf.cast(side_length, tf.float64) / patch_size
        return tf.maximum(tf.cast(tf.floor(ratio * ratio), tf.int32), 1)
    return np.maximum(np.floor((np.asarray(side_length, np.float64) / patch_size) ** 2), 1).astype(np.int32)


def draw_side_lengths(num_images, side_range=(64, 384), distribution="truncated_normal", mean=-0.5, std=1.0,
                      on="side", seed=0):
    """The float64 `(num_images,)` side lengths that `sample_resolutions` (same
    arguments) draws for its first images."""
    side_range = _check(side_range, distribution, std, on)
    draw = tf.function(lambda indices: tf.map_fn(
        lambda i: _side_length(i, seed, side_range, distribution, mean, std, on), indices,
        fn_output_signature=tf.float64))
    return draw(tf.range(num_images)).numpy()


def sample_resolutions(dataset, image_converter, side_range=(64, 384), distribution="truncated_normal",
                       mean=-0.5, std=1.0, on="side", seed=0, image_key="image"):
    """Unbatched examples -> NaFlex images, each at a resolution drawn for it.

    Args:
        dataset: unbatched `tf.data.Dataset` of dicts with `image_key`:
            `(H, W, C)` uint8 or float in [0, 255], any size.
        image_converter: a `NaFlexImageConverter`; its `max_num_patches` is
            the padded length and must hold the largest budget,
            `token_budget(high, P)`.
        side_range: `(low, high)` side lengths in pixels.
        distribution, mean, std, on: the draw (module docstring); `mean` and
            `std` are on the [-1, 1] scale and used by "truncated_normal" only.
        seed: int seed of the stateless draws.
        image_key: the key of the raw image, replaced by the converter's
            `"patches"`, `"patch_mask"`, `"patch_coords"` (and `"grid_shape"`
            if the converter returns it); other keys pass through.

    Returns:
        An unbatched `tf.data.Dataset`, ready for `pack_dataset` or batching.
    """
    if not hasattr(image_converter, "max_num_patches"):
        raise ValueError(f"sample_resolutions needs a NaFlexImageConverter; got {type(image_converter).__name__}.")
    low, high = side_range = _check(side_range, distribution, std, on)
    largest = int(token_budget(high, image_converter.patch_size))
    if largest > image_converter.max_num_patches:
        raise ValueError(
            f"A {high:g}-pixel side gives up to {largest} patches of {image_converter.patch_size}, more than "
            f"the converter's max_num_patches={image_converter.max_num_patches}: raise it or lower side_range.")
    spec = dataset.element_spec
    if not isinstance(spec, dict) or image_key not in spec:
        raise ValueError(f"Expected an unbatched dataset of dicts with {image_key!r}; got {spec}.")

    def convert(index, example):
        example = dict(example)
        image = example.pop(image_key)
        side = _side_length(index, seed, side_range, distribution, mean, std, on)
        budget = token_budget(side, image_converter.patch_size)
        example.update(image_converter._convert(image, image_converter.max_num_patches, budget=budget))
        return example

    return dataset.enumerate().map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
