"""benchmarks.recipe_step runs and reports the recipe's step next to the plain
sigmoid step (tiny config). Never asserts on times.

The stages run in one process (`--same-process`): a process per stage, the default,
spends ~20 s of its ~24 s importing the frameworks; `test_a_stage_runs_in_its_own_process`
runs that path for one stage."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_reports_every_stage(tmp_path):
    if keras.backend.backend() != "torch":
        pytest.skip("runs in the torch pass (no compile: the quickest)")
    out = tmp_path / "recipe_step.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.recipe_step", "--config", "tiny", "--steps", "1", "--local-views", "2",
         "--same-process", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {row["mode"]: row for row in result["rows"]}
    assert list(rows) == ["plain", "stage_a", "stage_b", "stage_d", "stage_d_cached"]
    assert result["backend"] == "torch" and result["same_process"]
    assert rows["plain"]["weights"] < rows["stage_a"]["weights"] < rows["stage_b"]["weights"]
    assert rows["stage_d"]["weights"] == 2 * rows["plain"]["weights"]  # learner + frozen reference
    assert all(row["step_ms"] > 0 and row["peak_rss_mib"] > 0 for row in rows.values())
    assert "x plain" in run.stdout


def test_a_stage_runs_in_its_own_process():
    if keras.backend.backend() != "torch":
        pytest.skip("runs in the torch pass (no compile: the quickest)")
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.recipe_step", "--worker", "stage_b", "--config", "tiny", "--steps", "1",
         "--local-views", "2"],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    row = json.loads(run.stdout.strip().splitlines()[-1])
    assert row["mode"] == "stage_b" and row["step_ms"] > 0 and row["peak_rss_mib"] > 0
