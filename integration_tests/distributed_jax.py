"""Sharded SigLIP training on 4 virtual CPU devices (JAX) vs one device.

Run by test_distribution.py in a subprocess (the device count must be set
before JAX starts); prints one JSON object with the measured differences.
"""

import json
import os

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_siglip.losses import SigmoidLoss, ring_sigmoid_loss, sigmoid_loss_from_embeddings  # noqa: E402
from keras_siglip.losses import distributed  # noqa: E402
from keras_siglip.models.siglip import siglip_backbone  # noqa: E402
from tests.helpers import tiny_backbone  # noqa: E402

DEVICES = keras.distribution.list_devices()
BATCH, STEPS = 16, 3


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))


def ring_vs_plain():
    """Value and gradients of the ring loss (plain and chunked blocks) vs the global loss."""
    mesh = keras.distribution.DeviceMesh((4,), ["batch"], DEVICES).backend_mesh
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, BATCH, 8)).astype("float32")
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    x[1] = (x[0] + x[1]) / np.linalg.norm(x[0] + x[1], axis=-1, keepdims=True)
    args = (x[0], x[1], np.array([np.log(10.0)], "float32"), np.array([-4.0], "float32"))
    argnums = (0, 1, 2, 3)
    value, grads = jax.value_and_grad(sigmoid_loss_from_embeddings, argnums)(*args)
    out = {}
    for chunk in (None, 3):
        ring = jax.jit(jax.value_and_grad(
            lambda *a: ring_sigmoid_loss(*a, mesh=mesh, axis_name="batch", chunk_size=chunk), argnums
        ))
        ring_value, ring_grads = ring(*args)
        out[f"ring_chunk_{chunk}"] = {
            "value": abs(float(value) - float(ring_value)) / abs(float(value)),
            "grads": max_diff(grads, ring_grads) / max(float(np.abs(g).max()) for g in grads),
        }
    return out


def data():
    rng = np.random.default_rng(1)
    token_ids = rng.integers(2, 60, (BATCH * STEPS, 8)).astype("int32")
    token_ids[:, -1] = 1
    images = rng.uniform(-1, 1, (BATCH * STEPS, 32, 32, 3)).astype("float32")
    return {"images": images, "token_ids": token_ids}


def train(distribution, chunk_size=None):
    """Losses and final weights of STEPS SGD steps of the same tiny model (SGD:
    weight differences are the learning rate times gradient differences)."""
    keras.distribution.set_distribution(distribution)
    try:
        model = tiny_backbone(seed=0)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=SigmoidLoss(chunk_size=chunk_size))
        history = model.fit(data(), batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history
        weights = [np.asarray(w) for w in model.get_weights()]
        layouts = {
            v.path: str(getattr(v.value.sharding, "spec", None)) for v in model.weights
            if "attention/query/kernel" in v.path or "mlp/dense_1/kernel" in v.path
            or "token_embedding" in v.path or "layer_norm_0/gamma" in v.path
        }
        return history, weights, layouts
    finally:
        keras.distribution.set_distribution(None)


def main():
    results = {"devices": len(DEVICES), "ring": ring_vs_plain()}
    ring_calls = []
    original = distributed.ring_sigmoid_loss
    distributed.ring_sigmoid_loss = lambda *a, **k: ring_calls.append(1) or original(*a, **k)

    single_history, single_weights, _ = train(None)
    runs = {
        "data_parallel": keras.distribution.DataParallel(devices=DEVICES),
        "data_parallel_chunked": (keras.distribution.DataParallel(devices=DEVICES), 5),
        "fsdp": keras.distribution.ModelParallel(
            layout_map=siglip_backbone.SigLIPBackbone.get_layout_map(
                keras.distribution.DeviceMesh((4,), ["batch"], DEVICES), model_axis=None
            ),
            batch_dim_name="batch",
        ),
        "fsdp_tensor_parallel": keras.distribution.ModelParallel(
            layout_map=siglip_backbone.SigLIPBackbone.get_layout_map(
                keras.distribution.DeviceMesh((2, 2), ["batch", "model"], DEVICES)
            ),
            batch_dim_name="batch",
        ),
    }
    for name, spec in runs.items():
        distribution, chunk = spec if isinstance(spec, tuple) else (spec, None)
        ring_calls.clear()
        history, weights, layouts = train(distribution, chunk)
        results[name] = {
            "loss": abs(history["loss"][0] - single_history["loss"][0]),
            "temperature": abs(history["temperature"][0] - single_history["temperature"][0]),
            "weights": max_diff(weights, single_weights),
            "ring_traces": len(ring_calls),
            "layouts": layouts,
        }
    results["single_loss"] = single_history["loss"][0]
    results["metrics"] = sorted(single_history)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
