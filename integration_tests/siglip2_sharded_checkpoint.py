"""SigLIP2Pretrainer backed up shard by shard (Orbax) on 4 virtual CPU devices (JAX).

Run by test_sharded_checkpoint.py in a subprocess (the device count is set
before JAX starts); prints one JSON object with what it measured.

FSDP (every kernel split over the 4 devices: `SigLIPBackbone.get_layout_map`
with no model axis; it covers the decoder and the stage-B teacher too), Adam.

- Stage A: a model with random values in every weight and optimizer slot is
  backed up by `ShardedBackupAndRestore` and restored into a fresh model by
  `load_sharded_state` (no stage switch).
- Stage B: one uninterrupted run of 2 epochs of 2 steps, stage B from the
  first step, backs up after every step in the background and, before the
  backup of steps 2 and 4, copies its folder as a process killed then would
  leave it (the backups of steps 1 and 3, written while the next step
  trained). Fresh models, in stage A until the restore starts stage B, resume
  from the copies mid-epoch.

(Only stage B is trained: every program compiled costs 10-20 s here. A
resumed stage-A run switching to stage B later runs the same code for every
backup format; tests/models/siglip2 covers it with `.weights.h5`.)

Measured: the checkpoints' layout (each sharded array written as per-device
chunks with its partition spec); every conversion of a sharded jax.Array to
one host array made inside Orbax or `keras_siglip.callbacks` (a gather),
with a `.weights.h5` backup as the control; the restored state against the
saved one (values, shardings); the resumed runs' per-step losses and final
state against the uninterrupted run's.
"""

import json
import os
import shutil
import sys
import tempfile
import threading

os.environ["KERAS_BACKEND"] = "jax"
# Level 0 compiles in about half the time; every run here shares it, so they stay comparable bit for bit.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
                           " --xla_backend_optimization_level=0")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from jax._src import array as jax_array  # noqa: E402

from keras_siglip.callbacks import BackupAndRestore, ShardedBackupAndRestore, load_sharded_state  # noqa: E402
from keras_siglip.models import SigLIPBackbone  # noqa: E402
from keras_siglip.models.siglip2.siglip2_pretrainer import TERMS  # noqa: E402
from tests.tiny_pretrainer import make_inputs, make_pretrainer  # noqa: E402

DEVICES = keras.distribution.list_devices()
BATCH, STEPS, EPOCHS = 8, 2, 2
LOGGED = ("loss",) + TERMS
OWN_CODE = (os.sep + "orbax" + os.sep, os.path.join("keras_siglip", "callbacks.py"))

# Gathers: a sharded jax.Array turned into one host array from inside Orbax or
# keras_siglip.callbacks (any thread: background saves included).
GATHERS, _LOCK = [], threading.Lock()
_value, _array = jax_array.ArrayImpl._value, jax_array.ArrayImpl.__array__


def _note(array):
    if array.sharding.is_fully_replicated:
        return  # one device's copy is the whole array: nothing to gather
    frame = sys._getframe(1)
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in OWN_CODE):
            with _LOCK:
                GATHERS.append([id(array), list(array.shape), frame.f_code.co_filename])
            return
        frame = frame.f_back


jax_array.ArrayImpl._value = property(lambda self: (_note(self), _value.fget(self))[1])
jax_array.ArrayImpl.__array__ = lambda self, *a, **k: (_note(self), _array(self, *a, **k))[1]


def new_model():
    model = make_pretrainer(total_steps=EPOCHS * STEPS, distillation_start=0.0, compile=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def variables(model):
    return list(model.weights) + list(model.optimizer.variables)


def state(model):
    return {
        "values": [np.array(v.value) for v in variables(model)],
        "specs": [str(v.value.sharding.spec) for v in variables(model)],
        "paths": [v.path for v in variables(model)],
    }


def compare(model, expected):
    """A model's state against a saved one (variables by position)."""
    got = state(model)
    return {
        "distilling": model.distilling,
        "count": [len(got["values"]), len(expected["values"])],
        "max_diff": max(float(np.max(np.abs(a - b))) if a.size else 0.0
                        for a, b in zip(got["values"], expected["values"])),
        "same_specs": got["specs"] == expected["specs"],
        # The paths differ only in automatic names (adam_1, ...).
        "renamed": sorted({a.split("/")[0] for a, b in zip(got["paths"], expected["paths"]) if a != b}),
        "sharded": sum(1 for s in got["specs"] if "batch" in s),
    }


class Recorder(keras.callbacks.Callback):
    """Per trained step: its optimizer step and the running means logged."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_epoch_begin(self, epoch, logs=None):
        self.trained = 0

    def on_train_batch_end(self, batch, logs=None):
        if logs:  # a skipped (already trained) step logs nothing
            self.trained += 1
            step = int(np.array(self.model.optimizer.iterations.value))
            self.steps.append((step, self.trained, {t: float(logs[t]) for t in LOGGED}))

    def per_step(self):
        """Each step's own values, from the epoch's running means."""
        out, previous = {}, None
        for step, n, means in self.steps:
            out[step] = {t: n * means[t] - (n - 1) * previous[t] if n > 1 else means[t] for t in LOGGED}
            previous = means
        return out


class Copy(keras.callbacks.Callback):
    """Before the backup callback at step k: wait for the backup of step k - 1
    (written while step k trained) and copy the folder, as a process killed
    now would leave it. Records the state each backup holds."""

    def __init__(self, backup, copies):
        super().__init__()
        self.backup, self.copies, self.snapshots = backup, copies, {}

    def on_train_batch_end(self, batch, logs=None):
        step = int(np.array(self.model.optimizer.iterations.value))
        if step in self.copies:
            self.backup.wait_until_finished()
            shutil.copytree(self.backup.backup_dir, self.copies[step])
        self.snapshots[step] = state(self.model)  # what the backup of this step (next callback) holds


class CheckRestored(keras.callbacks.Callback):
    """Right after the backup callback restored (it runs first)."""

    def __init__(self, expected):
        super().__init__()
        self.expected, self.result = expected, None

    def on_train_begin(self, logs=None):
        self.result = compare(self.model, self.expected)


def fit(model, callbacks):
    recorder = Recorder()
    model.fit(make_inputs(batch=BATCH * STEPS), batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=list(callbacks) + [recorder])
    return recorder


def layout(folder, model_state):
    """Each sharded array's partition spec and written chunk, from the checkpoint's metadata."""
    from orbax.checkpoint import v1 as ocp

    steps = sorted(name for name in os.listdir(folder) if name.isdigit())
    step_dir = os.path.join(folder, steps[-1])
    groups = ocp.metadata(step_dir, checkpointable_name="pytree").metadata
    sharded, wrong = 0, []
    for path, spec in zip(model_state["paths"], model_state["specs"]):
        if "batch" not in spec:
            continue  # replicated
        for tree in groups.values():
            node = tree
            for part in path.split("/"):
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                break
        if node is None:
            wrong.append([path, "not in the checkpoint"])
            continue
        sharded += 1
        saved_spec = tuple(getattr(node.sharding_metadata, "partition_spec", ()))
        shape, write = tuple(node.shape), tuple(node.storage_metadata.write_shape)
        shard = tuple(d // 4 if axis == "batch" else d for d, axis in zip(shape, saved_spec + (None,) * len(shape)))
        if "batch" not in saved_spec or write != shard:
            wrong.append([path, list(shape), list(write), str(saved_spec)])
    files = sorted(os.listdir(os.path.join(step_dir, "pytree")))
    return {"steps": steps, "sharded": sharded, "wrong": wrong, "files": files}


def stage_a(root):
    """Random values in every variable; back up, restore into a fresh model."""
    model = new_model()
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    for v in variables(model):
        kind = np.dtype(v.dtype).kind
        v.assign(rng.integers(0, 100, v.shape).astype(v.dtype) if kind in "iu" else
                 rng.normal(size=v.shape).astype(v.dtype))
    expected = state(model)
    backup = ShardedBackupAndRestore(os.path.join(root, "stage_a"), save_on_background=False)
    backup.set_model(model)
    backup._save_model()
    backup._close()
    out = {"layout": layout(backup.backup_dir, expected)}
    fresh = new_model()
    out["where"] = load_sharded_state(fresh, backup.backup_dir)
    out["restored"] = compare(fresh, expected)
    return out


def main():
    keras.distribution.set_distribution(keras.distribution.ModelParallel(
        layout_map=SigLIPBackbone.get_layout_map(keras.distribution.DeviceMesh((4,), ["batch"], DEVICES),
                                                 model_axis=None),
        batch_dim_name="batch",
    ))
    root = tempfile.mkdtemp()
    # Fresh models compile what the uninterrupted run compiled: read it back.
    jax.config.update("jax_compilation_cache_dir", os.path.join(root, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    try:
        results = {"devices": len(DEVICES), "stage_a": stage_a(root)}

        copies = {2: os.path.join(root, "killed_after_2"), 4: os.path.join(root, "killed_after_4")}
        backup = ShardedBackupAndRestore(os.path.join(root, "backup"), save_freq=1)
        copy = Copy(backup, copies)
        reference_model = new_model()
        reference = fit(reference_model, [copy, backup])
        final = state(reference_model)
        results["backup_removed"] = not os.path.exists(backup.backup_dir)
        results["gathers"] = len(GATHERS)

        # The spy's control: a .weights.h5 backup of the same state gathers every sharded array.
        h5 = BackupAndRestore(os.path.join(root, "h5"))
        h5.set_model(reference_model)
        h5._save_model()
        results["gathers_h5"] = len({g[0] for g in GATHERS[results["gathers"]:]})
        del GATHERS[results["gathers"]:]

        for killed_after, saved_at in ((2, 1), (4, 3)):
            folder = copies[killed_after]
            saved = layout(folder, copy.snapshots[saved_at])
            check = CheckRestored(copy.snapshots[saved_at])
            model = new_model()
            resumed = fit(model, [ShardedBackupAndRestore(folder, save_freq=100), check])
            ref_steps, got_steps = reference.per_step(), resumed.per_step()
            got = state(model)
            results[f"resumed_{saved_at}"] = {
                "layout": saved,
                "restored": check.result,
                "trained_steps": sorted(got_steps),
                "losses": max(abs(got_steps[s][t] - ref_steps[s][t]) / max(1.0, abs(ref_steps[s][t]))
                              for s in got_steps for t in LOGGED),
                "final": max(float(np.max(np.abs(a - b))) if a.size else 0.0
                             for a, b in zip(got["values"], final["values"])),
                "final_count": [len(got["values"]), len(final["values"])],
                "iterations": int(np.array(model.optimizer.iterations.value)),
                "folder_removed": not os.path.exists(folder),
            }
        results["gathers"] = GATHERS  # every sharded save and restore above
    finally:
        shutil.rmtree(root, ignore_errors=True)
        keras.distribution.set_distribution(None)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
