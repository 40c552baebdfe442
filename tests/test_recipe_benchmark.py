"""benchmarks.recipe_step runs and reports the recipe's step next to the plain
sigmoid step (one process per stage, tiny config). Never asserts on times."""

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
         "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {row["mode"]: row for row in result["rows"]}
    assert list(rows) == ["plain", "stage_a", "stage_b", "stage_d", "stage_d_cached"]
    assert result["backend"] == "torch"
    assert rows["plain"]["weights"] < rows["stage_a"]["weights"] < rows["stage_b"]["weights"]
    assert rows["stage_d"]["weights"] == 2 * rows["plain"]["weights"]  # learner + frozen reference
    assert all(row["step_ms"] > 0 and row["peak_rss_mib"] > 0 for row in rows.values())
    assert "x plain" in run.stdout
