"""The benchmark worker runs on the current backend and emits well-formed rows.

Runs `python -m benchmarks.worker` on the tiny config with one timed repeat (a
subprocess, as the runner does) and checks the rows' fields and that every peer's
output agreed with ours before timing. Never asserts on times. Also renders the
report (Markdown, JSON, PNG) from those rows.
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


def _peers():
    import importlib.util

    peers = ["keras-hub"]
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        peers.append("hf")
    return peers


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "rows.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable, "-m", "benchmarks.worker", "--backend", keras.config.backend(),
        "--cases", "matmul_peak,image_encoder,text_encoder,fit_step", "--configs", "tiny",
        "--repeats", "1", "--warmup", "0", "--peers", ",".join(_peers()), "--out", str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    streamed = [json.loads(line[len("@@ROW "):]) for line in proc.stdout.splitlines()
                if line.startswith("@@ROW ")]
    written = json.loads(out.read_text())
    assert len(streamed) == len(written)
    return written


def test_rows_have_expected_fields(rows):
    assert not [r for r in rows if "error" in r]
    by_case = {r["case"]: r for r in rows}
    assert set(by_case) == {"matmul_peak", "image_encoder", "text_encoder", "fit_step"}
    peak = by_case["matmul_peak"]
    assert peak["backend"] == keras.config.backend()
    assert peak["gflops_best"] > 0 and peak["flops"] == 2 * 2048**3
    for name in ("image_encoder", "text_encoder", "fit_step"):
        row = by_case[name]
        assert row["config"] == "tiny" and row["backend"] == keras.config.backend()
        assert row["batch"] > 0 and row["unit"] == "ms"
        ours = row["ours"]
        for key in ("mode", "median_ms", "min_ms", "repeats", "times_ms", "first_call_s", "value"):
            assert key in ours, (name, key)
        assert ours["repeats"] == 1 and ours["value"] > 0
        expected_peers = {"keras-hub"} | ({"hf"} if name != "fit_step" and "hf" in _peers() else set())
        assert set(row["peers"]) == expected_peers
        for peer in row["peers"].values():
            assert peer["value"] > 0 and peer["mode"]


def test_outputs_agreed_before_timing(rows):
    for row in rows:
        for name, peer in row.get("peers", {}).items():
            assert peer["agree"] is True, (row["case"], name, peer["max_abs_diff"])
            assert peer["max_abs_diff"] <= peer["tolerance"]


def test_report_renders(rows, tmp_path):
    from benchmarks import report

    result = report.build_result(rows, report.describe_machine(), "test", quick=True, wall_s=1.0,
                                 worker_wall_s={keras.config.backend(): 1.0})
    assert result["comparisons"] and all(c["ratio"] > 0 for c in result["comparisons"])
    assert result["efficiency"]["machine_peak_gflops"] > 0
    md, js, png = report.write_all(result, str(tmp_path))
    text = open(md).read()
    assert "| row | config | batch | backend |" in text and "## Machine" in text
    assert json.load(open(js))["rows"] == json.loads(json.dumps(rows))
    assert os.path.getsize(png) > 0


def test_startup_benchmark_records_imports_and_memory(tmp_path):
    """`benchmarks.startup` runs a command in a fresh process and reports what
    it imported: `presets` none of the frameworks, `embed` keras and the backend."""
    from benchmarks import startup

    backend = keras.backend.backend()
    argv = startup.commands(str(tmp_path))
    listing = startup.measure(backend, "presets", argv["presets"], str(tmp_path), repeats=1)
    assert listing["imports"] == [] and listing["peak_rss_bytes"] > 0
    embed = startup.measure(backend, "embed", argv["embed"], str(tmp_path), repeats=1)
    assert {"keras", backend} <= set(embed["imports"])
    assert (tmp_path / "embedding.npy").exists()
    assert "| `embed` |" in startup.table([listing, embed])


def test_zero_shot_latency_times_classify_against_the_eager_model():
    """`benchmarks.zero_shot_latency` on this backend: both paths timed at each
    batch size, and `classify`'s probabilities equal the eager model's (1e-5)."""
    from benchmarks import zero_shot_latency

    result = zero_shot_latency.measure_backend(repeats=1)
    assert result["labels"] == 48
    for batch in zero_shot_latency.BATCHES:
        row = result[str(batch)]
        assert row["eager_ms_per_image"] > 0 and row["classify_ms_per_image"] > 0
        assert row["max_abs_diff"] < 1e-5, row


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="backend-independent: runs once, under torch")
def test_gpu_script_names_each_backend_without_a_gpu(tmp_path):
    """`benchmarks/gpu.sh` on a machine whose frameworks see no GPU (a stand-in
    `nvidia-smi` lists one) stops before benchmarking and names what to install
    for each backend it was asked for."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: stand-in'\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}"
               + os.environ.get("PATH", ""), BACKENDS="tensorflow,torch")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "tensorflow sees no GPU" in proc.stderr and "torch" in proc.stderr and "sees no GPU" in proc.stderr
    assert "jax sees no GPU" not in proc.stderr  # not asked for
