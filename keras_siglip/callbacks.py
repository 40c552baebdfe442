"""Training callbacks: crash-safe, exact backup and restore of `fit`."""

import contextlib
import glob
import json
import os
import uuid

import keras

from keras_siglip.utils.atomic import atomic_file, remove_stale, writer_lock

_STATE_PREFIX = "state-"
_STATE_SUFFIX = ".weights.h5"
_STATE_NAME = r"state-\d+-\d+-[0-9a-f]{8}\.weights\.h5"  # the weights files `_save_model` names
_METADATA_NAME = r"training_metadata\.json"


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore`, crash-safe and exact mid-epoch.

    Back up the training state (weights, optimizer state, epoch and step) to
    `backup_dir` during `fit`; a later `fit` with the same callback, model,
    `compile` and data resumes from the last backup. Differences from Keras':

    - Atomic. Each backup writes a new weights file, then commits it by
      replacing `training_metadata.json` (epoch, step, file name) with
      `os.replace`. A crash at any moment leaves the previous backup whole
      and consistent. (Keras overwrites `latest.weights.h5` in place and then
      the metadata: a crash while writing the weights destroys the only
      backup, and one between the two writes pairs new weights with the old
      epoch.) A backup holds `backup_dir`'s writer lock (see
      `keras_siglip.utils.atomic`): two processes never back up into one
      folder at once, and what a killed backup left (temporary files, a
      weights file never committed) is removed by the next one.
    - Exact mid-epoch. With `save_freq=N` steps, resuming from a backup made
      in the middle of an epoch skips the steps of that epoch already trained
      (their batches are drawn and dropped without a train step), so with
      the same data order the resumed run ends with the same weights and
      optimizer state as an uninterrupted one. (Keras restarts the epoch at
      its first batch and trains those batches twice; and after a resume, its
      mid-epoch backups record epoch 0 until an epoch ends.) Skipping needs
      `steps_per_execution=1`.

    Args:
        backup_dir: a folder used only by this callback.
        save_freq: `"epoch"`, or back up every `save_freq` train steps.
        delete_checkpoint: remove `backup_dir` when `fit` completes.
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=delete_checkpoint)
        self._epoch = 0
        self._steps_done = 0  # train steps finished in the current epoch
        self._skip_until = 0  # steps of the resumed epoch to draw without training
        self._train_function = None

    # Restore.

    def on_train_begin(self, logs=None):
        self._stop_skipping()  # a run interrupted while skipping left it installed
        self._epoch, self._steps_done, self._skip_until = 0, 0, 0
        metadata = self._read_metadata()
        if metadata is None:
            return
        if not self.model.built:
            raise ValueError(
                "To resume with BackupAndRestore the model must be built before `fit()`; "
                "call it on a batch of data first."
            )
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, metadata["weights"]))
        self._epoch = self.model._initial_epoch = metadata["epoch"]
        if metadata["step"]:
            if self.model.steps_per_execution != 1:
                raise ValueError(
                    "Resuming from a mid-epoch backup skips the steps already trained, which "
                    "needs steps_per_execution=1; got "
                    f"{self.model.steps_per_execution}."
                )
            self._skip_until = metadata["step"]
            self._train_function = self.model.train_function
            self.model.train_function = _skip_step()

    def _read_metadata(self):
        path = self._training_metadata_path
        if not os.path.exists(path):
            return None
        with open(path) as f:
            metadata = json.load(f)
        if "weights" not in metadata:
            raise ValueError(
                f"{self.backup_dir} holds a backup of keras.callbacks.BackupAndRestore, "
                "not of keras_siglip.callbacks.BackupAndRestore; resume with Keras' callback "
                "or give this one an empty folder."
            )
        return metadata

    def _stop_skipping(self):
        if self._train_function is not None:
            self.model.train_function = self._train_function
            self._train_function = None

    # Back up.

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._steps_done, self._last_batch_seen = epoch, 0, 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps_done = batch + 1
        if self._steps_done <= self._skip_until:
            self._last_batch_seen = batch  # a skipped step: nothing trained, no backup
            if self._steps_done == self._skip_until:
                self._stop_skipping()
            return
        if self._should_save_on_batch(batch):
            self._save_model()

    def on_epoch_end(self, epoch, logs=None):
        self._stop_skipping()
        self._epoch, self._steps_done, self._skip_until = epoch + 1, 0, 0
        self._last_batch_seen = 0
        if self.save_freq == "epoch":
            self._save_model()

    def on_train_end(self, logs=None):
        self._stop_skipping()
        self.model._initial_epoch = None  # a later plain `fit` starts at its own epoch
        super().on_train_end(logs)

    def _save_model(self):
        # Write-once weights files (a new name each time), committed by replacing
        # the metadata that names them; older ones are removed after the commit.
        # The metadata's writer lock covers the whole backup, so while it is held
        # every temporary in the folder is a killed backup's.
        name = f"{_STATE_PREFIX}{self._epoch}-{self._steps_done}-{uuid.uuid4().hex[:8]}{_STATE_SUFFIX}"
        with writer_lock(self._training_metadata_path) as owner:
            if owner:
                remove_stale(self.backup_dir, _STATE_NAME, _STATE_SUFFIX)
                remove_stale(self.backup_dir, _METADATA_NAME)
            with atomic_file(os.path.join(self.backup_dir, name), suffix=_STATE_SUFFIX, lock=False) as tmp:
                self.model.save_weights(tmp, overwrite=True)
            metadata = {"epoch": self._epoch, "step": self._steps_done, "weights": name}
            with atomic_file(self._training_metadata_path, lock=False) as tmp:
                with open(tmp, "w") as f:
                    json.dump(metadata, f)
            for path in glob.glob(os.path.join(self.backup_dir, f"*{_STATE_SUFFIX}")):
                if os.path.basename(path) != name:
                    with contextlib.suppress(OSError):
                        os.remove(path)


def _skip_step():
    """A train function that draws one step's batch and trains nothing."""
    backend = keras.backend.backend()
    if backend == "jax":
        def skip(state, iterator):
            next(iterator)
            return {}, state
    elif backend == "tensorflow":
        def skip(iterator):
            next(iterator)
            return {}
    else:
        def skip(data):
            return {}
    return skip
