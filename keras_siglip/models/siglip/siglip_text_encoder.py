import keras
from keras_hub.models import Backbone

from keras_siglip.layers.text import TextTransformer
from keras_siglip.utils.fit import BuildOptimizerBeforeFitMixin
from keras_siglip.utils.preset import PresetMixin
from keras_siglip.utils.tensors import check_token_ids


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIPTextEncoder(PresetMixin, BuildOptimizerBeforeFitMixin, Backbone):
    """SigLIP text tower: unmasked transformer, last-position pooling, Dense head.

    Args:
        vocabulary_size: tokenizer vocabulary size (32,000 SigLIP, 250,000 i18n,
            256,000 SigLIP 2).
        width, depth, num_heads, mlp_dim: transformer sizes.
        sequence_length: fixed text length L (64; 16 for SigLIP So400m/14@224).
        pooling: `"last"` (released models), `"first"`, `"gap"` or `"map"`.
        num_classes: Dense head width (the embedding size); None for no head
            (mSigLIP So400m/16 i18n).
        remat: recompute each transformer block in the backward pass instead
            of keeping its activations (default False; see
            `SigLIPVisionEncoder`).

    Inputs: `token_ids` `(B, L)` int.
    Outputs: `(B, num_classes or width)`.
    """

    def __init__(
        self,
        vocabulary_size,
        width,
        depth,
        num_heads,
        mlp_dim,
        sequence_length=64,
        pooling="last",
        num_classes=None,
        remat=False,
        dtype=None,
        **kwargs,
    ):
        self.transformer = TextTransformer(
            vocabulary_size=vocabulary_size,
            width=width,
            depth=depth,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            sequence_length=sequence_length,
            pooling=pooling,
            num_classes=num_classes,
            remat=remat,
            name="transformer",
            dtype=dtype,
        )
        token_ids = keras.Input(shape=(sequence_length,), dtype="int32", name="token_ids")
        super().__init__(
            inputs=token_ids, outputs=self.transformer(token_ids), dtype=dtype, **kwargs
        )
        self.token_embedding = self.transformer.token_embedding

    def __call__(self, token_ids, *args, **kwargs):
        check_token_ids(token_ids, self.vocabulary_size)  # before Keras casts the input to int32
        return super().__call__(token_ids, *args, **kwargs)

    @property
    def vocabulary_size(self):
        return self.transformer.vocabulary_size

    @property
    def sequence_length(self):
        return self.transformer.sequence_length

    @property
    def output_dim(self):
        return self.transformer.num_classes or self.transformer.width

    def get_config(self):
        config = super().get_config()
        layer = self.transformer.get_config()
        for key in (
            "vocabulary_size", "width", "depth", "num_heads", "mlp_dim",
            "sequence_length", "pooling", "num_classes", "remat",
        ):
            config[key] = layer[key]
        return config
