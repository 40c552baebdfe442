"""Prompted image-to-text tasks and task-mixing `tf.data` pipelines.

A task example is `{"images": image, "prompts": str, "targets": str}`: the
prompt names the task (LiT-decoder and PaliGemma style), the target is the
text to produce. `mix_tasks` interleaves per-task datasets by weight; the
result feeds a `LiTDecoderPreprocessor` (or any preprocessor taking the same
keys) inside `tf.data`.
"""

import numpy as np

from keras_siglip.data.shapes import ShapesDataset

COUNT_WORDS = {1: "one", 2: "two", 3: "three"}

# Task name -> (prompt, answer from ShapeAttributes). "caption" uses the
# example's random caption; "class" the class name (classification as text).
SHAPES_TASKS = {
    "class": ("class", lambda a: f"{a.color} {a.shape}"),
    "caption": ("caption", None),
    "color": ("what color is the shape", lambda a: a.color),
    "shape": ("what shape is it", lambda a: a.shape),
    "count": ("how many shapes are there", lambda a: COUNT_WORDS[a.count]),
    "background": ("what color is the background", lambda a: a.background),
    # Text reading; needs a ShapesDataset with number_prob > 0 (images without a
    # number are left out of this task).
    "read": ("what number is written", lambda a: str(a.number)),
}


def shapes_task_arrays(dataset, tasks):
    """Prompted tasks over a `ShapesDataset` (fixed image size), as numpy arrays.

    Every image is rendered once and serves all the tasks.

    Args:
        dataset: a `ShapesDataset` with a fixed `image_size`.
        tasks: a key of `SHAPES_TASKS`, or a list of them.

    Returns:
        `{"images": uint8 (N, S, S, 3), "prompts": str (N,), "targets": str
        (N,)}` for one task; a dict task -> that for a list.
    """
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    unknown = [task for task in names if task not in SHAPES_TASKS]
    if unknown:
        raise ValueError(f"Unknown shapes tasks {unknown}; expected names from {sorted(SHAPES_TASKS)}.")
    if not isinstance(dataset, ShapesDataset) or dataset.image_size is None:
        raise ValueError("shapes_task_arrays needs a ShapesDataset with a fixed image_size.")
    examples = [dataset[i] for i in range(len(dataset))]
    images = np.stack([ex["image"] for ex in examples])
    arrays = {}
    for task in names:
        prompt, answer = SHAPES_TASKS[task]
        rows = np.arange(len(examples))
        if task == "read":
            rows = np.array([i for i, ex in enumerate(examples) if ex["attributes"].number is not None], int)
            if not len(rows):
                raise ValueError("The 'read' task needs a ShapesDataset with number_prob > 0.")
        targets = [examples[i]["caption"] if answer is None else answer(examples[i]["attributes"]) for i in rows]
        arrays[task] = {
            "images": images[rows],
            "prompts": np.array([prompt] * len(rows)),
            "targets": np.array(targets),
        }
    return arrays[tasks] if isinstance(tasks, str) else arrays


def shapes_task_datasets(dataset, tasks):
    """dict task -> unbatched `tf.data.Dataset` of that task over `dataset`
    (index order; `shapes_task_arrays` renders each image once)."""
    import tensorflow as tf

    arrays = shapes_task_arrays(dataset, [tasks] if isinstance(tasks, str) else tasks)
    return {task: tf.data.Dataset.from_tensor_slices(a) for task, a in arrays.items()}


def mix_tasks(datasets, weights=None, seed=None, batch_size=None):
    """Interleave task datasets by weight: an endless task mixture.

    Each element is drawn from dataset k with probability `weights[k] /
    sum(weights)` (`tf.data.Dataset.sample_from_datasets`); every dataset is
    repeated, so small tasks recur and the mixture never runs dry (use
    `steps_per_epoch` or `take`).

    Args:
        datasets: dict task name -> unbatched `tf.data.Dataset` of
            `{"images", "prompts", "targets"}` with the same structure.
        weights: dict task name -> non-negative weight (default equal).
        seed: seed of the draws and of each dataset's shuffling.
        batch_size: batch the mixture (mixed tasks in every batch).

    Returns:
        A `tf.data.Dataset`.
    """
    import tensorflow as tf

    if not datasets:
        raise ValueError("mix_tasks needs at least one task dataset.")
    names = list(datasets)
    weights = {name: 1.0 for name in names} if weights is None else dict(weights)
    unknown = set(weights) - set(names)
    if unknown or set(names) - set(weights):
        raise ValueError(
            f"weights must name exactly the tasks {sorted(names)}; got {sorted(weights)}."
        )
    values = np.array([float(weights[name]) for name in names])
    if not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
        raise ValueError(f"Task weights must be finite, >= 0 and not all 0; got {weights}.")
    structure = tf.nest.map_structure(lambda s: s.dtype, datasets[names[0]].element_spec)
    for name in names[1:]:
        other = tf.nest.map_structure(lambda s: s.dtype, datasets[name].element_spec)
        if other != structure:
            raise ValueError(f"Task {name!r} yields {other}; task {names[0]!r} yields {structure}.")
    streams = [
        datasets[name].shuffle(1024, seed=None if seed is None else seed + i).repeat()
        for i, name in enumerate(names)
    ]
    mixed = tf.data.Dataset.sample_from_datasets(
        streams, weights=(values / values.sum()).tolist(), seed=seed
    )
    return mixed if batch_size is None else mixed.batch(batch_size, drop_remainder=True)

