"""Sharded backups of SigLIP2Pretrainer (`keras_siglip.callbacks.ShardedBackupAndRestore`,
Orbax): on a JAX mesh of 4 virtual CPU devices with FSDP weights, every array
is written as per-device chunks without a gather, and fresh models restore
(stage A) and resume mid-stage B exactly. Runs siglip2_sharded_checkpoint.py
in a subprocess (the device count is set before JAX starts)."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import pytest

from tests.helpers import pythonpath

pytest.importorskip("orbax.checkpoint")

HERE = pathlib.Path(__file__).parent
pytestmark = pytest.mark.slow
RESUMED = ("resumed_1", "resumed_3")


@pytest.fixture(scope="module")
def results():
    if keras.backend.backend() != "jax":
        pytest.skip("keras.distribution meshes run on JAX")
    run = subprocess.run(
        [sys.executable, str(HERE / "siglip2_sharded_checkpoint.py")], capture_output=True, text=True,
        timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": pythonpath()},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_arrays_are_written_shard_by_shard_without_a_gather(results):
    """The checkpoint's metadata records every FSDP-sharded array (weights,
    teacher, optimizer slots) with its partition spec and a written chunk of
    one device's shard (a quarter of it). No sharded array is turned into one
    host array inside Orbax or the callback, saving (in the background too)
    or restoring. The control: a `.weights.h5` backup of the same state
    gathers every sharded array."""
    assert results["devices"] == 4
    for name in ("stage_a",) + RESUMED:
        layout = results[name]["layout"]
        assert layout["sharded"] >= 100 and layout["wrong"] == [], (name, layout)
        assert "ocdbt.process_0" in layout["files"] and "_sharding" in layout["files"]
    assert results["gathers"] == []
    assert results["gathers_h5"] == results["resumed_3"]["restored"]["sharded"]


def test_stage_a_state_restores_into_a_fresh_model(results):
    """Random values in every weight, seed state and optimizer slot, restored
    by `load_sharded_state` into a fresh model whose optimizer has another
    automatic name: equal, laid out as saved, still in stage A."""
    got = results["stage_a"]
    restored = got["restored"]
    assert restored["max_diff"] == 0.0 and restored["same_specs"], restored
    assert restored["count"][0] == restored["count"][1] and not restored["distilling"]
    assert restored["renamed"] and restored["sharded"] >= 100
    assert got["where"] == {"epoch": 0, "step": 0}


@pytest.mark.parametrize("name", RESUMED)
def test_a_fresh_model_resumes_stage_b_exactly(results, name):
    """Backups of step 1 (mid-epoch 0) and step 3 (mid-epoch 1), both in stage
    B, written in the background while the next step trained: a fresh model
    (stage A: no teacher, heads or their optimizer slots) restores them,
    entering stage B; every weight and optimizer variable is equal and laid
    out as saved; the resumed run's per-step losses match the uninterrupted
    run's to 1e-6, it ends in the same state and removes the folder."""
    got = results[name]
    restored = got["restored"]
    assert restored["distilling"]
    assert restored["count"][0] == restored["count"][1]
    assert restored["max_diff"] == 0.0 and restored["same_specs"], restored
    assert restored["renamed"] and restored["sharded"] >= 100
    assert got["trained_steps"] == list(range(int(name[-1]) + 1, 5))
    assert got["losses"] < 1e-6
    assert got["final"] < 1e-6 and got["final_count"][0] == got["final_count"][1]
    assert got["iterations"] == 4 and got["folder_removed"] and results["backup_removed"]
