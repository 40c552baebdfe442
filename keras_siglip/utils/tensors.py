"""Small backend-neutral tensor helpers."""

import sys

import keras
import numpy as np


def concrete_numpy(x):
    """`x` as a numpy array when it holds values now (eager), else None (traced)."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, keras.KerasTensor):
        return None
    if "tensorflow" in sys.modules:  # tf.data hands TensorFlow tensors to every backend
        import tensorflow as tf

        if isinstance(x, (tf.RaggedTensor, tf.SparseTensor)):
            return None
        if isinstance(x, tf.Tensor):
            return x.numpy() if tf.executing_eagerly() and hasattr(x, "numpy") else None
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
    """Raise if eager `token_ids` are not integers or fall outside `[0, vocabulary_size)`.

    Symbolic values are not checked: Keras traces models with placeholders of
    any dtype (TensorFlow's `compute_output_spec` makes float64 ones).
    """
    values = concrete_numpy(token_ids)
    if values is None:
        return
    dtype = getattr(token_ids, "dtype", values.dtype)
    if not _is_integer_dtype(dtype):
        # Keras' input cast would truncate 1.7 to 1 without a word.
        raise ValueError(f"Token ids must be integers; got dtype {dtype}. Tokenize texts with the "
                         "model's preprocessor, or cast integral ids to int32.")
    if values.size == 0:
        return
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= vocabulary_size:
        raise ValueError(
            f"Token ids must lie in [0, {vocabulary_size}) for this model's "
            f"vocabulary; got values in [{low}, {high}]. Was the text tokenized "
            "with another model's tokenizer?"
        )


def _is_integer_dtype(dtype):
    return keras.backend.standardize_dtype(dtype).startswith(("int", "uint"))


class ArrayChecksMixin:
    """Calls `self._check_arrays(x)` before `fit`, `evaluate` and `predict`.

    Compiled steps cannot raise on values, so in-memory inputs are checked up
    front (e.g. out-of-vocabulary token ids fail clearly instead of being
    clamped by the embedding lookup). The model defines `_check_arrays`.
    In-memory inputs with 0 examples raise a ValueError on every backend
    (Keras itself fails differently on each)."""

    def fit(self, x=None, *args, **kwargs):
        _check_not_empty(x, "fit")
        self._check_arrays(x)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        _check_not_empty(x, "evaluate")
        self._check_arrays(x)
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        _check_not_empty(x, "predict")
        self._check_arrays(x)
        return super().predict(x, *args, **kwargs)


def _check_not_empty(x, method):
    """Raise if an in-memory input (array, or dict / list of arrays) has 0 rows."""
    leaves = keras.tree.flatten(x) if isinstance(x, (dict, list, tuple)) else [x]
    for value in leaves:
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) > 0 and shape[0] == 0:
            raise ValueError(
                f"{method} got 0 examples (inputs of shape {tuple(shape)}); pass at least one "
                "(an empty batch has nothing to compute)."
            )


def quantization_modes(layer):
    """The quantization modes (`layer.quantize`) of `layer` and its sublayers."""
    return {sub.quantization_mode for sub in layer._flatten_layers() if sub.quantization_mode}


def refuse_quantized(layer, purpose):
    """Raise for a quantized `layer` where `purpose` reads float kernels
    directly (an integer kernel read as floats would be silently wrong)."""
    modes = quantization_modes(layer)
    if modes:
        raise ValueError(f"{purpose} reads float kernels; this model is quantized ({', '.join(sorted(modes))}). "
                         "Do it on the float model and quantize afterwards.")
