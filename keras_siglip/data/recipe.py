"""The SigLIP 2 recipe's inputs, made inside `tf.data` (`SigLIP2Pretrainer`).

From examples `{"image", "caption", "region_text", "box"}` (one region per
image: a box and the text naming it, e.g. the shapes data set's shapes, or a
detector's pseudo-labels, see below) `recipe_dataset` makes batches of

- `"images"` `(B, S, S, 3)` in [-1, 1]: the un-augmented image, for the
  sigmoid and decoder losses (the preprocessor's image converter);
- `"token_ids"` `(B, L)`: the caption for the text tower;
- `"decoder_token_ids"`, `"decoder_targets"` `(B, L_d)`, `"tasks"` `(B,)`: one
  LocCa target per example, drawn per example (seeded) with `task_weights`
  among caption, referring expression (region text -> box) and grounded
  caption (box -> region text); examples without a region (box with a
  negative coordinate or empty region text) get the caption task;
- with `num_local_views`, the SILC views `"global_view"` `(B, h, w, 3)` and
  `"local_views"` `(B, V, h', w', 3)` cropped from the raw image
  (`silc_views`), on the model's [-1, 1] scale.

With a NaFlex preprocessor the images become `"patches"`, `"patch_mask"`,
`"patch_coords"` instead of `"images"`, at a sequence length drawn per batch
(`naflex_batches`: stage C's NaFlex continuation, the paper's lengths by
default, half the batch at 1024); images may differ in size. That stage has
no self-distillation, so it takes no views.

Your own pseudo-labels: run an open-vocabulary detector (OWL-ViT, as the paper
does) over the images with n-grams of each caption as queries, keep boxes
scoring >= 0.3, and store one box per image as normalised `[y1, x1, y2, x2]`
with its n-gram as `"region_text"` (the paper samples one box-text pair per
image and task).
"""

import tensorflow as tf

from keras_siglip.data.naflex_continuation import naflex_batches
from keras_siglip.data.views import NUM_LOCAL_VIEWS, silc_views
from keras_siglip.models.siglip2.resolution import NAFLEX_SEQUENCE_LENGTHS
from keras_siglip.models.cappa.locca_preprocessor import CAP

TASK_WEIGHTS = (1.0, 1.0, 1.0)  # caption, referring expression, grounded caption


def draw_tasks(seed, has_region, task_weights=TASK_WEIGHTS):
    """`(B,)` int32 LocCa tasks drawn from the `(2,)` seed with `task_weights`;
    rows without a region (`has_region` False) get the caption task."""
    weights = tf.constant(task_weights, tf.float32)
    if weights.shape != (3,):
        raise ValueError(f"task_weights must be three weights (cap, aref, gcap); got {task_weights}.")
    batch = tf.shape(has_region)[0]
    logits = tf.math.log(tf.tile(weights[None], [batch, 1]))
    tasks = tf.cast(tf.random.stateless_categorical(logits, 1, seed)[:, 0], tf.int32)
    return tf.where(has_region, tasks, CAP)


def recipe_dataset(dataset, preprocessor, decoder_preprocessor, batch_size, num_local_views=NUM_LOCAL_VIEWS,
                   global_size=None, local_size=None, task_weights=TASK_WEIGHTS, seed=0,
                   sequence_lengths=NAFLEX_SEQUENCE_LENGTHS, batch_sizes=None, length_weights=None):
    """Unbatched examples -> batches of `SigLIP2Pretrainer` inputs.

    Args:
        dataset: unbatched `tf.data.Dataset` of `{"image": (H, W, 3) uint8 or
            float in [0, 255], "caption": str, "region_text": str, "box": (4,)
            float [y1, x1, y2, x2] in [0, 1] (negative: no region)}`.
        preprocessor: a `SigLIPPreprocessor` (tokenizer + image converter) of
            the backbone.
        decoder_preprocessor: a `LocCaPreprocessor` over the same tokenizer
            (`loc_offset` = the text vocabulary, its `num_loc_tokens` and
            `sequence_length` those of the pretrainer's decoder).
        batch_size: examples per batch (the last partial batch is dropped).
        num_local_views: V local crops per image for stage B; 0: no views
            (stage A only, or a separate dataset for stage B).
        global_size, local_size: `(h, w)` of the views (default the image
            converter's size and half of it).
        task_weights: relative frequencies of the three LocCa tasks.
        seed: int seed of the tasks and crops (same seed, same batches).
        sequence_lengths, batch_sizes, length_weights: with a NaFlex
            preprocessor, the lengths drawn per batch, per-length batch sizes
            and the lengths' frequencies (`naflex_batches`).

    Returns:
        A batched `tf.data.Dataset` of input dicts (no `y`).
    """
    converter = preprocessor.image_converter
    naflex = hasattr(converter, "max_num_patches")
    if naflex and num_local_views:
        raise ValueError("The NaFlex continuation trains without self-distillation (SigLIP 2, stage C): "
                         "pass num_local_views=0 with a NaFlex preprocessor.")
    if not naflex:
        size = tuple(converter.image_size)
        global_size = tuple(global_size or size)
        local_size = tuple(local_size or (max(1, size[0] // 2), max(1, size[1] // 2)))
        scale, offset = float(converter.scale), float(converter.offset)

    def add_views(index, example):
        example = dict(example)
        if num_local_views:
            views = silc_views(example["image"], tf.stack([tf.cast(seed, tf.int64), index]), global_size,
                               local_size, num_local=num_local_views)
            # Resizing can overshoot the pixel range by rounding; clip before scaling.
            example.update({key: tf.clip_by_value(view, 0.0, 255.0) * scale + offset
                            for key, view in views.items()})
        return example

    def to_inputs(index, batch):
        if naflex:
            texts = {**preprocessor({"texts": batch["caption"]}),
                     **{key: batch[key] for key in ("patches", "patch_mask", "patch_coords")}}
        else:
            texts = preprocessor({"images": batch["image"], "texts": batch["caption"]})
        box = tf.cast(batch["box"], tf.float32)
        has_region = tf.logical_and(tf.reduce_all(box >= 0, axis=-1), tf.strings.length(batch["region_text"]) > 0)
        tasks = draw_tasks(tf.stack([tf.cast(seed, tf.int64) + 1, index]), has_region, task_weights)
        decoder_texts = tf.where(tasks == CAP, batch["caption"], batch["region_text"])
        token_ids, loss_mask, tasks = decoder_preprocessor.build_sequences(tasks, decoder_texts, tf.maximum(box, 0.0))
        image_keys = ("patches", "patch_mask", "patch_coords") if naflex else ("images",)
        inputs = {
            **{key: texts[key] for key in image_keys},
            "token_ids": texts["token_ids"],
            "decoder_token_ids": token_ids,
            "decoder_targets": tf.where(loss_mask, token_ids, tf.zeros_like(token_ids)),
            "tasks": tasks,
        }
        for key in ("global_view", "local_views"):
            if key in batch:
                inputs[key] = batch[key]
        return inputs

    views = dataset.enumerate().map(add_views, num_parallel_calls=tf.data.AUTOTUNE)
    if naflex:
        batches = naflex_batches(views, converter, batch_size, sequence_lengths, batch_sizes, length_weights,
                                 seed).enumerate()
    else:
        batches = views.batch(batch_size, drop_remainder=True).enumerate()
    return batches.map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def shapes_recipe_examples(dataset):
    """A `ShapesDataset` -> an unbatched `tf.data.Dataset` of recipe examples:
    the image, its caption and, for images of one shape, that shape as the
    region ("a red circle" and its box; images of several alike shapes have
    no unambiguous region and get box -1)."""
    import numpy as np

    from keras_siglip.data.shapes import with_article

    examples = [dataset[i] for i in range(len(dataset))]  # each image rendered once
    one_shape = [len(ex["boxes"]) == 1 for ex in examples]
    return tf.data.Dataset.from_tensor_slices({
        "image": np.stack([ex["image"] for ex in examples]),
        "caption": np.array([ex["caption"] for ex in examples]),
        "region_text": np.array([with_article(f"{ex['attributes'].color} {ex['attributes'].shape}")
                                 for ex in examples]),
        "box": np.array([ex["boxes"][0] if single else [-1.0] * 4 for ex, single in zip(examples, one_shape)],
                        np.float32),
    })
