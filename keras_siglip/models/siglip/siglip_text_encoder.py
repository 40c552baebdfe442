import keras
from keras_hub.models import Backbone

from keras_siglip.layers.text import TextTransformer
from keras_siglip.utils.preset import PresetMixin


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIPTextEncoder(PresetMixin, Backbone):
    """SigLIP text tower: unmasked transformer, last-position pooling, Dense head.

    Args:
        vocabulary_size: tokenizer vocabulary size (32,000 SigLIP, 250,000 i18n,
            256,000 SigLIP 2).
        width, depth, num_heads, mlp_dim: transformer sizes.
        sequence_length: fixed text length L (64; 16 for SigLIP So400m/14@224).
        pooling: `"last"` (released models), `"first"`, `"gap"` or `"map"`.
        num_classes: Dense head width (the embedding size); None for no head
            (mSigLIP So400m/16 i18n).

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
            name="transformer",
            dtype=dtype,
        )
        token_ids = keras.Input(shape=(sequence_length,), dtype="int32", name="token_ids")
        super().__init__(
            inputs=token_ids, outputs=self.transformer(token_ids), dtype=dtype, **kwargs
        )
        self.token_embedding = self.transformer.token_embedding
        self.vocabulary_size = vocabulary_size
        self.width = width
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.sequence_length = sequence_length
        self.pooling = pooling
        self.num_classes = num_classes

    @property
    def output_dim(self):
        return self.num_classes or self.width

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            width=self.width,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            sequence_length=self.sequence_length,
            pooling=self.pooling,
            num_classes=self.num_classes,
        )
        return config
