"""The one cross-attention text decoder (big_vision CapPa `Decoder` numerics).

CapPa, LocCa and LiT-decoder share it. Pre-LN blocks

    x = x + SelfAttention(LN1(x), mask)
    x = x + CrossAttention(LN2(x), encoded)
    x = x + MLP(LN3(x))

with no attention biases, LayerNorm / MLP biases optional (`use_bias`, big_vision
`decoder_bias`), LayerNorm epsilon 1e-6 (Flax's default), tanh GELU, a learned
position table `(1, max_length, E)` added to the token embeddings, a final
LayerNorm (with bias) and a zero-initialised `Dense(vocabulary_size)` (with bias).

Two ways to predict a caption:
- autoregressive (Cap): inputs are the targets shifted right (pad id 0
  prepended), causal self-attention;
- parallel prediction (Pa): every input is the [MASK] token (id
  `vocabulary_size`, an extra embedding row), full bidirectional self-attention,
  inputs not shifted.
The choice is made per example by a `(B,)` tensor, so one compiled step trains
a batch that mixes both.

Incremental decoding follows keras-hub: `call_with_cache` takes a self-attention
cache `(B, depth, 2, L, H, D)` (keys then values, each layer's slice is keras-hub's
`CachedMultiHeadAttention` layout `(B, 2, L, H, D)`) and a cross-attention cache
`(B, depth, 2, N, H, D)` of the encoder keys and values, computed once per image
by `cross_attention_cache`.
"""

import math

import keras
from keras import ops
from keras_hub.layers import CachedMultiHeadAttention

from keras_siglip.layers.vit import LAYER_NORM_EPSILON, MlpBlock, MultiHeadAttention
from keras_siglip.utils.tensors import check_token_ids

PAD_ID = 0


def shift_right(token_ids, pad_id=PAD_ID):
    """`(B, L)` -> `(B, L)`: `pad_id` prepended, the last token dropped."""
    pad = ops.full((ops.shape(token_ids)[0], 1), pad_id, dtype=token_ids.dtype)
    return ops.concatenate([pad, token_ids[:, :-1]], axis=1)


def causal_mask(query_length, key_length=None, start=0):
    """`(T, S)` bool, True where query `start + i` may attend key `j <= start + i`."""
    key_length = query_length if key_length is None else key_length
    queries = ops.arange(query_length, dtype="int32")[:, None] + ops.cast(start, "int32")
    keys = ops.arange(key_length, dtype="int32")[None, :]
    return keys <= queries


class CachedAttention(CachedMultiHeadAttention, MultiHeadAttention):
    """keras-hub's `CachedMultiHeadAttention` (cache modes and layout) on our
    attention core (`vit.MultiHeadAttention`), without biases.

    Kernels start as Flax's default `lecun_normal` for `DenseGeneral`: a
    truncated normal of variance 1 / fan_in over the contracted axes (E for
    the `(E, H, D)` query/key/value kernels, H*D for the `(H, D, E)` output
    kernel; Keras' `EinsumDense` gives its initializer those axes).
    """

    def __init__(self, num_heads, key_dim, **kwargs):
        kwargs.setdefault("kernel_initializer", "lecun_normal")
        super().__init__(num_heads=num_heads, key_dim=key_dim, use_bias=False, **kwargs)

    def key_value(self, source):
        """`(B, S, E_kv)` -> `(B, 2, S, H, D)`: the keys and values of `source`."""
        return ops.stack([self._key_dense(source), self._value_dense(source)], axis=1)


class DecoderMlp(MlpBlock):
    """`vit.MlpBlock` with optional biases (big_vision CapPa `MlpBlock`)."""

    def __init__(self, mlp_dim, use_bias=True, **kwargs):
        super().__init__(mlp_dim, **kwargs)
        self.use_bias = use_bias

    def build(self, input_shape):
        init = dict(
            use_bias=self.use_bias,
            kernel_initializer="glorot_uniform",
            bias_initializer=keras.initializers.RandomNormal(stddev=1e-6),
            dtype=self.dtype_policy,
        )
        self.dense_0 = keras.layers.Dense(self.mlp_dim, name="dense_0", **init)
        self.dense_1 = keras.layers.Dense(input_shape[-1], name="dense_1", **init)
        self.dense_0.build(input_shape)
        self.dense_1.build((*input_shape[:-1], self.mlp_dim))

    def get_config(self):
        return {**super().get_config(), "use_bias": self.use_bias}


class DecoderBlock(keras.layers.Layer):
    """Pre-LN decoder block: self-attention, cross-attention to the encoder, MLP.

    Args:
        num_heads: attention heads H (head size D = width // H).
        mlp_dim: MLP hidden width.
        use_bias: biases in the three LayerNorms and the MLP (never in attention).
        encoder_width: width of the encoder tokens (None: the decoder width).
        dropout: rate on each sublayer's output and on the attention
            probabilities, in training only (big_vision `dec_dropout_rate`;
            0 in the CapPa recipe).

    Call args:
        x: `(B, T, E)` decoder tokens.
        encoded: `(B, N, E_enc)` encoder tokens; None when
            `cross_attention_cache` is given.
        attention_mask: `(B, T, S)` bool self-attention mask (S = T without a
            cache, the cache length with one), True = attend.
        self_attention_cache: optional `(B, 2, S, H, D)`; the keys/values of
            `x` are written at `cache_update_index` and attention runs over it.
        cache_update_index: int or int tensor, position of `x[:, 0]`.
        cross_attention_cache: optional `(B, 2, N, H, D)` encoder keys/values
            (`cross_key_value(encoded)`), used instead of `encoded`.
        encoder_mask: optional `(B, N)` bool, the real encoder tokens (NaFlex
            padding is False and never attended to); None: all.

    Returns:
        `(B, T, E)`, and the updated self-attention cache when one is given.
    """

    def __init__(self, num_heads, mlp_dim, use_bias=True, encoder_width=None, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.use_bias = use_bias
        self.encoder_width = encoder_width
        self.dropout = float(dropout)
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        width = input_shape[-1]
        if width % self.num_heads:
            raise ValueError(f"Width {width} is not divisible by num_heads={self.num_heads}.")
        tokens = (None, None, width)
        encoder_tokens = (None, None, self.encoder_width or width)
        dtype = self.dtype_policy

        def norm(name):
            layer = keras.layers.LayerNormalization(
                epsilon=LAYER_NORM_EPSILON, center=self.use_bias, name=name, dtype=dtype
            )
            layer.build(tokens)
            return layer

        def attention(name):
            return CachedAttention(
                self.num_heads, width // self.num_heads, dropout=self.dropout, name=name, dtype=dtype
            )

        self.norm_1 = norm("layer_norm_1")
        self.self_attention = attention("self_attention")
        self.self_attention.build(tokens, tokens)
        self.norm_2 = norm("layer_norm_2")
        self.cross_attention = attention("cross_attention")
        self.cross_attention.build(tokens, encoder_tokens)
        self.norm_3 = norm("layer_norm_3")
        self.mlp = DecoderMlp(self.mlp_dim, use_bias=self.use_bias, name="mlp", dtype=dtype)
        self.mlp.build(tokens)

    def cross_key_value(self, encoded):
        """`(B, N, E_enc)` -> `(B, 2, N, H, D)` cross-attention keys and values."""
        return self.cross_attention.key_value(encoded)

    def call(
        self,
        x,
        encoded=None,
        attention_mask=None,
        self_attention_cache=None,
        cache_update_index=None,
        cross_attention_cache=None,
        encoder_mask=None,
        training=None,
    ):
        y = self.norm_1(x)
        y = self.self_attention(
            y, y, attention_mask=attention_mask,
            cache=self_attention_cache, cache_update_index=cache_update_index, training=training,
        )
        if self_attention_cache is not None:
            y, self_attention_cache = y
        x = x + self.dropout_layer(y, training=training)
        y = self.norm_2(x)
        cross_mask = None if encoder_mask is None else ops.cast(encoder_mask, "bool")[:, None, :]
        if cross_attention_cache is None:
            y = self.cross_attention(y, encoded, attention_mask=cross_mask, training=training)
        else:
            # keras-hub's static-cache mode: keys and values come from the cache.
            y, _ = self.cross_attention(
                y, y, attention_mask=cross_mask, cache=cross_attention_cache, training=training
            )
        x = x + self.dropout_layer(y, training=training)
        x = x + self.dropout_layer(self.mlp(self.norm_3(x)), training=training)
        return x if self_attention_cache is None else (x, self_attention_cache)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads, mlp_dim=self.mlp_dim,
            use_bias=self.use_bias, encoder_width=self.encoder_width, dropout=self.dropout,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_siglip")
class TextDecoder(keras.layers.Layer):
    """Token embedding + learned positions, `depth` `DecoderBlock`s, LayerNorm, logits.

    Args:
        vocabulary_size: V, the output vocabulary (ids `[0, V)`; 0 is padding).
        width, depth, num_heads, mlp_dim: decoder sizes (E, layers, H, MLP).
        max_length: the position table's length (longest decoded sequence).
        masked_pred: add the [MASK] embedding row (id V) for parallel prediction.
        use_bias: biases in the blocks' LayerNorms and MLPs (big_vision
            `decoder_bias`; the final LayerNorm and the logits always have one).
        encoder_width: width of the encoder tokens (None: `width`).
        dropout: the blocks' dropout rate (see `DecoderBlock`; training only).

    Call args:
        token_ids: `(B, L)` target ids, `L <= max_length`.
        encoded: `(B, N, E_enc)` encoder tokens.
        parallel: None / False (autoregressive), True (all parallel
            prediction), or a `(B,)` bool tensor choosing per example.
        mask_positions: optional `(B, L)` bool, which inputs of parallel
            examples become [MASK] (default all: big_vision `masking_ratio=1`).
        encoder_mask: optional `(B, N)` bool, real encoder tokens (None: all).

    Returns:
        `(B, L, V)` logits; position t predicts `token_ids[:, t]`.
    """

    def __init__(
        self,
        vocabulary_size,
        width,
        depth,
        num_heads,
        mlp_dim,
        max_length=64,
        masked_pred=False,
        use_bias=True,
        encoder_width=None,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dropout = float(dropout)
        self.vocabulary_size = vocabulary_size
        self.width = width
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.max_length = max_length
        self.masked_pred = bool(masked_pred)
        self.use_bias = bool(use_bias)
        self.encoder_width = encoder_width
        dtype = self.dtype_policy
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size + int(self.masked_pred),
            width,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="token_embedding",
            dtype=dtype,
        )
        self.blocks = [
            DecoderBlock(
                num_heads, mlp_dim, use_bias=use_bias, encoder_width=encoder_width,
                dropout=dropout, name=f"block_{i}", dtype=dtype,
            )
            for i in range(depth)
        ]
        self.final_norm = keras.layers.LayerNormalization(
            epsilon=LAYER_NORM_EPSILON, name="final_norm", dtype=dtype
        )
        self.logits_dense = keras.layers.Dense(
            vocabulary_size, kernel_initializer="zeros", name="logits", dtype=dtype
        )

    def build(self, input_shape=None):
        tokens = (None, None, self.width)
        self.token_embedding.build(None)
        self.position_embedding = self.add_weight(
            name="position_embedding",
            shape=(1, self.max_length, self.width),
            initializer=keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(self.width)),
        )
        for block in self.blocks:
            block.build(tokens)
        self.final_norm.build(tokens)
        self.logits_dense.build(tokens)

    @property
    def head_dim(self):
        return self.width // self.num_heads

    @property
    def mask_id(self):
        """The [MASK] token id (= `vocabulary_size`)."""
        if not self.masked_pred:
            raise ValueError(
                "This decoder has no [MASK] token: build it with `masked_pred=True` "
                "for parallel prediction."
            )
        return self.vocabulary_size

    def prepare_inputs(self, token_ids, parallel=None, mask_positions=None):
        """Decoder inputs and self-attention mask for the targets `token_ids`.

        Args:
            token_ids: `(B, L)` targets.
            parallel, mask_positions: as in `call`.

        Returns:
            `(input_ids, attention_mask)`: `(B, L)` int and `(B, L, L)` bool.
            Autoregressive rows: `shift_right(token_ids)` and the causal mask.
            Parallel rows: [MASK] at `mask_positions` (else the target,
            unshifted) and an all-True mask.
        """
        token_ids = ops.convert_to_tensor(token_ids, dtype="int32")
        batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        input_ids = shift_right(token_ids)
        attention_mask = ops.broadcast_to(causal_mask(length)[None], (batch, length, length))
        if parallel is None or parallel is False:
            return input_ids, attention_mask
        mask_id = self.mask_id
        parallel = ops.broadcast_to(ops.cast(parallel, "bool"), (batch,))
        masked = ops.full_like(token_ids, mask_id)
        if mask_positions is not None:
            masked = ops.where(ops.cast(mask_positions, "bool"), masked, token_ids)
        input_ids = ops.where(parallel[:, None], masked, input_ids)
        attention_mask = ops.logical_or(attention_mask, parallel[:, None, None])
        return input_ids, attention_mask

    def embed(self, input_ids, start=0):
        """`(B, T)` inputs at positions `[start, start + T)` -> `(B, T, E)`."""
        x = self.token_embedding(input_ids)
        table = ops.cast(self.position_embedding, x.dtype)
        return x + ops.slice(table, (0, start, 0), (1, ops.shape(input_ids)[1], self.width))

    def logits(self, x):
        """`(B, T, E)` block outputs -> `(B, T, V)` (final LayerNorm, Dense)."""
        return self.logits_dense(self.final_norm(x))

    def decode(self, input_ids, encoded, attention_mask=None, encoder_mask=None):
        """Logits of prepared inputs (`prepare_inputs`); default mask causal.

        Args:
            input_ids: `(B, L)` decoder inputs (already shifted / masked).
            encoded: `(B, N, E_enc)`.
            attention_mask: `(B, L, L)` bool self-attention mask.
            encoder_mask: optional `(B, N)` bool, real encoder tokens.

        Returns:
            `(B, L, V)` logits.
        """
        return self.logits_dense(self.hidden_states(input_ids, encoded, attention_mask, encoder_mask))

    def hidden_states(self, input_ids, encoded, attention_mask=None, encoder_mask=None):
        """As `decode`, but `(B, L, E)` after the final LayerNorm: the logits
        are `hidden_states @ logits_dense.kernel + bias` (what a loss chunked
        over the vocabulary takes, `losses.chunked_token_nll`)."""
        length = ops.shape(input_ids)[1]
        if attention_mask is None:
            attention_mask = causal_mask(length)[None]
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, encoded, attention_mask=attention_mask, encoder_mask=encoder_mask)
        return self.final_norm(x)

    def call(self, token_ids, encoded, parallel=None, mask_positions=None, encoder_mask=None):
        self._check_length(token_ids)
        check_token_ids(token_ids, self.vocabulary_size)
        input_ids, attention_mask = self.prepare_inputs(token_ids, parallel, mask_positions)
        return self.decode(input_ids, encoded, attention_mask, encoder_mask)

    def cross_attention_cache(self, encoded):
        """`(B, N, E_enc)` -> `(B, depth, 2, N, H, D)`: every block's encoder
        keys and values, computed once and reused at each decoding step."""
        return ops.stack([block.cross_key_value(encoded) for block in self.blocks], axis=1)

    def initial_cache(self, batch_size, length=None, dtype=None):
        """An empty self-attention cache `(B, depth, 2, length, H, D)`
        (`length` defaults to `max_length`)."""
        length = self.max_length if length is None else length
        shape = (batch_size, self.depth, 2, length, self.num_heads, self.head_dim)
        return ops.zeros(shape, dtype=dtype or self.compute_dtype)

    def call_with_cache(
        self, input_ids, cache, cache_update_index, cross_attention_cache, encoder_mask=None
    ):
        """Autoregressive decoding of `T` new positions with a key/value cache.

        Args:
            input_ids: `(B, T)` decoder inputs at positions `[index, index + T)`
                (the previous tokens: input 0 is the pad id 0, input t is
                target t - 1); T = 1 per step, or a whole prompt at once.
            cache: `(B, depth, 2, S, H, D)` self-attention keys/values of the
                positions before `index` (`initial_cache`); `S <= max_length`.
            cache_update_index: int or int tensor `index`.
            cross_attention_cache: `(B, depth, 2, N, H, D)` from
                `cross_attention_cache(encoded)`.
            encoder_mask: optional `(B, N)` bool, real encoder tokens.

        Returns:
            `(logits, hidden_states, cache)`: `(B, T, V)`, `(B, T, E)` (after the
            final LayerNorm) and the cache with the T positions written.
        """
        length = ops.shape(input_ids)[1]
        mask = causal_mask(length, ops.shape(cache)[3], start=cache_update_index)[None]
        x = self.embed(input_ids, start=cache_update_index)
        caches = []
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(
                x, attention_mask=mask,
                self_attention_cache=cache[:, i], cache_update_index=cache_update_index,
                cross_attention_cache=cross_attention_cache[:, i], encoder_mask=encoder_mask,
            )
            caches.append(layer_cache)
        hidden_states = self.final_norm(x)
        return self.logits_dense(hidden_states), hidden_states, ops.stack(caches, axis=1)

    def _check_length(self, token_ids):
        length = token_ids.shape[1]
        if len(token_ids.shape) != 2 or (length is not None and length > self.max_length):
            raise ValueError(
                f"Expected token_ids of shape (batch, length <= {self.max_length}); "
                f"got shape {tuple(token_ids.shape)}."
            )

    def compute_output_shape(self, token_ids_shape, encoded_shape=None, *args, **kwargs):
        return (*token_ids_shape[:2], self.vocabulary_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            width=self.width,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            max_length=self.max_length,
            masked_pred=self.masked_pred,
            use_bias=self.use_bias,
            encoder_width=self.encoder_width,
            dropout=self.dropout,
        )
        return config
