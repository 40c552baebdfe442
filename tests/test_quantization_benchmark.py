"""benchmarks.quantization runs end to end (parent + one torch worker, tiny
towers, few images) and writes a well-formed JSON: every family and mode,
int8 close to float, the shipped model's zero-shot above chance, positive
ratios. Never asserts on times."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

FAMILIES = ["siglip2_fixed", "siglip2_naflex", "cappa", "lit_decoder", "pali_gemma", "pali_gemma_mixing"]
MODES = ["float32", "int8", "int4", "float8"]


def test_reports_every_family_mode_and_tower(tmp_path):
    if keras.backend.backend() != "torch":
        pytest.skip("runs in the torch pass (no compile: the quickest)")
    out = tmp_path / "quantization.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.quantization", "--backends", "torch", "--config", "tiny", "--batch", "2",
         "--images", "48", "--new-tokens", "2", "--repeats", "1", "--warmup", "0", "--torch-threads", "1",
         "--no-plot", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "peer / ours" in run.stdout  # the printed table
    result = json.loads(out.read_text())
    assert result["config"] == "tiny" and not [r for r in result["rows"] if "error" in r]
    accuracy = {(r["family"], r["mode"]): r for r in result["rows"] if r["section"] == "accuracy"}
    assert sorted(accuracy) == sorted((f, m) for f in FAMILIES for m in MODES)
    for (family, mode), row in accuracy.items():
        assert row["backend"] == "torch"
        for cos in row["outputs"].values():
            assert cos["finite"]
            floor = {"float32": 1 - 1e-5, "int8": 0.99}.get(mode, 0.0 if family == "pali_gemma_mixing" else 0.8)
            assert cos["min_cos"] > floor, (family, mode, cos)
        if family.startswith("siglip2"):
            assert row["zero_shot"] > 10 * row["chance"] and row["zero_shot_float"] > 10 * row["chance"]
        else:
            assert 0 <= row["argmax_agreement"] <= 1
    assert accuracy["siglip2_fixed", "float32"]["zero_shot"] == accuracy["siglip2_naflex", "float32"]["zero_shot"]
    assert accuracy["pali_gemma", "float32"]["generate"]["token_match"] == 1.0
    speed = {(r["tower"], r["impl"], r["mode"]): r for r in result["rows"] if r["section"] == "speed"}
    assert sorted(speed) == sorted([(t, "ours", m) for t in ("image", "text") for m in MODES]
                                   + [(t, "hf", m) for t in ("image", "text") for m in ("float32", "qint8")])
    for (tower, impl, mode), row in speed.items():
        assert row["median_ms"] > 0 and row["weight_bytes"] > 0
        assert row["min_cos"] > (0.99 if mode in ("float32", "int8", "qint8") else 0.8), (tower, impl, mode)
    for tower in ("image", "text"):
        float_bytes = speed[tower, "ours", "float32"]["weight_bytes"]
        assert speed[tower, "ours", "int4"]["weight_bytes"] < speed[tower, "ours", "int8"]["weight_bytes"] < float_bytes
        assert speed[tower, "hf", "float32"]["max_abs_diff_to_ours"] < 1e-4  # the peer holds our weights
    ratios = result["speed_ratios"]
    assert len(ratios) == 2 * (len(MODES) + 1)
    assert all(r["speedup_vs_float"] > 0 and r["memory_vs_float"] > 0 for r in ratios)
    assert all(r["peer_over_ours"] > 0 for r in ratios if r["mode"] != "hf qint8")
