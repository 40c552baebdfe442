"""SigLIP `fit` across 2 TensorFlow replicas (MirroredStrategy, logical CPUs) vs one.

Run by test_distribution.py in a subprocess; prints one JSON object.
"""

import json
import os

os.environ["KERAS_BACKEND"] = "tensorflow"

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_siglip.losses import SigmoidLoss  # noqa: E402
from keras_siglip.optimizers import SigLIPAdamW  # noqa: E402
from tests.helpers import tiny_backbone  # noqa: E402

BATCH, STEPS = 8, 3


def data():
    rng = np.random.default_rng(1)
    token_ids = rng.integers(2, 60, (BATCH * STEPS, 8)).astype("int32")
    token_ids[:, -1] = 1
    return {"images": rng.uniform(-1, 1, (BATCH * STEPS, 32, 32, 3)).astype("float32"), "token_ids": token_ids}


def train(strategy, loss, optimizer=lambda: keras.optimizers.SGD(0.5)):
    with strategy.scope():
        model = tiny_backbone(seed=0)
        model.compile(optimizer=optimizer(), loss=loss)
    history = model.fit(data(), batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history
    return history["loss"][0], model.get_weights()


def max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def main():
    one = tf.distribute.get_strategy()
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    loss, weights = train(one, SigmoidLoss())
    results = {"replicas": mirrored.num_replicas_in_sync, "single_loss": loss}
    for name, loss_fn in (("gathered", SigmoidLoss()), ("gathered_chunked", SigmoidLoss(chunk_size=3)),
                          ("per_replica", SigmoidLoss(cross_device=False))):
        got_loss, got_weights = train(mirrored, loss_fn)
        results[name] = {"loss": abs(got_loss - loss), "weights": max_diff(got_weights, weights)}
    # Global-norm clipping that is active at every step (the gradient norms here are ~1):
    # Keras clips each replica's share of the gradient before summing the shares. A large
    # epsilon keeps Adam's update linear in the gradient, so float-order differences of
    # near-zero gradients are not magnified to the learning rate.
    for name, optimizer in (
        ("siglip_adamw_clipped", lambda: SigLIPAdamW(0.5, epsilon=1.0, global_clipnorm=0.05)),
        ("keras_adamw_clipped", lambda: keras.optimizers.AdamW(0.5, epsilon=1.0, global_clipnorm=0.05)),
    ):
        _, weights = train(one, SigmoidLoss(), optimizer)
        _, got_weights = train(mirrored, SigmoidLoss(), optimizer)
        results[name] = {"weights": max_diff(got_weights, weights)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
