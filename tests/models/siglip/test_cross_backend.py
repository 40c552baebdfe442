"""The same weights give the same outputs on JAX, TensorFlow and PyTorch.

One set of seeded numpy weights and inputs is written to disk; a fresh Python
process per backend (`KERAS_BACKEND` is fixed at import time) builds the model,
loads every weight by path, runs the forward pass and saves its outputs; the
three results are compared pairwise.

Covered: a non-square training resolution (32x24 px, 4x3 patch grid), inference
at a larger size (resized position grid) and at a one-patch-wide size (4x3 grid
resized to 3x1, where torch's antialiased bilinear resize has a known CPU
bug), several batch sizes, and EOS-padded texts.

Tolerance: ATOL = 1e-5. Measured max abs pairwise differences (CPU, float32):
embeddings ~2e-7, logits ~2e-6 (logits carry exp(t) = 10, b = -10).
"""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

BACKENDS = ("jax", "tensorflow", "torch")
ATOL = 1e-5
EOS_ID = 1

CONFIG = {
    "vision_encoder": dict(patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64, image_size=[32, 24]),
    "text_encoder": dict(vocabulary_size=100, width=24, depth=2, num_heads=2, mlp_dim=48,
                         sequence_length=8, num_classes=32),
}
# name -> (number of images, height, width)
IMAGE_SETS = {"train_size": (3, 32, 24), "larger": (2, 40, 48), "one_patch_wide": (2, 24, 8)}

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("KERAS_BACKEND", "jax") != "jax",
        reason="Cross-backend test runs all three backends in subprocesses itself; "
        "it runs once, in the KERAS_BACKEND=jax session, not once per backend.",
    ),
    # ~35-50 s on 2 CPU cores (three fresh interpreters; eager JAX compiles each op
    # per new shape). Marked, not deselected: it runs in the normal suite.
    pytest.mark.slow,
]

# Runs in a subprocess under one backend: build, load weights by path, forward.
WORKER = r"""
import json, sys
import numpy as np
import keras
from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder

config_path, weights_path, inputs_path, out_path = sys.argv[1:]
with open(config_path) as f:
    config = json.load(f)
model = SigLIPBackbone(
    SigLIPVisionEncoder(**config["vision_encoder"]), SigLIPTextEncoder(**config["text_encoder"])
)
weights = dict(np.load(weights_path))
paths = [w.path for w in model.weights]
assert len(paths) == len(set(paths)), "duplicate weight paths"
assert set(paths) == set(weights), (sorted(set(paths) ^ set(weights)))
for w in model.weights:
    w.assign(weights[w.path])
inputs = dict(np.load(inputs_path))
outputs = {}
for key in sorted(inputs):
    if not key.startswith("images/"):
        continue
    name = key.split("/", 1)[1]
    out = model({"images": inputs[key], "token_ids": inputs["token_ids"]})
    for k, v in out.items():
        outputs[f"{name}/{k}"] = keras.ops.convert_to_numpy(v)
np.savez(out_path, backend=keras.config.backend(), **outputs)
"""


def weight_shapes():
    """`{path: shape}` of the model, built here under the session's backend (jax)."""
    from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder

    model = SigLIPBackbone(
        SigLIPVisionEncoder(**CONFIG["vision_encoder"]), SigLIPTextEncoder(**CONFIG["text_encoder"])
    )
    return {w.path: tuple(w.shape) for w in model.weights}


def random_weights(shapes, seed=0):
    """Seeded weights with no zero bias or unit LayerNorm scale; exp(t) = 10, b = -10."""
    rng = np.random.default_rng(seed)
    weights = {}
    for path, shape in shapes.items():
        value = 0.2 * rng.standard_normal(shape)
        if path.endswith("/gamma"):
            value += 1.0
        weights[path] = value.astype(np.float32)
    weights["contrastive_head/log_temperature"] = np.full((1,), np.log(10.0), np.float32)
    weights["contrastive_head/bias"] = np.full((1,), -10.0, np.float32)
    return weights


def random_inputs(seed=1):
    rng = np.random.default_rng(seed)
    inputs = {
        f"images/{name}": rng.uniform(-1, 1, size=(n, h, w, 3)).astype(np.float32)
        for name, (n, h, w) in IMAGE_SETS.items()
    }
    token_ids = np.full((4, 8), EOS_ID, dtype=np.int32)
    for row, n in enumerate([1, 4, 7, 0]):  # EOS-padded; the last is all EOS
        token_ids[row, :n] = rng.integers(2, 100, size=n)
    inputs["token_ids"] = token_ids
    return inputs


def run_backend(backend, tmp_path):
    out_path = tmp_path / f"outputs_{backend}.npz"
    result = subprocess.run(
        [sys.executable, "-c", WORKER, str(tmp_path / "config.json"), str(tmp_path / "weights.npz"),
         str(tmp_path / "inputs.npz"), str(out_path)],
        env={**os.environ, "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{backend} worker failed:\n{result.stderr[-4000:]}"
    outputs = dict(np.load(out_path))
    assert str(outputs.pop("backend")) == backend
    return outputs


def test_same_outputs_on_all_backends(tmp_path):
    """Image/text embeddings and logits agree pairwise across jax, tensorflow and
    torch to 1e-5 for identical weights and inputs, at the training size, a larger
    size and a one-patch-wide size."""
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    np.savez(tmp_path / "weights.npz", **random_weights(weight_shapes()))
    np.savez(tmp_path / "inputs.npz", **random_inputs())

    # One backend at a time: the processes are CPU-bound, parallel runs gain nothing.
    results = {backend: run_backend(backend, tmp_path) for backend in BACKENDS}

    expected_keys = {
        f"{name}/{out}" for name in IMAGE_SETS for out in ("image_embeddings", "text_embeddings", "logits")
    }
    for backend, outputs in results.items():
        assert set(outputs) == expected_keys, backend
        for name, (n, _, _) in IMAGE_SETS.items():
            assert outputs[f"{name}/logits"].shape == (n, 4)
            assert np.all(np.isfinite(outputs[f"{name}/logits"]))
    for a, b in itertools.combinations(BACKENDS, 2):
        for key in sorted(expected_keys):
            np.testing.assert_allclose(
                results[a][key], results[b][key], rtol=0, atol=ATOL, err_msg=f"{a} vs {b}: {key}"
            )
