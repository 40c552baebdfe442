"""The two-tower head: L2 normalisation and `exp(t) * cos + b` logits."""

import math

import keras
from keras import ops

NORM_EPSILON = 1e-8


def l2_normalize(x):
    """`x / (||x|| + 1e-8)` over the last axis (big_vision's form)."""
    return x / (ops.norm(x, axis=-1, keepdims=True) + NORM_EPSILON)


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
        logits `(B_img, B_txt)` = `exp(t) * image @ text.T + b`.
    """

    def __init__(self, temperature_init=10.0, bias_init=-10.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature_init = float(temperature_init)
        self.bias_init = float(bias_init)

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
        """Turn cosine similarities of any shape into logits."""
        t = ops.cast(ops.exp(self.log_temperature[0]), cosine.dtype)
        return cosine * t + ops.cast(self.bias[0], cosine.dtype)

    def call(self, image_embeddings, text_embeddings):
        return self.scale(ops.matmul(image_embeddings, ops.transpose(text_embeddings)))

    def compute_output_shape(self, image_embeddings_shape, text_embeddings_shape):
        return (image_embeddings_shape[0], text_embeddings_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(temperature_init=self.temperature_init, bias_init=self.bias_init)
        return config


class L2Normalize(keras.layers.Layer):
    """Layer form of `l2_normalize` for functional models."""

    def call(self, x):
        return l2_normalize(x)
