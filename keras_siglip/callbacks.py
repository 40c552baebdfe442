"""Training callbacks: crash-safe, exact backup and restore of `fit` (`.weights.h5`, or
Orbax checkpoints written shard by shard for sharded training)."""

import contextlib
import glob
import json
import os
import uuid

import keras
import numpy as np

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
        self._restore(metadata)
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

    def _restore(self, metadata):
        self.model.load_weights(os.path.join(self.backup_dir, metadata["weights"]))

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


# === Sharded backups (Orbax) ===

_ORBAX_FORMAT = "keras_siglip.ShardedBackupAndRestore/1"
_GROUPS = ("trainable_variables", "non_trainable_variables", "optimizer_variables")


class ShardedBackupAndRestore(BackupAndRestore):
    """`BackupAndRestore` whose backups are Orbax checkpoints, written shard by shard.

    The same exact mid-epoch resumption as `BackupAndRestore` (same
    arguments, same `fit` usage), but the state goes to an Orbax checkpoint
    (OCDBT / Zarr through TensorStore) instead of a `.weights.h5` file. On
    JAX under a `keras.distribution` (`ModelParallel`, FSDP layouts from
    `keras_siglip.distribution`) every array is written from the devices
    that hold it, one chunk per shard, by the process that owns them: nothing
    is gathered onto one host, and on several hosts each writes its own
    shards (Orbax coordinates the commit). Resuming reads each array straight
    into the sharding of the variable it restores, each device only its
    shard. `.weights.h5` backups gather every array onto the host first.

    Saved: the trainable and non-trainable variables (seed generator states
    included: a resumed run draws what an uninterrupted one would) and the
    optimizer's variables, as `keras.Model.get_state_tree()` lays them out,
    plus the epoch and step in the checkpoint's metadata. Restored by
    `load_sharded_state`, which matches variables by position and checks
    their shapes: a fresh model whose automatic names differ (a second
    optimizer in one process is `adam_1`) still restores everything.
    (`keras.Model.load_weights` on this folder also loads, but matches by
    path and silently skips paths it does not find: all the optimizer state,
    for `adam_1`.)

    A model defining `prepare_to_load(path)` gets it called first, so it can
    create the variables the checkpoint has (`SigLIP2Pretrainer` starts stage
    B for a checkpoint saved in stage B).

    Each backup is committed by Orbax's atomic rename of a finished
    checkpoint; only the latest is kept. A backup killed mid-write is never
    read (and is removed by the next run). Unlike `BackupAndRestore`, no
    writer lock is taken (several hosts write one checkpoint): give each
    training job its own `backup_dir`.

    Needs `orbax-checkpoint` (`pip install "keras-siglip[orbax]"`).

    Args:
        backup_dir: a folder used only by this callback.
        save_freq: `"epoch"`, or back up every `save_freq` train steps.
        delete_checkpoint: remove `backup_dir` when `fit` completes.
        save_on_background: return once the arrays are copied to host memory
            and write them in a background thread (`fit` goes on meanwhile).
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True, save_on_background=True):
        _orbax()
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=delete_checkpoint)
        self.save_on_background = save_on_background
        self._checkpointer = None
        self._next_checkpoint = 0

    def _open(self):
        if self._checkpointer is None:
            ocp = _orbax()
            self._checkpointer = ocp.training.Checkpointer(
                self.backup_dir,
                save_decision_policy=ocp.training.save_decision_policies.FixedIntervalPolicy(1),
                preservation_policy=ocp.training.preservation_policies.LatestN(1),
                cleanup_tmp_directories=True,
            )
            latest = self._checkpointer.latest
            self._next_checkpoint = 0 if latest is None else latest.step + 1
        return self._checkpointer

    def wait_until_finished(self):
        """Block until the backups written in the background are committed."""
        if self._checkpointer is not None:
            self._checkpointer.wait()

    def _close(self):
        if self._checkpointer is not None:
            self._checkpointer.close()  # waits for a background save
            self._checkpointer = None

    def on_train_begin(self, logs=None):
        self._close()  # an interrupted `fit`'s checkpointer
        super().on_train_begin(logs)

    def _read_metadata(self):
        if os.path.exists(self._training_metadata_path):
            raise ValueError(
                f"{self.backup_dir} holds a .weights.h5 backup of keras_siglip.callbacks.BackupAndRestore; "
                "resume with that callback or give this one an empty folder."
            )
        if not os.path.isdir(self.backup_dir):
            return None
        latest = self._open().latest
        if latest is None:
            return None
        info = _backup_info(latest.path)
        return {"epoch": info["epoch"], "step": info["step"], "checkpoint": os.fspath(latest.path)}

    def _restore(self, metadata):
        load_sharded_state(self.model, metadata["checkpoint"])

    def _save_model(self):
        tree, order = _state_tree(self.model)
        metadata = {"format": _ORBAX_FORMAT, "epoch": self._epoch, "step": self._steps_done, "variables": order}
        checkpointer = self._open()
        step, self._next_checkpoint = self._next_checkpoint, self._next_checkpoint + 1
        save = checkpointer.save_checkpointables_async if self.save_on_background else checkpointer.save_checkpointables
        save(step, {"pytree": tree}, custom_metadata=metadata)

    def on_train_end(self, logs=None):
        self._close()
        delete = self.delete_checkpoint
        self.delete_checkpoint = delete and _is_primary_process()  # one host removes the shared folder
        try:
            super().on_train_end(logs)
        finally:
            self.delete_checkpoint = delete


def load_sharded_state(model, directory, step=None):
    """Restore a `ShardedBackupAndRestore` backup into `model`.

    Restores the trainable and non-trainable variables (seed generator states
    included) and the optimizer's variables (building the optimizer first if
    needed). On JAX each array is read into the sharding of the variable it
    restores (under a `keras.distribution`, each device reads only its own
    shard) and assigned without a gather. Variables are matched by their
    position in `model.trainable_variables`, `model.non_trainable_variables`
    and `model.optimizer.variables` (as the `.weights.h5` format and Keras'
    JAX trainer match them), not by name; counts and shapes must agree.
    A model with a `prepare_to_load(path)` method gets it called first.

    Args:
        model: a built `keras.Model` of the architecture that was saved.
        directory: the callback's `backup_dir` (its latest backup is read) or
            the folder of one checkpoint in it.
        step: the Orbax step of the checkpoint to read, in `directory`.

    Returns:
        The backup's `{"epoch": ..., "step": ...}`: where `fit` stood.
    """
    ocp = _orbax()
    path = _checkpoint_path(directory, step)
    prepare = getattr(model, "prepare_to_load", None)
    if prepare is not None:
        prepare(path)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    info = _backup_info(path)
    saved_tree = ocp.metadata(path, checkpointable_name="pytree").metadata
    variables = _variables(model)
    on_jax = keras.backend.backend() == "jax"
    if on_jax:
        import jax
    matched, abstract = [], {}
    for group in _GROUPS:
        saved, current = info["variables"].get(group, []), variables[group]
        if len(saved) != len(current):
            raise ValueError(
                f"{path} holds {len(saved)} {group.replace('_', ' ')}; the model has {len(current)}. "
                "Restore into the architecture (and training stage) that was saved."
            )
        leaves = []
        for saved_path, variable in zip(saved, current):
            shape = tuple(_lookup(saved_tree[group], saved_path).shape)
            if shape != tuple(variable.shape):
                raise ValueError(
                    f"{path}: {group} {saved_path} has shape {shape}; the model's {variable.path} "
                    f"has {tuple(variable.shape)}."
                )
            if on_jax:
                value = variable.value
                leaves.append((saved_path, jax.ShapeDtypeStruct(shape, value.dtype, sharding=value.sharding)))
            matched.append((group, saved_path, variable))
        if saved:
            abstract[group] = _nest(leaves)
    loaded = ocp.load_checkpointables(path, {"pytree": abstract if on_jax else None})["pytree"]
    for group, saved_path, variable in matched:
        value = _lookup(loaded[group], saved_path)
        variable.assign(value if on_jax else np.asarray(value))
    return {"epoch": info["epoch"], "step": info["step"]}


def checkpoint_variable_paths(path):
    """The variable paths an Orbax checkpoint holds, by group (`"trainable_variables"`, ...).

    `path`: a `ShardedBackupAndRestore` or `keras.callbacks.OrbaxCheckpoint`
    folder (its latest checkpoint is read) or one checkpoint's folder. Reads
    metadata only."""
    tree = _orbax().metadata(_checkpoint_path(path), checkpointable_name="pytree").metadata
    paths = {}
    for group, subtree in tree.items():
        paths[group] = []
        stack = [("", subtree)]
        while stack:
            prefix, node = stack.pop()
            if isinstance(node, dict):
                stack.extend((f"{prefix}{key}/", child) for key, child in node.items())
            else:
                paths[group].append(prefix[:-1])
    return paths


def is_orbax_checkpoint(path):
    """Whether `path` is one Orbax checkpoint's folder or a folder of them."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return False
    if os.path.isdir(os.path.join(path, "pytree")):
        return True
    return any(name.isdigit() and os.path.isdir(os.path.join(path, name)) for name in os.listdir(path))


def _orbax():
    try:
        from orbax.checkpoint import v1 as ocp
    except ImportError as error:
        raise ImportError(
            "Sharded checkpoints need the `orbax-checkpoint` package: pip install \"keras-siglip[orbax]\"."
        ) from error
    return ocp


def _checkpoint_path(directory, step=None):
    """One checkpoint's folder: `directory` itself, or its latest (or `step`) checkpoint."""
    directory = os.fspath(directory)
    if step is None and os.path.isdir(os.path.join(directory, "pytree")):
        return directory
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No Orbax checkpoint folder at {directory}.")
    checkpointer = _orbax().training.Checkpointer(directory)
    try:
        checkpoints = checkpointer.checkpoints
    finally:
        checkpointer.close()
    if step is not None:
        checkpoints = [c for c in checkpoints if c.step == step]
    if not checkpoints:
        raise FileNotFoundError(f"No finished Orbax checkpoint{'' if step is None else f' {step}'} in {directory}.")
    return os.fspath(checkpoints[-1].path)


def _backup_info(path):
    info = _orbax().checkpointables_metadata(path).custom_metadata or {}
    if info.get("format") != _ORBAX_FORMAT:
        raise ValueError(
            f"{path} is not a backup of keras_siglip.callbacks.ShardedBackupAndRestore "
            "(a keras.callbacks.OrbaxCheckpoint? load it with model.load_weights)."
        )
    return info


def _variables(model):
    """The backed-up variables by group, in the order of Keras' JAX train state."""
    optimizer = getattr(model, "optimizer", None)
    return {
        "trainable_variables": list(model.trainable_variables),
        "non_trainable_variables": list(model.non_trainable_variables),
        "optimizer_variables": list(optimizer.variables) if optimizer is not None else [],
    }


def _state_tree(model):
    """`model.get_state_tree()`'s layout (less metrics) and each group's paths in order.
    On JAX the leaves are the variables' own (sharded) arrays; no copy is made here."""
    on_jax = keras.backend.backend() == "jax"
    tree, order = {}, {}
    for group, variables in _variables(model).items():
        order[group] = [v.path for v in variables]
        if not variables:
            continue  # Orbax restores no empty subtree: leave it out of both
        tree[group] = _nest(
            (v.path, v.value if on_jax else np.asarray(keras.ops.convert_to_numpy(v.value))) for v in variables
        )
    return tree, order


def _nest(items):
    tree = {}
    for path, value in items:
        *parents, leaf = path.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        if leaf in node:
            raise ValueError(f"Two variables have the path {path!r}; sharded backups need unique paths.")
        node[leaf] = value
    return tree


def _lookup(tree, path):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def _is_primary_process():
    if keras.backend.backend() != "jax":
        return True
    import jax

    return jax.process_index() == 0
