"""Data + model parallel PaliGemma on 4 virtual CPU devices (JAX) vs one device.

A tiny PaliGemma 2 (Gemma 2 decoder: post norms, soft caps, grouped key / value
heads) created under `ModelParallel` with `PaliGemmaBackbone.get_layout_map` on a
(2 batch, 2 model) mesh, given the weights of the same model on one device.
Run by test_distribution.py in a subprocess (the device count must be set
before JAX starts); prints one JSON object with the measured differences.
"""

import json
import os

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_siglip.models.pali_gemma import PaliGemmaBackbone, PaliGemmaCausalLM  # noqa: E402
from tests.helpers import numpy, perturb  # noqa: E402

DEVICES = keras.distribution.list_devices()
BATCH, STEPS, LENGTH = 4, 3, 8
# Every split dimension divides by 2: heads 4 (query), 2 (key / value), 2 (ViT).
CONFIG = dict(
    vocabulary_size=64, image_size=16, num_layers=2, num_query_heads=4, num_key_value_heads=2,
    hidden_dim=16, intermediate_dim=32, head_dim=8, query_pre_attn_scalar=8,
    attention_logit_soft_cap=50.0, final_logit_soft_cap=30.0, use_post_norms=True,
    vit_patch_size=8, vit_hidden_dim=16, vit_num_layers=1, vit_num_heads=2, vit_intermediate_dim=32,
)
CHECKED = (
    "vit/embedding/kernel", "vit/encoder/block_0/attention/query/kernel",
    "vit/encoder/block_0/attention/attention_output/kernel", "vit/encoder/block_0/mlp/dense_1/kernel",
    "vit/head/kernel", "vit/head/bias", "vit/position_embedding/embeddings",
    "gemma/token_embedding/embeddings", "gemma/block_0/attention/query/kernel",
    "gemma/block_1/attention/key/kernel", "gemma/block_0/attention/attention_output/kernel",
    "gemma/block_1/ffw_gating_2/kernel", "gemma/block_0/ffw_linear/kernel",
    "gemma/block_0/post_ffw_norm/scale", "gemma/final_norm/scale",
)


def data(size, seed=0):
    """Preprocessed `(x, y, sample_weight)`: `[BOS] prefix(3) suffix(3) EOS`."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, CONFIG["vocabulary_size"], (size, LENGTH + 1)).astype("int32")
    ids[:, 0], ids[:, LENGTH - 1], ids[:, LENGTH:] = 2, 1, 0
    ar = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1], "int32")
    x = {
        "images": rng.uniform(-1, 1, (size, 16, 16, 3)).astype("float32"),
        "token_ids": ids[:, :-1],
        "padding_mask": np.ones((size, LENGTH), "int32"),
        "response_mask": np.tile(ar[:-1], (size, 1)),
    }
    weights = np.tile(np.array([0, 0, 0, 1, 1, 1, 1, 0], "float32"), (size, 1))
    return x, ids[:, 1:], weights


def run(distribution, weights=None):
    """Initial weights, logits, then the weights after STEPS SGD steps (SGD: weight
    differences are the learning rate times gradient differences)."""
    keras.distribution.set_distribution(distribution)
    try:
        keras.utils.set_random_seed(0)
        backbone = PaliGemmaBackbone(**CONFIG)
        if weights is None:
            perturb(backbone, np.random.default_rng(0))  # distinct norm scales and biases
            weights = [numpy(v) for v in backbone.weights]
        else:
            backbone.set_weights(weights)
        layouts = {v.path: str(getattr(v.value.sharding, "spec", None)) for v in backbone.weights}
        x, y, w = data(BATCH * STEPS)
        logits = numpy(backbone.predict(x, batch_size=BATCH, verbose=0))
        lm = PaliGemmaCausalLM(backbone, preprocessor=None)
        lm.compile(optimizer=keras.optimizers.SGD(0.5))
        history = lm.fit(x, y, sample_weight=w, batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history
        return weights, logits, history["loss"][0], [numpy(v) for v in backbone.weights], layouts
    finally:
        keras.distribution.set_distribution(None)


def main():
    weights, single_logits, single_loss, single_weights, _ = run(None)
    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], DEVICES)
    layout_map = PaliGemmaBackbone.get_layout_map(mesh)
    _, logits, loss, trained, layouts = run(
        keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch"), weights
    )
    print(json.dumps({
        "devices": len(DEVICES),
        "logits": float(np.max(np.abs(logits - single_logits))),
        "logit_scale": float(np.max(np.abs(single_logits))),
        "loss": abs(loss - single_loss),
        "single_loss": single_loss,
        "moved": float(max(np.max(np.abs(a - b)) for a, b in zip(single_weights, weights))),
        "weights": float(max(np.max(np.abs(a - b)) for a, b in zip(trained, single_weights))),
        "layouts": {path: layouts[path] for path in CHECKED},
        "sharded": sum("'" in spec for spec in layouts.values()),
        "count": len(layouts),
    }))


if __name__ == "__main__":
    main()
