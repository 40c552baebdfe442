"""A task's `fit` on in-memory data reshuffles it every epoch, as `keras.Model.fit`
does (keras-hub's `Task.fit` batches arrays in order and ignores `shuffle`)."""

import inspect

import keras
import numpy as np
import pytest
from keras_hub.models import Task

import keras_siglip.models
from keras_siglip.models import SigLIPImageClassifier, SigLIPVisionEncoder
from keras_siglip.utils.fit import ShuffledArraysMixin, in_memory_batches


def epochs_of(dataset, count):
    """`count` epochs of a dataset of `{"ids", "texts"}` batches: the ids seen per epoch."""
    seen = []
    for _ in range(count):
        epoch = []
        for batch in dataset:
            ids, texts = batch["ids"].numpy(), [t.decode() for t in batch["texts"].numpy()]
            assert texts == [f"text {i}" for i in ids], "the columns of a row stay together"
            epoch.extend(ids.tolist())
        seen.append(epoch)
    return seen


def rows(count):
    return {"ids": np.arange(count), "texts": [f"text {i}" for i in range(count)]}


def test_every_epoch_sees_every_row_once_in_a_new_order():
    keras.utils.set_random_seed(0)
    first, second = epochs_of(in_memory_batches(rows(10), batch_size=4, shuffle=True), 2)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != list(range(10)) and second != first


def test_unshuffled_rows_come_in_order():
    assert epochs_of(in_memory_batches(rows(10), batch_size=4, shuffle=False), 2) == [list(range(10))] * 2


def test_whole_batches_have_a_static_size():
    assert in_memory_batches(rows(12), 4, shuffle=True).element_spec["ids"].shape[0] == 4
    assert in_memory_batches(rows(10), 4, shuffle=True).element_spec["ids"].shape[0] is None  # last batch of 2


def test_ragged_rows_are_left_to_keras_hub():
    assert in_memory_batches({"ids": [[1, 2], [3]]}, 2, shuffle=True) is None


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    encoder = SigLIPVisionEncoder(patch_size=8, image_size=16, width=16, depth=1, num_heads=2, mlp_dim=32)
    return SigLIPImageClassifier(encoder, num_classes=8)


def labels_seen(model, monkeypatch, **fit_kwargs):
    """The labels of each train (and test) step of a 2-epoch `fit` on 8 images labelled 0..7."""
    steps = {"train": [], "test": []}
    jax = keras.backend.backend() == "jax"
    for kind in steps:
        def record(labels, seen=steps[kind]):
            seen.append(np.asarray(labels).tolist())

        def counted(*args, step=getattr(model, f"{kind}_step"), record=record):
            labels = args[-1][1]  # JAX's steps take (state, data), the others data
            if jax:  # compiled: the labels of each step reach Python through a callback
                import jax as jax_module

                jax_module.debug.callback(record, labels)
            else:
                record(keras.ops.convert_to_numpy(labels))
            return step(*args)

        monkeypatch.setattr(model, f"{kind}_step", counted)
    # Eager JAX compiles every op separately (15 s); the others run eagerly (no trace to wait for).
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", run_eagerly=not jax)
    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype("float32")
    model.fit(images, np.arange(8), batch_size=2, epochs=2, verbose=0, **fit_kwargs)
    return steps


def test_task_fit_reshuffles_every_epoch(classifier, monkeypatch):
    keras.utils.set_random_seed(1)
    train = labels_seen(classifier, monkeypatch)["train"]
    first, second = sum(train[:4], []), sum(train[4:], [])
    assert sorted(first) == sorted(second) == list(range(8))
    assert first != list(range(8)) and second != first, train


def test_task_fit_without_shuffle_and_with_validation_split(classifier, monkeypatch):
    assert sum(labels_seen(classifier, monkeypatch, shuffle=False)["train"], []) == list(range(8)) * 2
    steps = labels_seen(classifier, monkeypatch, validation_split=0.25)
    assert sorted(sum(steps["train"], [])) == sorted(list(range(6)) * 2)  # the last quarter validates, as in Keras
    assert sum(steps["test"], []) == [6, 7] * 2


def test_every_task_shuffles():
    tasks = [cls for _, cls in inspect.getmembers(keras_siglip.models, inspect.isclass) if issubclass(cls, Task)]
    assert len(tasks) >= 8, tasks
    assert [cls.__name__ for cls in tasks if not issubclass(cls, ShuffledArraysMixin)] == []
