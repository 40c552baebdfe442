"""Writes killed with SIGKILL at random instants never lose or mix data.

A `convert`, a `save_to_preset` (a zero-shot task: backbone, preprocessor and
task in one folder) and a `BackupAndRestore` backup each write one target over
and over in a forked writer (interrupted_writer.py; write k carries k in its
weights, its tokenizer and task config alternate with k) that is killed after
a random delay: before its first write, during a write or between two. After
each kill the target is loaded with this process's backend and must be one
complete write (weights, config, tokenizer and task of the same k; a backup's
metadata, weights and optimizer step of the same k), no older than the last
state seen or than the last write the writer finished, and no newer than the
write in flight. Writes alternate the atomic swap and the two-rename commit, so
kills also land between two renames: loading recovers the last complete folder.
A final uninterrupted write leaves no temporary behind.
"""

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor, SigLIPZeroShotClassifier
from tests.helpers import pythonpath, tiny_backbone

pytestmark = pytest.mark.slow
HERE = os.path.dirname(os.path.abspath(__file__))
KILLS, MAX_KILLS = 6, 12  # more kills only if none landed during a write


class Writers:
    """The writer process (interrupted_writer.py): one JSON command per round."""

    def __init__(self, folder):
        self.errors = open(os.path.join(folder, "writer.stderr"), "w+")
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "interrupted_writer.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors, text=True,
            env={**os.environ, "KERAS_BACKEND": "numpy", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": pythonpath()},
        )
        self._protos = None

    @property
    def protos(self):
        """SHA-256 of the writers' two tokenizer protos (waits for the process to be ready)."""
        if self._protos is None:
            self._protos = self._reply()["protos"]
        return self._protos

    def round(self, kind, target, start, delay, writes=None, idle=0.0, seed=0):
        command = dict(kind=kind, target=target, start=start, delay=delay, writes=writes, idle=idle, seed=seed)
        self.protos  # noqa: B018  (the first line out)
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        reply = self._reply()
        assert reply["error"] is None, reply["error"]
        return reply

    def _reply(self):
        line = self.process.stdout.readline()
        if not line:
            self.errors.seek(0)
            raise RuntimeError("the writer process died:\n" + self.errors.read()[-3000:])
        return json.loads(line)

    def close(self):
        self.process.stdin.close()
        self.process.wait(60)
        self.errors.close()


@pytest.fixture(scope="module")
def writers(tmp_path_factory):
    process = Writers(str(tmp_path_factory.mktemp("writers")))
    yield process
    process.close()


def sha(proto):
    return hashlib.sha256(proto).hexdigest()


def marker(model):
    weight = model.weights[-1]
    assert weight.path.endswith("contrastive_head/bias")
    value = keras.ops.convert_to_numpy(weight)
    assert value.shape == (1,) and float(value[0]).is_integer()
    return int(value[0])


def read_save(target, protos):
    """The write k a task preset holds, checking its parts belong to one write."""
    task = SigLIPZeroShotClassifier.from_preset(target)
    k = marker(task.backbone)
    assert task.class_names == [f"write {k}"]
    assert sha(task.preprocessor.tokenizer.proto) == protos[k % 2]
    return k


def read_convert(target, protos):
    k = marker(SigLIPBackbone.from_preset(target))
    assert sha(SigLIPPreprocessor.from_preset(target).tokenizer.proto) == protos[k % 2]
    return k


@pytest.fixture(scope="module")
def backup_model():
    model = tiny_backbone()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    return model


def read_backup(target, model):
    """The step k of the committed backup, checking the metadata and the weights file agree."""
    with open(os.path.join(target, "training_metadata.json")) as f:
        metadata = json.load(f)
    model.optimizer.iterations.assign(-1)  # so that nothing passes by keeping the last round's values
    model.weights[-1].assign(np.full((1,), -1, "float32"))
    model.load_weights(os.path.join(target, metadata["weights"]))
    k = metadata["step"]
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == k and marker(model) == k
    return k


def ours(target):
    """Hidden entries of the atomic writers beside `target` (temporaries, lock)."""
    parent, name = os.path.split(target)
    return sorted(n for n in os.listdir(parent) if n.startswith(f".{name}."))


def visible_files(target):
    return sorted(os.path.relpath(os.path.join(root, n), target) for root, _, names in os.walk(target) for n in names)


@pytest.mark.parametrize("kind", ["save", "convert", "backup"])
def test_killed_writes_leave_a_complete_state(kind, writers, tmp_path, backup_model):
    target = str(tmp_path / kind / ("backup" if kind == "backup" else "preset"))
    read = {
        "save": lambda: read_save(target, writers.protos),
        "convert": lambda: read_convert(target, writers.protos),
        "backup": lambda: read_backup(target, backup_model),
    }[kind]
    # Two whole writes: the first state, and the time a write takes.
    first = writers.round(kind, target, start=1, delay=None, writes=2)
    assert read() == 2
    files = visible_files(target)
    duration = first["completed"][-1][1]  # the second write: the first one warms caches up
    rng = random.Random(f"{kind}-{keras.backend.backend()}")
    last, start, during, phases = 2, 3, 0, []
    for i in range(MAX_KILLS):
        if i >= KILLS and during:
            break
        delay = 0.0 if i == 0 else rng.uniform(0, 1.5 * duration)
        reply = writers.round(kind, target, start, delay, idle=0.3 * duration, seed=i)
        started, completed = reply["started"], [k for k, _ in reply["completed"]]
        in_flight = bool(started) and (not completed or started[-1] > completed[-1])
        during += in_flight
        phases.append("during" if in_flight else "between" if started else "before")
        # No partial folder under the target name: loading finds one whole write
        # (and recovers a folder a kill between two renames left hidden).
        k = read()
        assert k >= max([last] + completed), (k, last, reply)  # nothing finished is lost
        assert k <= max([last] + started), (k, last, reply)  # nothing unwritten appears
        if kind == "backup":
            metadata = json.load(open(os.path.join(target, "training_metadata.json")))
            assert metadata["weights"] in os.listdir(target)
        else:
            assert visible_files(target) == files, (set(visible_files(target)) ^ set(files))
        last, start = k, max([start - 1] + started) + 1
    assert during, f"no kill landed during a write: {phases}"
    # An uninterrupted write removes what the killed ones left.
    writers.round(kind, target, start, delay=None, writes=1)
    assert read() == start
    assert ours(target) == []
    if kind == "convert":
        assert ours(os.path.join(os.path.dirname(target), "scratch_hf")) == []
    if kind == "backup":
        assert sorted(os.listdir(target)) == sorted(["training_metadata.json", json.load(
            open(os.path.join(target, "training_metadata.json")))["weights"]])


def test_a_partial_folder_is_not_taken_for_a_preset(tmp_path):
    """A preset folder missing its weights or its config (copied in part, say)
    raises a clear error naming what is missing; nothing half-loads."""
    full = str(tmp_path / "full")
    tiny_backbone().save_to_preset(full)
    for missing, error in (("model.weights.h5", FileNotFoundError), ("config.json", ValueError)):
        partial = str(tmp_path / f"without_{missing}")
        shutil.copytree(full, partial)
        os.remove(os.path.join(partial, missing))
        with pytest.raises(error, match=missing.replace(".", r"\.")):
            SigLIPBackbone.from_preset(partial)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(SigLIPBackbone.from_preset(full).weights[0]),
        keras.ops.convert_to_numpy(tiny_backbone().weights[0]),
    )
