"""SigLIPAdamW follows big_vision's optimizer chain step by step."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.optimizers import SigLIPAdamW, warmup_cosine


def big_vision_steps(params, grads_per_step, lr, wd, total, warmup, b1=0.9, b2=0.95, eps=1e-8, clip=1.0):
    """numpy: chain(clip_by_global_norm, scale_by_adam, scale(lr),
    add_decayed_weights(wd, mask=kernels), scale(schedule), scale(-1))."""
    params = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    for step, grads in enumerate(grads_per_step):
        norm = np.sqrt(sum(np.sum(g**2) for g in grads.values()))
        grads = {k: g * min(1.0, clip / norm) for k, g in grads.items()}
        if step < warmup:
            schedule = step / warmup
        else:
            schedule = 0.5 * (1 + np.cos(np.pi * (step - warmup) / (total - warmup)))
        t = step + 1
        for k, g in grads.items():
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g**2
            update = lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            if k == "kernel":
                update = update + wd * params[k]
            params[k] = params[k] - schedule * update
    return params


def test_matches_big_vision_chain():
    rng = np.random.default_rng(0)
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    layer.bias.assign(rng.normal(size=3).astype("float32"))
    start = {"kernel": ops.convert_to_numpy(layer.kernel), "bias": ops.convert_to_numpy(layer.bias)}
    grads = [
        {"kernel": rng.normal(size=(4, 3)).astype("float32"), "bias": rng.normal(size=3).astype("float32")}
        for _ in range(6)
    ]
    grads[3] = {k: 10 * g for k, g in grads[3].items()}  # one step above the clipping norm
    # A large decay so that decaying the bias, or scaling the decay by lr, shows.
    optimizer = SigLIPAdamW(learning_rate=0.05, weight_decay=0.2, total_steps=7, warmup_steps=2)
    for g in grads:
        optimizer.apply([ops.convert_to_tensor(g["kernel"]), ops.convert_to_tensor(g["bias"])],
                        [layer.kernel, layer.bias])
    expected = big_vision_steps(start, grads, lr=0.05, wd=0.2, total=7, warmup=2)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.kernel), expected["kernel"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.bias), expected["bias"], rtol=1e-5, atol=1e-6)


def test_schedule_shapes():
    schedule = warmup_cosine(1.0, total_steps=110, warmup_steps=10)
    values = [float(schedule(step)) for step in (0, 5, 10, 60, 110)]
    np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
    constant = warmup_cosine(2.0, warmup_steps=4)
    np.testing.assert_allclose([float(constant(s)) for s in (0, 2, 4, 1000)], [0.0, 1.0, 2.0, 2.0], atol=1e-6)
    assert warmup_cosine(3.0) == 3.0


def test_defaults_and_config_round_trip():
    optimizer = SigLIPAdamW(total_steps=1000)
    assert optimizer.warmup_steps == 100 and optimizer.beta_2 == 0.95 and optimizer.global_clipnorm == 1.0
    assert SigLIPAdamW(total_steps=1_000_000).warmup_steps == 10_000
    restored = SigLIPAdamW.from_config(optimizer.get_config())
    assert (restored.peak_learning_rate, restored.decoupled_weight_decay, restored.total_steps) == (1e-3, 1e-4, 1000)
    np.testing.assert_allclose(float(restored.weight_decay), 0.1)  # Keras scales it by the learning rate


@pytest.mark.parametrize("kwargs", [dict(learning_rate=0.0), dict(weight_decay=-1.0),
                                    dict(total_steps=10, warmup_steps=10)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="learning_rate|warmup_steps"):
        SigLIPAdamW(**kwargs)
