"""`fit` compiled by XLA (`jit_compile=True`) on JAX and TensorFlow, eager on torch.

The compiled train step must give the losses of the uncompiled one over three
Adam steps (float32, CPU; tolerance 1e-5 relative). Weights are not compared
element by element: Adam turns rounding-level gradient differences on weights
whose gradient is near zero into differences of the order of the step size. torch: Keras' default is eager; `jit_compile=True`
(torch.compile) also trains to the same losses but takes minutes to compile on
two cores, so it is not run here. `run_eagerly=True` is the same code path on
torch (Keras' torch trainer never compiles unless `jit_compile`), so instead the
eager `fit` is compared with a training loop written out by hand: the sigmoid
loss of the model's logits in torch ops, gradients from `torch.autograd`, and
Adam's update as Keras defines it.
"""

import keras
import numpy as np
import pytest

from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder
from tests.helpers import naflex_batch

BACKEND = keras.backend.backend()
XLA = BACKEND in ("jax", "tensorflow")


def image_batch():
    rng = np.random.default_rng(0)
    return {
        "images": rng.uniform(-1, 1, (12, 32, 32, 3)).astype("float32"),
        "token_ids": rng.integers(0, 60, (12, 8)).astype("int32"),
    }


def backbone(input_format):
    """One block per tower: JAX without jit runs op by op, seconds a step."""
    keras.utils.set_random_seed(0)
    if input_format == "naflex":
        vision = SigLIPVisionEncoder(4, 32, 1, 2, 48, image_size=16, input_format="naflex")
    else:
        vision = SigLIPVisionEncoder(8, 32, 1, 2, 64, image_size=32)
    text = SigLIPTextEncoder(60, 32, 1, 2, 48, sequence_length=6 if input_format == "naflex" else 8)
    return SigLIPBackbone(vision, text)


def naflex_data():
    grids = [(4, 4), (2, 7), (1, 9), (5, 3), (3, 3), (1, 1), (6, 2), (2, 2), (1, 20), (4, 5), (2, 3), (3, 1)]
    x = naflex_batch(grids, 20, 48)
    x["token_ids"] = np.random.default_rng(0).integers(2, 60, (12, 6)).astype("int32")
    return x


DATA = {"images": image_batch, "naflex": naflex_data}


class StepLosses(keras.callbacks.Callback):
    """The loss after every train step (Keras logs the running mean of the epoch)."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def fit(model, x, traces=None, **compile_kwargs):
    """Three Adam steps on batches of 4. `traces` (a list) gets one item per
    Python execution of the train step: on JAX and TensorFlow, one per trace."""
    model.compile(optimizer=keras.optimizers.Adam(3e-3), **compile_kwargs)
    steps = StepLosses()
    if traces is not None:
        step = model.train_step
        model.train_step = lambda *args: traces.append(1) or step(*args)
    model.fit(x, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[steps])
    return np.array(steps.losses)


def hand_written_losses(model, x, learning_rate=3e-3, batch=4):
    """torch: what `fit` logs after each step (the running mean of the step losses)
    over the batches of 4, computed without Keras' trainer, loss or optimizer."""
    import torch

    params = [v.value for v in model.trainable_variables]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    beta_1, beta_2, epsilon = 0.9, 0.999, 1e-7  # keras.optimizers.Adam's defaults
    labels = 2 * torch.eye(batch) - 1
    losses = []
    for step in range(len(x["token_ids"]) // batch):
        inputs = {k: v[step * batch : (step + 1) * batch] for k, v in x.items()}
        logits = model(inputs, training=True)["logits"]
        loss = -torch.nn.functional.logsigmoid(labels * logits).sum(-1).mean()
        grads = torch.autograd.grad(loss, params)
        losses.append(float(loss))
        t = step + 1
        alpha = learning_rate * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        with torch.no_grad():
            for p, g, (m, v) in zip(params, grads, moments):
                m.add_((g - m) * (1 - beta_1))
                v.add_((g * g - v) * (1 - beta_2))
                p.sub_(m * alpha / (torch.sqrt(v) + epsilon))
    return np.cumsum(losses) / np.arange(1, len(losses) + 1)


@pytest.mark.slow  # JAX without jit compiles every op on first use: ~15 s a case
@pytest.mark.parametrize("input_format", sorted(DATA))
def test_compiled_fit_gives_the_uncompiled_losses(input_format):
    x = DATA[input_format]()
    make_model = lambda: backbone(input_format)  # noqa: E731
    compiled, traces = make_model(), []
    if XLA:
        losses = fit(compiled, x, traces, jit_compile=True)
        assert compiled.jit_compile is True  # not silently dropped by Keras
        # TensorFlow traces a step that creates variables (the optimizer's, which
        # Keras builds lazily there) twice; `fit` builds them first
        assert len(traces) == 1, f"the train step was traced {len(traces)} times"
        reference = fit(make_model(), x, jit_compile=False)
    else:
        losses = fit(compiled, x)  # Keras' default on torch: eager
        assert compiled.jit_compile is False
        reference = hand_written_losses(make_model(), x)
    assert len(losses) == 3 and np.isfinite(losses).all()
    np.testing.assert_allclose(losses, reference, rtol=1e-5)
