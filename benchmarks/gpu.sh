#!/usr/bin/env bash
# Run the keras_siglip benchmarks on a GPU machine: JAX, TensorFlow and torch rows
# (keras_siglip vs keras-hub on each, and vs HF transformers on the GPU), GPU batch sizes
# (image 64 at 224 px, text 256, tiny 256, fit 256), matmul peak on 8192^2.
#
# Needs CUDA builds of the frameworks in the active environment, for example:
#   pip install -e '.[test]' && pip install -U 'jax[cuda12]==0.10.2' 'tensorflow[and-cuda]' \
#       && pip install -U torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128   # pick your CUDA
# Each backend runs in a process of its own, so their CUDA libraries do not meet.
# BACKENDS=jax,torch benchmarks/gpu.sh runs a subset (e.g. without a CUDA TensorFlow).
# Writes benchmarks/gpu/{RESULTS.md,results.json,results.png}. Extra arguments go to
# `python -m benchmarks` (e.g. --quick, --cases image_encoder).
# Note: on Ampere+ GPUs JAX and torch may run float32 matmuls in TF32 by default;
# the report's matmul peak is measured the same way, so the fractions stay comparable.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "benchmarks/gpu.sh: no NVIDIA GPU visible (nvidia-smi missing or failing); nothing to run." >&2
  exit 2
fi
nvidia-smi -L

BACKENDS="${BACKENDS:-jax,tensorflow,torch}"
export BACKENDS
python - <<'PY'
import os, subprocess, sys
wanted = os.environ["BACKENDS"].split(",")
problems = []
if "tensorflow" in wanted:
    # In a process of its own: TensorFlow and JAX/torch may bring different CUDA libraries.
    probe = subprocess.run([sys.executable, "-c", "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"],
                           capture_output=True, text=True)
    if probe.returncode or probe.stdout.strip().splitlines()[-1:] in ([], ["0"]):
        problems.append("tensorflow sees no GPU: install tensorflow[and-cuda] (or set BACKENDS=jax,torch)")
if "jax" in wanted:
    try:
        import jax
        if jax.default_backend() != "gpu":
            problems.append(f"jax sees no GPU (default backend {jax.default_backend()!r}): install jax[cuda12]")
    except ImportError:
        problems.append("jax is not installed")
try:  # every backend's worker runs the HF peer on torch
    import torch
    if not torch.cuda.is_available():
        problems.append(f"torch {torch.__version__} sees no GPU: install a CUDA build of torch")
except ImportError:
    problems.append("torch is not installed")
if problems:
    sys.exit("benchmarks/gpu.sh: " + "; ".join(problems))
print("backends:", ",".join(wanted), "| torch:", torch.cuda.get_device_name(0))
PY

# Each worker also holds torch (the HF peer) and TensorFlow (imported by keras-hub): do not
# let JAX grab 75% of the GPU memory up front, nor TensorFlow all of it.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export TF_FORCE_GPU_ALLOW_GROWTH=true
exec python -m benchmarks --backends "$BACKENDS" --require-gpu --out-dir benchmarks/gpu "$@"
