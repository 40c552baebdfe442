"""The DINO-style projection head of SigLIP 2's self-distillation (SILC, TIPS).

`(..., D)` features -> MLP (`num_layers` Dense, GELU between) to a bottleneck
-> L2-normalised -> a weight-normalised Dense without bias to `K` prototypes
(DINO `DINOHead`: each prototype's weight vector is divided by its norm; with
`norm_last_layer=True` its gain stays 1, else a trainable gain per prototype).
The paper's sizes are unpublished; DINO's defaults are used (hidden 2048,
bottleneck 256, 3 layers). The head's output is computed in float32, since
the distillation softmax sharpens it with temperatures of 0.04-0.1.
"""

import keras
from keras import ops

_NORM_EPS = 1e-12  # torch.nn.functional.normalize's


@keras.saving.register_keras_serializable(package="keras_siglip")
class DistillationHead(keras.layers.Layer):
    """Args:
        num_prototypes: K, the output size.
        hidden_dim: width of the MLP's hidden layers.
        bottleneck_dim: width of the MLP's output, before the L2 norm.
        num_layers: Dense layers in the MLP (1: a single projection).
        norm_last_layer: fix each prototype's gain at 1 (DINO's default).

    Call: `(..., D)` -> `(..., K)` float32 logits.
    """

    def __init__(self, num_prototypes, hidden_dim=2048, bottleneck_dim=256, num_layers=3,
                 norm_last_layer=True, **kwargs):
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1; got {num_layers}.")
        self.num_prototypes = num_prototypes
        self.hidden_dim = hidden_dim
        self.bottleneck_dim = bottleneck_dim
        self.num_layers = num_layers
        self.norm_last_layer = norm_last_layer

    def build(self, input_shape):
        init = dict(kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                    bias_initializer="zeros", dtype=self.dtype_policy)
        widths = [self.hidden_dim] * (self.num_layers - 1) + [self.bottleneck_dim]
        self.mlp = []
        shape = tuple(input_shape)
        for i, width in enumerate(widths):
            dense = keras.layers.Dense(width, name=f"dense_{i}", **init)
            dense.build(shape)
            self.mlp.append(dense)
            shape = (*shape[:-1], width)
        self.prototypes = self.add_weight(
            name="prototypes", shape=(self.bottleneck_dim, self.num_prototypes),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        self.gain = None if self.norm_last_layer else self.add_weight(
            name="gain", shape=(self.num_prototypes,), initializer="ones",
        )

    def call(self, x):
        for i, dense in enumerate(self.mlp):
            x = dense(x)
            if i < len(self.mlp) - 1:
                x = keras.activations.gelu(x, approximate=False)  # torch nn.GELU (erf)
        x = ops.cast(x, "float32")
        x = x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), _NORM_EPS)
        prototypes = ops.cast(self.prototypes, "float32")
        kernel = prototypes / ops.norm(prototypes, axis=0, keepdims=True)
        if self.gain is not None:
            kernel = kernel * ops.cast(self.gain, "float32")
        return ops.matmul(x, kernel)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_prototypes)

    def get_config(self):
        return {**super().get_config(), "num_prototypes": self.num_prototypes, "hidden_dim": self.hidden_dim,
                "bottleneck_dim": self.bottleneck_dim, "num_layers": self.num_layers,
                "norm_last_layer": self.norm_last_layer}
