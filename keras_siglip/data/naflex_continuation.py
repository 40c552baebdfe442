"""SigLIP 2 stage C for NaFlex: batches whose sequence length is drawn per batch.

The NaFlex variants of SigLIP 2 continue training from 90% of the schedule at
native aspect ratio, with the sequence length (the most patches an image may
become) drawn per batch from `NAFLEX_SEQUENCE_LENGTHS` = {128, 256, 576, 784,
1024}; the longest length runs at half the batch size to fit in memory.

From one stream of unbatched examples `{"image": (H, W, C) uint8 or float in
[0, 255] (H, W may vary), "caption": str, ...}`, batch k draws its length N_k
(seeded, stateless: the same seed gives the same lengths and batches), then
takes the next `B(N_k)` examples: no example is skipped or repeated, and only
the last partial batch is dropped. Each batch holds

- `"patches"` float32 `(B, N, P*P*3)`, `"patch_mask"` int32 `(B, N)`,
  `"patch_coords"` int32 `(B, N, 2)`: every image through the NaFlex image
  converter with `max_num_patches=N` (resized to fit N patches keeping its
  aspect ratio, patchified, zero-padded), as `SigLIPBackbone` and
  `SigLIP2Pretrainer` take them;
- `"token_ids"` int32 `(B, L)`: the caption, tokenized by the preprocessor;
- every other key of the examples, batched unchanged.

`B` and `N` are fixed within a batch and differ between batches, so the
dataset's `element_spec` leaves them `None`. A compiled train step is traced
(JAX) or XLA-compiled (TensorFlow) once per (B, N) pair, at most
`len(sequence_lengths)` times. Pair it with `StretchedSchedule` (the last 10%
of the schedule stretched 3.75x).
"""

import functools

import numpy as np
import tensorflow as tf

from keras_siglip.models.siglip2.resolution import NAFLEX_SEQUENCE_LENGTHS

HALVED_BATCH_FROM = 1024  # sequence lengths from here on get half the batch size


def per_length_batch_sizes(batch_size, sequence_lengths=NAFLEX_SEQUENCE_LENGTHS, batch_sizes=None):
    """`{length: examples per batch}`.

    Args:
        batch_size: the batch size below `HALVED_BATCH_FROM` patches; half of
            it (rounded down) from there on.
        sequence_lengths: the lengths to size.
        batch_sizes: None (that default), a dict `{length: size}` overriding
            it for some lengths, or a function `length -> size`.
    """
    def default(length):
        return batch_size // 2 if length >= HALVED_BATCH_FROM else batch_size

    if callable(batch_sizes):
        sizes = {n: batch_sizes(n) for n in sequence_lengths}
    else:
        overrides = dict(batch_sizes or {})
        unknown = set(overrides) - set(sequence_lengths)
        if unknown:
            raise ValueError(f"batch_sizes names lengths {sorted(unknown)} outside sequence_lengths "
                             f"{tuple(sequence_lengths)}.")
        sizes = {n: overrides.get(n, default(n)) for n in sequence_lengths}
    for length, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"The batch size at sequence length {length} must be a positive int; got {size!r} "
                             f"(batch_size {batch_size}, batch_sizes {batch_sizes!r}).")
    return {n: int(size) for n, size in sizes.items()}


def _check_lengths(sequence_lengths, weights):
    lengths = tuple(int(n) for n in sequence_lengths)
    if not lengths or min(lengths) < 1 or len(set(lengths)) != len(lengths):
        raise ValueError(f"sequence_lengths must be distinct positive ints; got {sequence_lengths}.")
    weights = np.ones(len(lengths)) if weights is None else np.asarray(weights, np.float64)
    if weights.shape != (len(lengths),) or np.any(weights < 0) or not weights.sum() > 0:
        raise ValueError(f"weights must be {len(lengths)} non-negative numbers, not all 0; got {weights}.")
    return lengths, weights / weights.sum()


def _check_keys(dataset, keys):
    spec = dataset.element_spec
    missing = [key for key in keys if not isinstance(spec, dict) or key not in spec]
    if missing:
        raise ValueError(f"Expected an unbatched dataset of dicts with {list(keys)}; missing {missing} in {spec}.")


def _length_indices(weights, seed):
    """An endless dataset: for batch k, the index of its sequence length,
    drawn with `weights` from the stateless seed `fold_in((seed, 0), k)`."""
    logits = tf.math.log(tf.constant(weights[None], tf.float32))
    seed_pair = tf.constant([seed, 0], tf.int64)

    def draw(batch_index):
        batch_seed = tf.random.experimental.stateless_fold_in(seed_pair, batch_index)
        return tf.random.stateless_categorical(logits, 1, batch_seed, dtype=tf.int64)[0, 0]

    return tf.data.Dataset.counter().map(draw)


def draw_sequence_lengths(num_batches, sequence_lengths=NAFLEX_SEQUENCE_LENGTHS, weights=None, seed=0):
    """The `(num_batches,)` sequence lengths the first batches of
    `naflex_batches` (same lengths, weights and seed) get."""
    lengths, weights = _check_lengths(sequence_lengths, weights)
    indices = np.fromiter(_length_indices(weights, seed).take(num_batches).as_numpy_iterator(), np.int64)
    return np.asarray(lengths, np.int64)[indices]


def naflex_batches(dataset, image_converter, batch_size, sequence_lengths=NAFLEX_SEQUENCE_LENGTHS,
                   batch_sizes=None, weights=None, seed=0):
    """Unbatched examples -> batches at a sequence length drawn per batch,
    images made NaFlex inputs, every other key (the caption too) batched
    unchanged. See the module docstring; `naflex_continuation_dataset` adds
    the token ids.

    Args:
        dataset: unbatched `tf.data.Dataset` of dicts with `"image"`.
        image_converter: a `NaFlexImageConverter` (its `max_num_patches` is
            overridden per batch).
        batch_size, batch_sizes: examples per batch (`per_length_batch_sizes`).
        sequence_lengths: the lengths to draw from.
        weights: their relative frequencies (default uniform).
        seed: int seed of the draws.

    Returns:
        A batched `tf.data.Dataset`.
    """
    if not hasattr(image_converter, "max_num_patches"):
        raise ValueError("naflex_batches needs a NaFlexImageConverter (a preprocessor of a NaFlex backbone); "
                         f"got {type(image_converter).__name__}.")
    _check_keys(dataset, ("image",))
    lengths, weights = _check_lengths(sequence_lengths, weights)
    sizes_by_length = per_length_batch_sizes(batch_size, lengths, batch_sizes)
    num_lengths = len(lengths)
    sizes = tf.constant([sizes_by_length[n] for n in lengths], tf.int64)

    # One key per example: batch index * num_lengths + length index, repeated
    # for the batch's examples (window keys are unique, so a window is a batch).
    def batch_keys(batch_index, length_index):
        return tf.data.Dataset.from_tensors(batch_index * num_lengths + length_index).repeat(sizes[length_index])

    keys = _length_indices(weights, seed).enumerate().flat_map(batch_keys)

    def to_naflex(key, example):
        example = dict(example)
        image = example.pop("image")
        branches = [functools.partial(image_converter, image, max_num_patches=n) for n in lengths]
        example.update(tf.switch_case(tf.cast(key % num_lengths, tf.int32), branches))
        return key, example

    def size_of(key):
        return sizes[key % num_lengths]

    examples = tf.data.Dataset.zip(keys, dataset).map(to_naflex, num_parallel_calls=tf.data.AUTOTUNE)
    batches = examples.group_by_window(
        key_func=lambda key, example: key,
        reduce_func=lambda key, window: window.batch(size_of(key), drop_remainder=True),
        window_size_func=size_of,
    )
    return batches.map(lambda keys, batch: batch)


def naflex_continuation_dataset(dataset, preprocessor, batch_size, sequence_lengths=NAFLEX_SEQUENCE_LENGTHS,
                                batch_sizes=None, weights=None, seed=0):
    """Unbatched image-caption examples -> stage C NaFlex batches (no `y`).

    Args:
        dataset: unbatched `tf.data.Dataset` of `{"image": (H, W, C),
            "caption": str, ...}`.
        preprocessor: a `SigLIPPreprocessor` with a `NaFlexImageConverter`.
        batch_size: examples per batch, halved from 1024 patches on.
        sequence_lengths: the lengths drawn per batch (the paper's five).
        batch_sizes: per-length overrides, a dict `{length: size}` or a
            function `length -> size`.
        weights: relative frequencies of the lengths (default uniform).
        seed: int seed of the draws (same seed, same batches).

    Returns:
        A batched `tf.data.Dataset` of `{"patches", "patch_mask",
        "patch_coords", "token_ids", ...}` (shapes in the module docstring).
    """
    _check_keys(dataset, ("image", "caption"))
    batches = naflex_batches(dataset, preprocessor.image_converter, batch_size, sequence_lengths,
                             batch_sizes, weights, seed)

    def tokenize(batch):
        batch = dict(batch)
        batch["token_ids"] = preprocessor({"texts": batch.pop("caption")})["token_ids"]
        return batch

    return batches.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
