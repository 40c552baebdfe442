"""The text transformer of SigLIP (big_vision `text_transformer.py` numerics).

Token + learned position embedding, the shared pre-LN `Encoder` with no attention
mask (padding tokens are attended, as in every released checkpoint), pooling at the
last position and an optional Dense head.
"""

import math

import keras
from keras import ops

from keras_siglip.layers.vit import Encoder, MAPHead
from keras_siglip.utils.tensors import check_token_ids

POOLINGS = ("last", "first", "gap", "map")


class TextTransformer(keras.layers.Layer):
    """Text tower.

    Args:
        vocabulary_size: number of token ids.
        width, depth, num_heads, mlp_dim: transformer sizes.
        sequence_length: the fixed text length L (the position table's size).
        pooling: `"last"` (released SigLIP / SigLIP 2), `"first"`, `"gap"`, `"map"`.
        num_classes: optional width of the Dense `head` after pooling.
        remat: rematerialise each transformer block in the backward pass
            (see `keras_siglip.layers.vit.Encoder`).

    Call args:
        token_ids: `(B, L)` integers in `[0, vocabulary_size)`.

    Returns:
        `(B, num_classes or width)`.
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}.")
        self.vocabulary_size = vocabulary_size
        self.width = width
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.sequence_length = sequence_length
        self.pooling = pooling
        self.num_classes = num_classes
        dtype = self.dtype_policy
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size,
            width,
            embeddings_initializer=keras.initializers.RandomNormal(
                stddev=1.0 / math.sqrt(width)
            ),
            name="token_embedding",
            dtype=dtype,
        )
        self.encoder = Encoder(
            depth, num_heads, mlp_dim, remat=remat, name="encoder", dtype=dtype
        )
        self.map_head = (
            MAPHead(num_heads, mlp_dim, name="map_head", dtype=dtype)
            if pooling == "map"
            else None
        )
        self.head = (
            keras.layers.Dense(num_classes, name="head", dtype=dtype)
            if num_classes
            else None
        )

    def build(self, input_shape):
        tokens = (None, self.sequence_length, self.width)
        self.token_embedding.build(None)
        self.position_embedding = self.add_weight(
            name="position_embedding",
            shape=(self.sequence_length, self.width),
            initializer=keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(self.width)),
        )
        self.encoder.build(tokens)
        if self.map_head is not None:
            self.map_head.build(tokens)
        if self.head is not None:
            self.head.build((None, self.width))

    @property
    def remat(self):
        return self.encoder.remat

    def call(self, token_ids):
        if len(token_ids.shape) != 2 or token_ids.shape[1] not in (None, self.sequence_length):
            raise ValueError(
                f"Expected token_ids of shape (batch, {self.sequence_length}): this text "
                f"tower has a fixed length of {self.sequence_length}. Got shape "
                f"{tuple(token_ids.shape)}. Pack texts with the model's preprocessor."
            )
        check_token_ids(token_ids, self.vocabulary_size)
        x = self.token_embedding(token_ids)
        x = x + ops.cast(self.position_embedding, x.dtype)[None]
        x = self.encoder(x)
        if self.pooling == "last":
            x = x[:, -1]
        elif self.pooling == "first":
            x = x[:, 0]
        elif self.pooling == "gap":
            x = ops.mean(x, axis=1)
        else:
            x = self.map_head(x)
        return self.head(x) if self.head is not None else x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes or self.width)

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
            remat=self.remat,
        )
        return config
