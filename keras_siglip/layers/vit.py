"""The one Vision Transformer of keras_siglip (big_vision `models/vit.py` numerics).

Every image tower in the package (SigLIP, SigLIP 2, NaFlex, CapPa, PaliGemma) is built
from these layers. Conventions follow big_vision exactly: pre-LayerNorm blocks with
epsilon 1e-6, tanh-approximate GELU, attention kernels in the Flax `DenseGeneral`
layouts (which are Keras `MultiHeadAttention`'s `EinsumDense` layouts), and a patch
embedding stored as a Dense kernel `(P*P*C, W)` in (py, px, c) order, which is the
reshaped conv kernel `(P, P, C, W)` and also the NaFlex patch embedding.
"""

import functools
import math

import keras
from keras import ops

LAYER_NORM_EPSILON = 1e-6


def layer_norm(name, dtype=None):
    return keras.layers.LayerNormalization(
        epsilon=LAYER_NORM_EPSILON, name=name, dtype=dtype
    )


def patch_grid(height, width, patch_size):
    """`(h, w)` whole patches in a `height x width` image (VALID: the border that
    does not fill a patch is dropped); an image smaller than a patch is an error."""
    h, w = height // patch_size, width // patch_size
    if h == 0 or w == 0:
        raise ValueError(
            f"Images of size {height}x{width} are smaller than one "
            f"{patch_size}x{patch_size} patch."
        )
    return h, w


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
    h, w = patch_grid(height, width, patch_size)
    x = images[:, : h * patch_size, : w * patch_size, :]
    x = ops.reshape(x, (-1, h, patch_size, w, patch_size, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    x = ops.reshape(x, (-1, h * w, patch_size * patch_size * channels))
    return x, (h, w)


def resize_weights(out_index, out_size, in_size):
    """Half-pixel, antialiased bilinear interpolation weights (one output position).

    The triangle filter of big_vision's `jax.image.scale_and_translate(...,
    "bilinear", antialias=True)` (also PIL's and torch's antialiased bilinear),
    widened by the downscaling factor and renormalised at the borders. Works on
    traced sizes, so every example may have its own output size.

    Args:
        out_index: int tensor `(...)`, the output position.
        out_size: int tensor broadcastable to `out_index`, the output length.
        in_size: int, the input length.

    Returns:
        `(..., in_size)` float32 weights over the input positions, rows sum to 1.
    """
    out_size = ops.maximum(ops.cast(out_size, "float32"), 1.0)
    # Clamped so that any index (padding, bad coordinates) gets finite weights.
    out_index = ops.clip(ops.cast(out_index, "float32"), 0.0, out_size - 1.0)
    scale = in_size / out_size
    center = scale * (out_index + 0.5)
    support = ops.maximum(scale, 1.0)
    positions = ops.arange(in_size, dtype="float32") + 0.5
    weights = ops.relu(1.0 - ops.abs(positions - center[..., None]) / support[..., None])
    return weights / ops.sum(weights, axis=-1, keepdims=True)


POSITION_EMBEDDINGS = ("learned_2d", "factorized", "factorized_fractional")


class PositionEmbedding(keras.layers.Layer):
    """Learned position embeddings of a patch grid.

    `kind` picks the parameterisation:
    - `"learned_2d"` (big_vision, SigLIP, PaliGemma): one table `(gh, gw, W)`,
      resized to each image's patch grid with half-pixel antialiased bilinear
      interpolation (the NaFlex rule, `resize_weights`), so a fixed-resolution
      model runs at any image size and NaFlex images of any aspect ratio get
      their own grid. Grids larger than 64 patches per side are fine
      (big_vision's 64x64 canvas returns NaN there).
    - `"factorized"` (NaViT, absolute): `pos(y, x) = E_y[y] + E_x[x]`, tables
      `(gh, W)` and `(gw, W)` indexed by the patch's row and column: `grid_size`
      is the largest grid. A token at a row >= gh or column >= gw gets no
      embedding for that axis, so bound the NaFlex patch count accordingly
      (a static grid larger than the tables raises).
    - `"factorized_fractional"` (NaViT, fractional): `pos(y, x) = φ_y(y / h) +
      φ_x(x / w)`, each a table of `gh` / `gw` entries over [0, 1] read with the
      same interpolation as `"learned_2d"` at the patch centre's fraction of
      its image's side: size-independent, any grid.

    Call args:
        tokens: `(B, N, W)`.
        grid_size: static `(h, w)` for row-major tokens of one grid (`N = h*w`).
        patch_coords, grid_shapes: instead of `grid_size`, per token `(B, N, 2)`
            int (y, x) coordinates and the `(h, w)` grid of the token's image
            (NaFlex and packed sequences; computed for the whole batch at once).
    """

    def __init__(self, grid_size, kind="learned_2d", **kwargs):
        super().__init__(**kwargs)
        if kind not in POSITION_EMBEDDINGS:
            raise ValueError(f"Position embedding kind must be one of {POSITION_EMBEDDINGS}; got {kind!r}.")
        self.grid_size = tuple(grid_size)
        self.kind = kind

    def build(self, input_shape):
        width = input_shape[-1]
        initializer = keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(width))
        if self.kind == "learned_2d":
            self.embeddings = self.add_weight(
                name="embeddings", shape=(*self.grid_size, width), initializer=initializer
            )
        else:
            self.embeddings_y = self.add_weight(
                name="embeddings_y", shape=(self.grid_size[0], width), initializer=initializer
            )
            self.embeddings_x = self.add_weight(
                name="embeddings_x", shape=(self.grid_size[1], width), initializer=initializer
            )

    def grid(self, size):
        """The embeddings of a static `size=(h, w)` grid, flattened to `(h*w, W)`."""
        h, w = size
        if self.kind == "learned_2d":
            table = self.embeddings
            if tuple(size) != self.grid_size:
                rows = resize_weights(ops.arange(h), h, self.grid_size[0])
                cols = resize_weights(ops.arange(w), w, self.grid_size[1])
                # In float32: under mixed precision the table is read in bfloat16 (torch's
                # einsum refuses mixed dtypes) and interpolation weights need the bits.
                resized = ops.einsum("yg,gkd,xk->yxd", rows, ops.cast(table, "float32"), cols)
                table = ops.cast(resized, table.dtype)
            return ops.reshape(table, (h * w, -1))
        if self.kind == "factorized":
            if h > self.grid_size[0] or w > self.grid_size[1]:
                raise ValueError(
                    f"A {h}x{w} patch grid exceeds the factorized position tables "
                    f"({self.grid_size[0]} rows, {self.grid_size[1]} columns).")
            rows, cols = self.embeddings_y[:h], self.embeddings_x[:w]
        else:
            rows = ops.matmul(resize_weights(ops.arange(h), h, self.grid_size[0]),
                              ops.cast(self.embeddings_y, "float32"))
            cols = ops.matmul(resize_weights(ops.arange(w), w, self.grid_size[1]),
                              ops.cast(self.embeddings_x, "float32"))
        table = ops.cast(rows[:, None, :] + cols[None, :, :], self.embeddings_y.dtype)
        return ops.reshape(table, (h * w, -1))

    def at(self, patch_coords, grid_shapes):
        """Embeddings at `(B, N, 2)` coordinates of images with `(B, N, 2)` grids.

        One matmul for the batch: each token's weights over the stored table(s)
        (learned_2d: the outer product of its row and column interpolation
        weights; factorized: one-hot rows and columns).
        """
        gh, gw = self.grid_size
        if self.kind == "factorized":
            rows = ops.one_hot(patch_coords[..., 0], gh, dtype="float32")
            cols = ops.one_hot(patch_coords[..., 1], gw, dtype="float32")
        else:
            rows = resize_weights(patch_coords[..., 0], grid_shapes[..., 0], gh)
            cols = resize_weights(patch_coords[..., 1], grid_shapes[..., 1], gw)
        if self.kind == "learned_2d":
            weights = rows[..., :, None] * cols[..., None, :]
            weights = ops.reshape(weights, (*ops.shape(weights)[:2], gh * gw))
            return ops.matmul(weights, ops.reshape(self.embeddings, (gh * gw, -1)))
        return (ops.matmul(rows, ops.cast(self.embeddings_y, "float32"))
                + ops.matmul(cols, ops.cast(self.embeddings_x, "float32")))

    def call(self, tokens, grid_size=None, patch_coords=None, grid_shapes=None):
        if grid_size is not None:
            embeddings = self.grid(grid_size)[None]
        else:
            embeddings = self.at(patch_coords, grid_shapes)
        return tokens + ops.cast(embeddings, tokens.dtype)

    def get_config(self):
        return {**super().get_config(), "grid_size": self.grid_size, "kind": self.kind}


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


class MultiHeadAttention(keras.layers.MultiHeadAttention):
    """Keras `MultiHeadAttention` (same weights and layouts), with the attention
    core computed in a heads-first `(B, H, T, D)` layout on JAX's CPU backend.

    XLA's CPU dot kernels are much faster with the batch dimensions leading:
    for 32 x 256 tokens, 2 heads of 32, the core takes 10 ms this way against
    25 ms through `jax.nn.dot_product_attention`'s `(B, T, H, D)` einsums (the
    NaFlex tiny tower: 1.6x faster). TensorFlow (XLA) and torch (fused SDPA)
    are faster with Keras' own path, which they keep.

    Under a mixed policy (`mixed_bfloat16`) the attention logits and their
    softmax are float32 on every path: the heads-first core asks for float32
    logits (`preferred_element_type`) and the explicit-scores path gets a
    float32 softmax; torch's `scaled_dot_product_attention` accumulates in
    float32 (its bfloat16 output is the float32 result rounded); JAX's fused
    attention computes float32 logits; TensorFlow's rounds bfloat16 logits
    before its float32 softmax, so on TensorFlow the core runs in float32.
    The probabilities are rounded to bfloat16 before `probs @ v` (as in
    `jax.nn.dot_product_attention`), except on TensorFlow.
    """

    def _build_attention(self, rank):
        super()._build_attention(rank)
        if _is_half(self.compute_dtype):
            self._softmax = keras.layers.Softmax(axis=self._softmax.axis, dtype="float32")

    def _compute_attention(self, query, key, value, attention_mask=None, training=None,
                           return_attention_scores=False, use_causal_mask=False):
        if _is_half(query.dtype) and keras.backend.backend() == "tensorflow":
            # TensorFlow's bfloat16 einsum rounds the q.k logits to bfloat16
            # before Keras' float32 softmax: run the core in float32.
            query, key, value = (ops.cast(t, "float32") for t in (query, key, value))
        if not _heads_first() or return_attention_scores or use_causal_mask or self._dropout:
            return super()._compute_attention(
                query, key, value, attention_mask=attention_mask, training=training,
                return_attention_scores=return_attention_scores, use_causal_mask=use_causal_mask,
            )
        import jax.numpy as jnp

        query, key, value = (ops.transpose(t, (0, 2, 1, 3)) for t in (query, key, value))
        query = query * ops.cast(self._inverse_sqrt_key_dim, query.dtype)
        # Keras' (B, N, T, S) scores; float32 logits from half-precision inputs.
        scores = jnp.einsum(
            "bhtd,bhsd->bhts", query, key,
            preferred_element_type="float32" if _is_half(query.dtype) else None,
        )
        weights = ops.cast(self._masked_softmax(scores, attention_mask), value.dtype)
        return ops.einsum("bhts,bhsd->bthd", weights, value), None


def _is_half(dtype):
    return keras.backend.standardize_dtype(dtype) in ("float16", "bfloat16")


def _heads_first():
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() == "cpu"


def _attention(num_heads, width, name, dtype):
    return MultiHeadAttention(
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
    """`depth` encoder blocks followed by the final `encoder_norm` LayerNorm.

    Args:
        remat: rematerialise each block (`keras.remat`: `jax.checkpoint`,
            `tf.recompute_grad`, torch activation checkpointing): only the
            block inputs are kept for the backward pass, which recomputes each
            block's activations. Same values and gradients; less memory, about
            one more forward pass of compute per training step.
    """

    def __init__(self, depth, num_heads, mlp_dim, remat=False, **kwargs):
        super().__init__(**kwargs)
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.remat = bool(remat)
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
            if self.remat:
                # The mask is closed over, not an argument: TensorFlow's
                # `recompute_grad` takes tensors positionally only.
                x = keras.remat(functools.partial(block, attention_mask=attention_mask))(x)
            else:
                x = block(x, attention_mask=attention_mask)
        return self.encoder_norm(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            depth=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim, remat=self.remat
        )
        return config


class MAPHead(keras.layers.Layer):
    """Multihead attention pooling: a learned probe attends over the tokens.

    Call args:
        x: `(B, N, W)` tokens.
        key_mask: optional `(B, N)`, 1 for tokens that may be attended; or
            `(B, S, N)` to pool S groups of tokens (the images of packed
            sequences) with the same probe.

    Returns:
        `(B, W)`, or `(B, S, W)` for a `(B, S, N)` mask.
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
        grouped = key_mask is not None and len(key_mask.shape) == 3
        num_queries = ops.shape(key_mask)[1] if grouped else 1
        probe = ops.broadcast_to(
            ops.cast(self.probe, x.dtype), (ops.shape(x)[0], num_queries, x.shape[-1])
        )
        attention_mask = None
        if key_mask is not None:
            attention_mask = ops.cast(key_mask, "bool")
            attention_mask = attention_mask if grouped else attention_mask[:, None, :]
        y = self.attention(probe, x, attention_mask=attention_mask)
        y = y + self.mlp(self.norm(y))
        return y if grouped else y[:, 0]

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
        remat: rematerialise each transformer block in the backward pass
            (see `Encoder`); saves activation memory when training large towers.
        position_embedding: `"learned_2d"` (big_vision), `"factorized"` or
            `"factorized_fractional"` (NaViT); see `PositionEmbedding`.

    Call args:
        inputs: `(B, H, W, C)` float images in [-1, 1]; or NaFlex patches, a dict
            with `"patches"` `(B, N, P*P*C)` in (py, px, c) order, `"patch_coords"`
            `(B, N, 2)` int (y, x) and `"patch_mask"` `(B, N)` (1 = real patch);
            or packed sequences (NaViT), a dict with `"patches"`,
            `"patch_coords"`, `"segment_ids"` `(B, N)` (0 = padding, s = the
            s-th image of the sequence), `"image_mask"` `(B, S)` (1 = slot holds
            an image) and optionally `"grid_shape"` `(B, S, 2)`, each image's
            full patch grid (needed when patches were dropped; else the
            largest coordinates + 1 of each image).

        return_tokens: return the encoder's `(B, N, W)` output tokens (after
            `encoder_norm`, before pooling and `head`): what a decoder
            cross-attends to (CapPa, LiT-decoder on a pooled SigLIP tower).

    Returns:
        `(B, W)` (or `(B, num_classes)`); `(B, S, ...)` for packed sequences
        (zeros in empty slots); `(B, N, W)` tokens for `pooling="none"`.
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
        remat=False,
        position_embedding="learned_2d",
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
            self.grid_size, kind=position_embedding, name="position_embedding", dtype=dtype
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

    @property
    def remat(self):
        return self.encoder.remat

    def embed_images(self, images):
        """Patch embedding of whole images: `(B, H, W, C)` -> `(B, h*w, W)`, `(h, w)`.

        The same weights and values as `embedding(patchify(images))`, computed as a
        strided VALID convolution with the Dense kernel reshaped to `(P, P, C, W)`:
        compilers fuse it better than the patchify transpose (about 6% faster `fit`
        steps on XLA CPU; fewer ops in eager torch). A quantized embedding runs as
        its own layer (`quantize`: its kernel is stored as integers and scales).
        """
        batch, height, width, channels = images.shape
        size = self.patch_size
        grid = patch_grid(height, width, size)
        if batch == 0:  # TensorFlow's convolution returns an empty input unchanged
            return ops.zeros((0, grid[0] * grid[1], self.width), images.dtype), grid
        if self.embedding.quantization_mode is not None:  # its kernel is not the float weights
            patches, _ = patchify(images, size)
            return self.embedding(patches), grid
        kernel = ops.reshape(self.embedding.kernel, (size, size, channels, self.width))
        x = ops.conv(
            images, ops.cast(kernel, images.dtype), strides=size, padding="valid",
            data_format="channels_last",
        )
        x = x + ops.cast(self.embedding.bias, x.dtype)
        return ops.reshape(x, (-1, grid[0] * grid[1], self.width)), grid

    def encode_tokens(self, images, masked_patches=None, mask_token=None):
        """Patch-embed, add positions and encode: `(B, H, W, C)` -> `(B, h*w, W)`.

        `masked_patches` `(B, h*w)` bool and `mask_token` `(W,)`: the embeddings
        of the masked patches are replaced by the token before positions are
        added (masked prediction, SigLIP 2 stage B / TIPS, as in iBOT).
        """
        x, grid = self.embed_images(images)
        x = replace_masked(x, masked_patches, mask_token)
        x = self.position_embedding(x, grid_size=grid)
        if self.pooling == "token":
            cls = ops.cast(self.cls_token, x.dtype)
            x = ops.concatenate([ops.tile(cls, (ops.shape(x)[0], 1, 1)), x], axis=1)
        return self.encoder(x)

    def encode_patches(self, patches, patch_coords, segment_ids, grid_shapes, masked_patches=None,
                       mask_token=None):
        """NaFlex / packed token path: `(B, N, P*P*C)` patches -> `(B, N, W)`.

        Tokens attend only within their own image (`segment_ids` equal); padding
        (segment 0) attends only to padding, so no attention row is empty and
        real tokens never see padding. `masked_patches` / `mask_token`: as in
        `encode_tokens`.
        """
        x = replace_masked(self.embedding(patches), masked_patches, mask_token)
        x = self.position_embedding(x, patch_coords=patch_coords, grid_shapes=grid_shapes)
        same_image = segment_ids[:, :, None] == segment_ids[:, None, :]
        return self.encoder(x, attention_mask=same_image)

    def pool(self, x, key_mask=None):
        """Pool `(B, N, W)` tokens; `key_mask` `(B, N)` or per image `(B, S, N)`."""
        if self.pooling == "map":
            x = self.map_head(x, key_mask=key_mask)
        elif self.pooling == "gap":
            if key_mask is None:
                x = ops.mean(x, axis=1)
            else:
                weights = ops.cast(key_mask, x.dtype)
                weights = weights if len(key_mask.shape) == 3 else weights[:, None, :]
                weights = weights / ops.maximum(ops.sum(weights, axis=-1, keepdims=True), 1)
                x = ops.matmul(weights, x)
                x = x if len(key_mask.shape) == 3 else x[:, 0]
        elif self.pooling == "token":
            x = x[:, 0]
        return self.head(x) if self.head is not None else x

    def call(self, inputs, return_tokens=False, masked_patches=None, mask_token=None):
        """`(B, H, W, C)` images or the NaFlex / packed dict -> pooled `(B, D)`
        (packed: `(B, S, D)`), or the tokens with `return_tokens=True`.

        `masked_patches` `(B, N)` bool (True: hidden) with `mask_token` `(W,)`
        replace those patches' embeddings by the token (masked prediction).
        """
        if (masked_patches is None) != (mask_token is None):
            raise ValueError("masked_patches and mask_token go together: pass both or neither.")
        if isinstance(inputs, dict):
            return self._call_patches(inputs, return_tokens, masked_patches, mask_token)
        images = inputs
        if len(images.shape) != 4 or images.shape[-1] != self.num_channels:
            raise ValueError(
                f"Expected images of shape (batch, height, width, {self.num_channels}); "
                f"got shape {tuple(images.shape)}."
            )
        tokens = self.encode_tokens(images, masked_patches, mask_token)
        return tokens if return_tokens else self.pool(tokens)

    def _call_patches(self, inputs, return_tokens=False, masked_patches=None, mask_token=None):
        patches, coords = inputs["patches"], ops.cast(inputs["patch_coords"], "int32")
        patch_dim = self.patch_size * self.patch_size * self.num_channels
        if len(patches.shape) != 3 or patches.shape[-1] != patch_dim:
            raise ValueError(
                f"Expected patches of shape (batch, num_patches, {patch_dim}) for "
                f"{self.patch_size}x{self.patch_size}x{self.num_channels} patches; "
                f"got shape {tuple(patches.shape)}."
            )
        if self.pooling == "token":
            raise ValueError("NaFlex and packed inputs need `pooling` map, gap or none, not token.")
        packed = "segment_ids" in inputs
        if packed:
            segments = ops.cast(inputs["segment_ids"], "int32")
            image_mask = ops.cast(inputs["image_mask"], "int32")
            slots = ops.arange(1, ops.shape(image_mask)[1] + 1, dtype="int32")
            key_mask = segments[:, None, :] == slots[None, :, None]  # (B, S, N)
        elif "patch_mask" in inputs:
            segments = ops.cast(inputs["patch_mask"], "int32")
            key_mask = segments > 0
        else:
            raise ValueError(
                "NaFlex inputs need `patch_mask` (one image per sequence) or "
                f"`segment_ids` and `image_mask` (packed); got keys {sorted(inputs)}."
            )
        grid = inputs.get("grid_shape")
        if grid is None:
            grid = image_grid_shapes(coords, key_mask if packed else key_mask[:, None])
        else:
            grid = ops.cast(grid, "int32")
            grid = grid if packed else grid[:, None]
        # Each token's image grid (padding takes the first image's: its output is
        # never used, and `resize_weights` keeps any grid finite).
        slot = ops.maximum(segments - 1, 0)[..., None]
        token_grid = ops.take_along_axis(grid, ops.concatenate([slot, slot], axis=-1), axis=1)
        x = self.encode_patches(patches, coords, segments, token_grid, masked_patches, mask_token)
        if return_tokens:
            return x
        if self.pooling == "none":
            return self.head(x) if self.head is not None else x
        if not packed:
            return self.pool(x, key_mask)
        # Empty slots would attend to nothing: let them see all tokens, then zero them.
        filled = ops.cast(image_mask, "bool")[..., None]
        x = self.pool(x, ops.logical_or(key_mask, ops.logical_not(filled)))
        return ops.where(filled, x, ops.zeros_like(x))

    def compute_output_spec(self, inputs, return_tokens=False):
        shape = keras.tree.map_structure(lambda x: x.shape, inputs)
        if return_tokens:
            batch = shape["patches"][:2] if isinstance(shape, dict) else (shape[0], None)
            shape = (*batch, self.width)
        else:
            shape = self.compute_output_shape(shape)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        width = self.num_classes or self.width
        if isinstance(input_shape, dict):
            batch, tokens = input_shape["patches"][:2]
            if self.pooling == "none":
                return (batch, tokens, width)
            if "segment_ids" in input_shape:
                return (batch, input_shape["image_mask"][1], width)
            return (batch, width)
        if self.pooling == "none":
            return (input_shape[0], None, width)
        return (input_shape[0], width)

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
            remat=self.remat,
            position_embedding=self.position_embedding.kind,
        )
        return config


def image_grid_shapes(patch_coords, image_masks):
    """Each image's patch grid `(h, w)` = largest coordinates + 1 of its patches.

    Args:
        patch_coords: `(B, N, 2)` int (y, x).
        image_masks: `(B, S, N)` bool, which tokens belong to each of S images.

    Returns:
        `(B, S, 2)` int32; `(0, 0)` for an image without patches.
    """
    coords = ops.cast(patch_coords, "int32")[:, None] + 1  # (B, 1, N, 2)
    masked = ops.where(image_masks[..., None], coords, 0)
    if 0 in tuple(masked.shape):  # an empty batch: TF's and torch's max refuse empty tensors
        return ops.zeros((*ops.shape(masked)[:2], 2), "int32")
    return ops.max(masked, axis=2)


def replace_masked(embeddings, masked_patches, mask_token):
    """`(B, N, W)` patch embeddings with those where `masked_patches` `(B, N)`
    is True replaced by `mask_token` `(W,)`; unchanged when both are None."""
    if masked_patches is None:
        return embeddings
    got, expected = tuple(masked_patches.shape), tuple(embeddings.shape[:2])
    if len(got) != 2 or any(a is not None and b is not None and a != b for a, b in zip(got, expected)):
        raise ValueError(
            f"masked_patches must have shape (batch, num_patches) = {tuple(embeddings.shape[:2])}; got "
            f"{tuple(masked_patches.shape)}."
        )
    token = ops.cast(mask_token, embeddings.dtype)[None, None, :]
    return ops.where(ops.cast(masked_patches, "bool")[..., None], token, embeddings)


