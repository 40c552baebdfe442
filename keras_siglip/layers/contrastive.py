"""The two-tower head: L2 normalisation and `exp(t) * cos + b` logits.

Both stay in (at least) float32 under a mixed policy (`mixed_bfloat16`): the
towers may compute in bfloat16, but the embeddings, cosines and logits that
the loss sees are float32. In bfloat16 a logit near `b = -10` would be
rounded to a multiple of 1/16, and the loss sums B of them per image.
"""

import math

import keras
from keras import ops

NORM_EPSILON = 1e-8


def l2_normalize(x):
    """`x / (||x|| + 1e-8)` over the last axis (big_vision's form); half-precision
    inputs are normalised (and returned) in float32."""
    x = _at_least_float32(x)
    return x / (ops.norm(x, axis=-1, keepdims=True) + NORM_EPSILON)


def _at_least_float32(x):
    dtype = keras.backend.standardize_dtype(x.dtype)
    return ops.cast(x, "float32") if dtype in ("float16", "bfloat16") else x


class ContrastiveHead(keras.layers.Layer):
    """Holds the log-temperature `t` and bias `b` of a SigLIP model.

    Args:
        temperature_init: initial temperature; the weight stores `log` of it
            (SigLIP from scratch: 10, i.e. t = log 10).
        bias_init: initial bias (SigLIP from scratch: -10).

    Call args:
        image_embeddings: `(B_img, D)` L2-normalised.
        text_embeddings: `(B_txt, D)` L2-normalised.

    Returns:
        logits `(B_img, B_txt)` = `exp(t) * image @ text.T + b`, float32 (or
        wider) whatever the layer's dtype policy.
    """

    def __init__(self, temperature_init=10.0, bias_init=-10.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature_init = float(temperature_init)
        self.bias_init = float(bias_init)
        # Numerically sensitive (like LayerNormalization): inputs are not cast to
        # a mixed policy's bfloat16 compute dtype, nor `t` and `b` when read.
        self.autocast = False

    def build(self, *args):
        self.log_temperature = self.add_weight(
            name="log_temperature",
            shape=(1,),
            initializer=keras.initializers.Constant(math.log(self.temperature_init)),
        )
        self.bias = self.add_weight(
            name="bias", shape=(1,), initializer=keras.initializers.Constant(self.bias_init)
        )

    def scale(self, cosine):
        """Turn cosine similarities of any shape into logits (float32 or wider)."""
        cosine = _at_least_float32(cosine)
        t = ops.cast(ops.exp(self.log_temperature[0]), cosine.dtype)
        return cosine * t + ops.cast(self.bias[0], cosine.dtype)

    def call(self, image_embeddings, text_embeddings):
        image_embeddings = _at_least_float32(image_embeddings)
        text_embeddings = _at_least_float32(text_embeddings)
        return self.scale(ops.matmul(image_embeddings, ops.transpose(text_embeddings)))

    def compute_output_shape(self, image_embeddings_shape, text_embeddings_shape):
        return (image_embeddings_shape[0], text_embeddings_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(temperature_init=self.temperature_init, bias_init=self.bias_init)
        return config


class L2Normalize(keras.layers.Layer):
    """Layer form of `l2_normalize` for functional models (float32 output for
    half-precision inputs, whatever the layer's dtype policy)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.autocast = False  # keep float32 inputs float32 under a mixed policy

    def call(self, x):
        return l2_normalize(x)
