"""The one Vision Transformer of keras_siglip (big_vision `models/vit.py` numerics).

Every image tower in the package (SigLIP, SigLIP 2, NaFlex, CapPa, PaliGemma) is built
from these layers. Conventions follow big_vision exactly: pre-LayerNorm blocks with
epsilon 1e-6, tanh-approximate GELU, attention kernels in the Flax `DenseGeneral`
layouts (which are Keras `MultiHeadAttention`'s `EinsumDense` layouts), and a patch
embedding stored as a Dense kernel `(P*P*C, W)` in (py, px, c) order, which is the
reshaped conv kernel `(P, P, C, W)` and also the NaFlex patch embedding.
"""

import math

import keras
from keras import ops

LAYER_NORM_EPSILON = 1e-6


def layer_norm(name, dtype=None):
    return keras.layers.LayerNormalization(
        epsilon=LAYER_NORM_EPSILON, name=name, dtype=dtype
    )


def patchify(images, patch_size):
    """Cut images into non-overlapping patches, big_vision's VALID-conv way.

    Args:
        images: `(B, H, W, C)`. Trailing rows/columns that do not fill a whole
            patch are dropped (So400m/14 at 384 px keeps 27x27 patches).
        patch_size: int P.

    Returns:
        `(patches, (h, w))`: patches `(B, h*w, P*P*C)` in row-major patch order,
        each patch flattened in (py, px, c) order; `(h, w)` the static grid size.
    """
    _, height, width, channels = images.shape
    h, w = height // patch_size, width // patch_size
    if h == 0 or w == 0:
        raise ValueError(
            f"Images of size {height}x{width} are smaller than one "
            f"{patch_size}x{patch_size} patch."
        )
    x = images[:, : h * patch_size, : w * patch_size, :]
    x = ops.reshape(x, (-1, h, patch_size, w, patch_size, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    x = ops.reshape(x, (-1, h * w, patch_size * patch_size * channels))
    return x, (h, w)


class PositionEmbedding(keras.layers.Layer):
    """A learned 2-D grid of position embeddings `(grid_h, grid_w, W)`.

    Added to row-major patch tokens `(B, h*w, W)`. When the token grid `(h, w)`
    differs from the stored grid, the table is resized on the fly with half-pixel,
    antialiased bilinear interpolation (the NaFlex rule), so a fixed-resolution
    model runs at any image size.
    """

    def __init__(self, grid_size, **kwargs):
        super().__init__(**kwargs)
        self.grid_size = tuple(grid_size)

    def build(self, input_shape):
        width = input_shape[-1]
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(*self.grid_size, width),
            initializer=keras.initializers.RandomNormal(
                stddev=1.0 / math.sqrt(width)
            ),
        )

    def grid(self, size):
        """The table resized to `size=(h, w)`, flattened to `(h*w, W)`."""
        table = self.embeddings
        if tuple(size) != self.grid_size:
            table = ops.image.resize(
                table[None],
                size,
                interpolation="bilinear",
                antialias=True,
                data_format="channels_last",
            )[0]
        return ops.reshape(table, (size[0] * size[1], -1))

    def call(self, tokens, grid_size):
        return tokens + ops.cast(self.grid(grid_size), tokens.dtype)[None]

    def get_config(self):
        return {**super().get_config(), "grid_size": self.grid_size}


class MlpBlock(keras.layers.Layer):
    """`Dense(mlp_dim) -> gelu(tanh) -> Dense(width)`; big_vision `MlpBlock`."""

    def __init__(self, mlp_dim, **kwargs):
        super().__init__(**kwargs)
        self.mlp_dim = mlp_dim

    def build(self, input_shape):
        init = dict(
            kernel_initializer="glorot_uniform",
            bias_initializer=keras.initializers.RandomNormal(stddev=1e-6),
            dtype=self.dtype_policy,
        )
        self.dense_0 = keras.layers.Dense(self.mlp_dim, name="dense_0", **init)
        self.dense_1 = keras.layers.Dense(input_shape[-1], name="dense_1", **init)
        self.dense_0.build(input_shape)
        self.dense_1.build((*input_shape[:-1], self.mlp_dim))

    def call(self, x):
        return self.dense_1(keras.activations.gelu(self.dense_0(x), approximate=True))

    def get_config(self):
        return {**super().get_config(), "mlp_dim": self.mlp_dim}


def _attention(num_heads, width, name, dtype):
    return keras.layers.MultiHeadAttention(
        num_heads=num_heads,
        key_dim=width // num_heads,
        kernel_initializer="glorot_uniform",
        name=name,
        dtype=dtype,
    )


class EncoderBlock(keras.layers.Layer):
    """Pre-LN transformer block: `x + MHA(LN(x))`, then `x + MLP(LN(x))`.

    Call args:
        x: `(B, N, W)` tokens.
        attention_mask: optional `(B, N, N)` or `(B, 1, N)` boolean, True = attend.
    """

    def __init__(self, num_heads, mlp_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim

    def build(self, input_shape):
        width = input_shape[-1]
        if width % self.num_heads:
            raise ValueError(
                f"Width {width} is not divisible by num_heads={self.num_heads}."
            )
        self.norm_0 = layer_norm("layer_norm_0", self.dtype_policy)
        self.attention = _attention(self.num_heads, width, "attention", self.dtype_policy)
        self.norm_1 = layer_norm("layer_norm_1", self.dtype_policy)
        self.mlp = MlpBlock(self.mlp_dim, name="mlp", dtype=self.dtype_policy)
        for layer in (self.norm_0, self.norm_1, self.mlp):
            layer.build(input_shape)
        self.attention.build(input_shape, input_shape)

    def call(self, x, attention_mask=None):
        y = self.norm_0(x)
        x = x + self.attention(y, y, attention_mask=attention_mask)
        return x + self.mlp(self.norm_1(x))

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, mlp_dim=self.mlp_dim)
        return config


class Encoder(keras.layers.Layer):
    """`depth` encoder blocks followed by the final `encoder_norm` LayerNorm."""

    def __init__(self, depth, num_heads, mlp_dim, **kwargs):
        super().__init__(**kwargs)
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.blocks = [
            EncoderBlock(num_heads, mlp_dim, name=f"block_{i}", dtype=self.dtype_policy)
            for i in range(depth)
        ]
        self.encoder_norm = layer_norm("encoder_norm", self.dtype_policy)

    def build(self, input_shape):
        for block in self.blocks:
            block.build(input_shape)
        self.encoder_norm.build(input_shape)

    def call(self, x, attention_mask=None):
        for block in self.blocks:
            x = block(x, attention_mask=attention_mask)
        return self.encoder_norm(x)

    def get_config(self):
        config = super().get_config()
        config.update(depth=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim)
        return config


class MAPHead(keras.layers.Layer):
    """Multihead attention pooling: a learned probe attends over the tokens.

    Call args:
        x: `(B, N, W)` tokens.
        key_mask: optional `(B, N)`, 1 for tokens that may be attended.

    Returns:
        `(B, W)`.
    """

    def __init__(self, num_heads, mlp_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim

    def build(self, input_shape):
        width = input_shape[-1]
        self.probe = self.add_weight(
            name="probe", shape=(1, 1, width), initializer="glorot_uniform"
        )
        self.attention = _attention(self.num_heads, width, "attention", self.dtype_policy)
        self.attention.build((None, 1, width), input_shape)
        self.norm = layer_norm("layer_norm", self.dtype_policy)
        self.norm.build((None, 1, width))
        self.mlp = MlpBlock(self.mlp_dim, name="mlp", dtype=self.dtype_policy)
        self.mlp.build((None, 1, width))

    def call(self, x, key_mask=None):
        probe = ops.broadcast_to(
            ops.cast(self.probe, x.dtype), (ops.shape(x)[0], 1, x.shape[-1])
        )
        attention_mask = None if key_mask is None else ops.cast(key_mask, "bool")[:, None, :]
        y = self.attention(probe, x, attention_mask=attention_mask)
        y = y + self.mlp(self.norm(y))
        return y[:, 0]

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, mlp_dim=self.mlp_dim)
        return config


POOLINGS = ("map", "gap", "token", "none")


class VisionTransformer(keras.layers.Layer):
    """big_vision's ViT: patch embedding, learned 2-D position grid, encoder, pooling.

    Args:
        patch_size: int P.
        width, depth, num_heads, mlp_dim: transformer sizes.
        grid_size: `(h, w)` of the learned position table (resolution // P).
        pooling: `"map"` (MAP head), `"gap"` (mean), `"token"` (a zero-initialised
            class token prepended after the position embedding), `"none"`.
        num_classes: optional width of a Dense `head` on the pooled output
            (per token for `pooling="none"`; PaliGemma's projection).
        num_channels: input channels C.

    Call args:
        images: `(B, H, W, C)` float, values in [-1, 1].

    Returns:
        `(B, W)` (or `(B, num_classes)`); `(B, h*w, W)` for `pooling="none"`.
    """

    def __init__(
        self,
        patch_size,
        width,
        depth,
        num_heads,
        mlp_dim,
        grid_size,
        pooling="map",
        num_classes=None,
        num_channels=3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}.")
        self.patch_size = patch_size
        self.width = width
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.grid_size = tuple(grid_size)
        self.pooling = pooling
        self.num_classes = num_classes
        self.num_channels = num_channels
        dtype = self.dtype_policy
        self.embedding = keras.layers.Dense(width, name="embedding", dtype=dtype)
        self.position_embedding = PositionEmbedding(
            self.grid_size, name="position_embedding", dtype=dtype
        )
        self.encoder = Encoder(depth, num_heads, mlp_dim, name="encoder", dtype=dtype)
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
        patch_dim = self.patch_size * self.patch_size * self.num_channels
        tokens = (None, None, self.width)
        self.embedding.build((None, None, patch_dim))
        self.position_embedding.build(tokens)
        self.encoder.build(tokens)
        if self.map_head is not None:
            self.map_head.build(tokens)
        if self.pooling == "token":
            self.cls_token = self.add_weight(
                name="cls_token", shape=(1, 1, self.width), initializer="zeros"
            )
        if self.head is not None:
            self.head.build(tokens if self.pooling == "none" else (None, self.width))

    def encode_tokens(self, images):
        """Patch-embed, add positions and encode: `(B, H, W, C)` -> `(B, h*w, W)`."""
        patches, grid = patchify(images, self.patch_size)
        x = self.position_embedding(self.embedding(patches), grid_size=grid)
        if self.pooling == "token":
            cls = ops.cast(self.cls_token, x.dtype)
            x = ops.concatenate([ops.tile(cls, (ops.shape(x)[0], 1, 1)), x], axis=1)
        return self.encoder(x)

    def pool(self, x):
        if self.pooling == "map":
            x = self.map_head(x)
        elif self.pooling == "gap":
            x = ops.mean(x, axis=1)
        elif self.pooling == "token":
            x = x[:, 0]
        return self.head(x) if self.head is not None else x

    def call(self, images):
        if len(images.shape) != 4 or images.shape[-1] != self.num_channels:
            raise ValueError(
                f"Expected images of shape (batch, height, width, {self.num_channels}); "
                f"got shape {tuple(images.shape)}."
            )
        return self.pool(self.encode_tokens(images))

    def compute_output_shape(self, input_shape):
        if self.pooling == "none":
            return (input_shape[0], None, self.num_classes or self.width)
        return (input_shape[0], self.num_classes or self.width)

    def get_config(self):
        config = super().get_config()
        config.update(
            patch_size=self.patch_size,
            width=self.width,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            grid_size=self.grid_size,
            pooling=self.pooling,
            num_classes=self.num_classes,
            num_channels=self.num_channels,
        )
        return config


# big_vision `decode_variant`: name -> (width, depth, mlp_dim, num_heads).
VARIANTS = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "g-opt": (1536, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "G-opt": (1536, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}


def decode_variant(variant):
    """`"So400m/14"` -> dict(width, depth, mlp_dim, num_heads[, patch_size])."""
    name, _, patch = variant.partition("/")
    if name not in VARIANTS:
        raise ValueError(f"Unknown ViT variant {name!r}; known: {sorted(VARIANTS)}.")
    width, depth, mlp_dim, num_heads = VARIANTS[name]
    config = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
    if patch:
        config["patch_size"] = int(patch)
    return config
