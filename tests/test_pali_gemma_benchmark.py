"""The PaliGemma generation benchmark runs end to end and writes well-formed rows.

Runs `python -m benchmarks.pali_gemma_generate` (parent + one worker subprocess) on
the tiny config, the current backend, batch 1, 2 new tokens, one timed call.
Checks the JSON's fields and that all three implementations (ours, keras-hub,
transformers on our export) generated the same ids;
never asserts on times.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_benchmark_rows(tmp_path):
    out = tmp_path / "pg.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    backend = keras.config.backend()
    cmd = [sys.executable, "-m", "benchmarks.pali_gemma_generate", "--backends", backend, "--config", "tiny",
           "--batches", "1", "--new-tokens", "2", "--prompt-length", "3", "--repeats", "1", "--warmup", "0",
           "--no-plot", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "ours / keras-hub" in proc.stdout  # the printed table
    result = json.loads(out.read_text())
    assert result["config"] == "tiny" and result["new_tokens"] == 2
    (row,) = result["rows"]
    assert "error" not in row
    assert row["backend"] == backend and row["batch"] == 1 and row["unit"] == "tokens/s"
    assert row["image_tokens"] == 4 and row["prompt_length"] == 3
    assert row["agree"] is True and row["agree_hf"] is True  # keras-hub's and transformers' generate
    assert "ours / HF" in proc.stdout
    for name in ("ours", "keras-hub", "hf"):
        entry = row[name]
        for key in ("mode", "first_call_s", "median_ms", "min_ms", "repeats", "times_ms", "tokens_per_s"):
            assert key in entry, (name, key)
        assert entry["repeats"] == 1 and entry["tokens_per_s"] > 0
    assert row["ratio"] > 0 and row["ratio_hf"] > 0
