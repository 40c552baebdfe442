"""SigLIP2Pretrainer on 4 virtual CPU devices (JAX) vs one device.

Run by test_distribution.py in a subprocess (the device count is set before
JAX starts). Six SGD steps of a tiny pretrainer, data parallel (the sigmoid term as the ring loss), stage B from step 3 (the
teacher, heads and mask token are created on the mesh mid-fit); prints one
JSON object with the largest differences in logged losses and final weights.
"""

import json
import os

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_siglip.models.siglip2 import siglip2_pretrainer  # noqa: E402
from tests.tiny_pretrainer import make_inputs, make_pretrainer  # noqa: E402

DEVICES = keras.distribution.list_devices()
BATCH, STEPS = 8, 6
TERMS = ("sigmoid_loss", "decoder_loss", "distillation_loss", "masked_prediction_loss")


def train(distribution):
    keras.distribution.set_distribution(distribution)
    try:
        model = make_pretrainer(total_steps=STEPS, distillation_start=0.5, compile=False)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        steps = []
        log = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(dict(logs)))
        model.fit(make_inputs(batch=BATCH * STEPS), batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                  callbacks=[log])
        weights = {v.path: np.asarray(v.value) for v in model.weights}
        return steps, weights, model.distilling
    finally:
        keras.distribution.set_distribution(None)


def main():
    ring_calls = []
    original = siglip2_pretrainer.matching_pairs_sigmoid_loss
    siglip2_pretrainer.matching_pairs_sigmoid_loss = lambda *a, **k: ring_calls.append(1) or original(*a, **k)
    single_logs, single_weights, _ = train(None)
    runs = {"data_parallel": keras.distribution.DataParallel(devices=DEVICES)}
    results = {"devices": len(DEVICES), "single_stage_b": single_logs[-1]["distillation_loss"]}
    for name, distribution in runs.items():
        logs, weights, distilling = train(distribution)
        results[name] = {
            "distilling": distilling,
            "terms": max(abs(a[t] - b[t]) / max(abs(b[t]), 1e-6) for a, b in zip(logs, single_logs) for t in TERMS),
            "by_part": {part: max(float(np.max(np.abs(weights[p] - single_weights[p]))) for p in single_weights
                                  if p.split("/")[0] == part) for part in {p.split("/")[0] for p in single_weights}},
            "same_weights": sorted(weights) == sorted(single_weights),
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
