"""`fit` compiled by XLA (`jit_compile=True`) on JAX and TensorFlow, eager on torch.

The compiled train step must give the losses of the uncompiled one over three
Adam steps (float32, CPU; tolerance 1e-5 relative). Weights are not compared
element by element: Adam turns rounding-level gradient differences on weights
whose gradient is near zero into differences of the order of the step size. torch: Keras' default is eager; `jit_compile=True`
(torch.compile) also trains to the same losses but takes minutes to compile on
two cores, so it is not run here.
"""

import keras
import numpy as np
import pytest

from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder
from tests.models.siglip.test_naflex import naflex_batch

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


def fit(model, x, **compile_kwargs):
    """Three Adam steps on batches of 4."""
    model.compile(optimizer=keras.optimizers.Adam(3e-3), **compile_kwargs)
    steps = StepLosses()
    model.fit(x, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[steps])
    return np.array(steps.losses)


@pytest.mark.slow  # JAX without jit compiles every op on first use: ~15 s a case
@pytest.mark.parametrize("input_format", sorted(DATA))
def test_compiled_fit_gives_the_uncompiled_losses(input_format):
    x = DATA[input_format]()
    make_model = lambda: backbone(input_format)  # noqa: E731
    compiled = make_model()
    if XLA:
        losses = fit(compiled, x, jit_compile=True)
        assert compiled.jit_compile is True  # not silently dropped by Keras
        reference = fit(make_model(), x, jit_compile=False)
    else:
        losses = fit(compiled, x)  # Keras' default on torch: eager
        assert compiled.jit_compile is False
        reference = fit(make_model(), x, run_eagerly=True)
    assert len(losses) == 3 and np.isfinite(losses).all()
    np.testing.assert_allclose(losses, reference, rtol=1e-5)
