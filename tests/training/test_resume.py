"""Interrupted and resumed training ends where an uninterrupted run ends; backups
are atomic.

Deterministic data (no shuffle), 8 examples in batches of 2 (4 steps an epoch),
3 epochs, Adam. Weights and optimizer state (step count, moments) are compared
exactly: the resumed run executes the same compiled steps on the same values.
"""

import json
import os

import keras
import numpy as np
import pytest

from keras_siglip.callbacks import BackupAndRestore
from tests.helpers import tiny_backbone

EPOCHS, BATCH = 3, 2


class Crash(Exception):
    pass


class CrashAfter(keras.callbacks.Callback):
    """Raise after `step` train steps (counted over epochs) or after epoch `epoch`."""

    def __init__(self, step=None, epoch=None):
        super().__init__()
        self.step, self.epoch, self.seen = step, epoch, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            raise Crash(f"after step {self.step}")

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Crash(f"after epoch {epoch}")


def data():
    rng = np.random.default_rng(0)
    return {
        "images": rng.uniform(-1, 1, (8, 32, 32, 3)).astype("float32"),
        "token_ids": rng.integers(0, 60, (8, 8)).astype("int32"),
    }


def new_model():
    """A fresh process's model: same initial weights, freshly compiled."""
    model = tiny_backbone()
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    return model


def fit(model, callbacks):
    return model.fit(data(), batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks)


def state(model):
    return [np.array(v) for v in model.weights] + [np.array(v) for v in model.optimizer.variables]


def assert_same_state(model, expected):
    actual = state(model)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


@pytest.fixture(scope="module")
def uninterrupted():
    model = new_model()
    fit(model, [])
    assert int(np.array(model.optimizer.iterations)) == EPOCHS * 4
    return state(model)


@pytest.mark.parametrize(
    "save_freq, crash",
    [
        ("epoch", dict(epoch=0)),  # after an epoch, backed up at its end
        ("epoch", dict(step=7)),  # mid-epoch: redo epoch 1 from its start
        (2, dict(step=6)),  # mid-epoch 1, just backed up: skip its first 2 steps
        (3, dict(step=8)),  # end of epoch 1, last backup at step 6: redo 2 steps
    ],
)
def test_resumed_training_ends_with_the_uninterrupted_state(tmp_path, uninterrupted, save_freq, crash):
    backup = BackupAndRestore(str(tmp_path / "backup"), save_freq=save_freq)
    with pytest.raises(Crash):
        fit(new_model(), [backup, CrashAfter(**crash)])
    assert os.path.exists(tmp_path / "backup" / "training_metadata.json")
    model = new_model()  # a new process: the state comes from the backup only
    history = fit(model, [BackupAndRestore(str(tmp_path / "backup"), save_freq=save_freq)])
    assert len(history.history["loss"]) < EPOCHS
    assert_same_state(model, uninterrupted)
    assert not os.path.exists(tmp_path / "backup")  # removed once fit completes
    assert model._initial_epoch is None  # a later plain fit starts at its own epoch 0


def test_keras_callback_repeats_the_trained_steps_of_a_resumed_epoch(tmp_path, uninterrupted):
    """Why ours exists: Keras' BackupAndRestore restarts a mid-epoch backup's epoch
    at its first batch (those steps are trained twice)."""
    folder = str(tmp_path / "keras")
    with pytest.raises(Crash):
        fit(new_model(), [keras.callbacks.BackupAndRestore(folder, save_freq=2), CrashAfter(step=6)])
    model = new_model()
    fit(model, [keras.callbacks.BackupAndRestore(folder, save_freq=2)])
    assert int(np.array(model.optimizer.iterations)) == EPOCHS * 4 + 2
    assert not all(np.array_equal(a, e) for a, e in zip(state(model), uninterrupted))


def crash_while_writing_weights(monkeypatch, after=5):
    """Make the HDF5 weight writer fail after writing `after` variables."""
    from keras.src.saving import saving_lib

    original = saving_lib.H5IOStore.__setitem__
    written = []

    def failing(self, key, value):
        if len(written) == after:
            raise OSError("disk full (simulated)")
        written.append(key)
        return original(self, key, value)

    monkeypatch.setattr(saving_lib.H5IOStore, "__setitem__", failing)


class Snapshot(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.states = []

    def on_epoch_end(self, epoch, logs=None):
        self.states.append(state(self.model))


def test_a_crash_while_backing_up_leaves_the_previous_backup_whole(tmp_path, monkeypatch, uninterrupted):
    folder = str(tmp_path / "backup")
    backup, snapshots = BackupAndRestore(folder), Snapshot()

    class CrashNextBackup(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:  # epoch 0 was backed up; the next backup's write fails
                crash_while_writing_weights(monkeypatch)

    with pytest.raises(OSError, match="simulated"):
        fit(new_model(), [CrashNextBackup(), snapshots, backup])
    monkeypatch.undo()
    metadata = json.load(open(os.path.join(folder, "training_metadata.json")))
    assert metadata["epoch"] == 1 and metadata["step"] == 0
    assert sorted(os.listdir(folder)) == sorted(["training_metadata.json", metadata["weights"]])
    # The previous backup loads and holds the state after epoch 0.
    restored = new_model()
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(os.path.join(folder, metadata["weights"]))
    assert_same_state(restored, snapshots.states[0])
    # And training resumes from it to the uninterrupted end state.
    model = new_model()
    fit(model, [BackupAndRestore(folder)])
    assert_same_state(model, uninterrupted)


def test_keras_callback_loses_its_only_backup_to_a_crash_while_writing(tmp_path, monkeypatch):
    """Why ours exists: Keras writes `latest.weights.h5` in place, so the backup of
    epoch 0 is gone: the half-written file is the only weights file left, and it
    fails to load (its first 5 variables were written, the other layers have none;
    the same on jax, tensorflow and torch)."""
    folder = str(tmp_path / "keras")
    snapshots = Snapshot()

    class CrashNextBackup(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                crash_while_writing_weights(monkeypatch)

    with pytest.raises(OSError, match="simulated"):
        fit(new_model(), [CrashNextBackup(), snapshots, keras.callbacks.BackupAndRestore(folder)])
    monkeypatch.undo()
    assert len(snapshots.states) == 2  # epoch 0 was backed up; the crash hit epoch 1's backup
    assert [name for name in os.listdir(folder) if name.endswith(".h5")] == ["latest.weights.h5"]
    model = new_model()
    model.optimizer.build(model.trainable_variables)
    with pytest.raises(ValueError, match="could not be loaded"):
        model.load_weights(os.path.join(folder, "latest.weights.h5"))
