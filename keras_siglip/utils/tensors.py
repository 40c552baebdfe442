"""Small backend-neutral tensor helpers."""

import keras
import numpy as np


def concrete_numpy(x):
    """`x` as a numpy array when it holds values now (eager), else None (traced)."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, keras.KerasTensor):
        return None
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
    elif backend == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly() or not hasattr(x, "numpy"):
            return None
    elif backend == "torch":
        import torch

        if torch.compiler.is_compiling() or getattr(x, "device", None) == torch.device("meta"):
            return None
    return keras.ops.convert_to_numpy(x)


def check_token_ids(token_ids, vocabulary_size):
    """Raise if eager `token_ids` fall outside `[0, vocabulary_size)`."""
    values = concrete_numpy(token_ids)
    if values is None or values.size == 0:
        return
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= vocabulary_size:
        raise ValueError(
            f"Token ids must lie in [0, {vocabulary_size}) for this model's "
            f"vocabulary; got values in [{low}, {high}]. Was the text tokenized "
            "with another model's tokenizer?"
        )


class ArrayChecksMixin:
    """Calls `self._check_arrays(x)` before `fit`, `evaluate` and `predict`.

    Compiled steps cannot raise on values, so in-memory inputs are checked up
    front (e.g. out-of-vocabulary token ids fail clearly instead of being
    clamped by the embedding lookup). The model defines `_check_arrays`."""

    def fit(self, x=None, *args, **kwargs):
        self._check_arrays(x)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        self._check_arrays(x)
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        self._check_arrays(x)
        return super().predict(x, *args, **kwargs)
