"""Gemma 1 and Gemma 2 decoders (the language model of PaliGemma 1 and 2).

Numerics follow HF transformers (`modeling_gemma.py`, `modeling_gemma2.py`) and
big_vision (`models/ppp/gemma.py`), which agree on everything below:

- RMSNorm `x * rsqrt(mean(x^2) + 1e-6) * (1 + scale)`, computed in float32,
  `scale` zero-initialised. Gemma 1 blocks: pre-attention and pre-FFW norms;
  Gemma 2 adds post-attention and post-FFW norms on the branch outputs.
- Token embeddings times `sqrt(hidden_dim)`, the factor cast to the embedding
  dtype first (HF `embed_scale.to(weight.dtype)`, big_vision the same): in
  bfloat16 sqrt(2048) = 45.2548 becomes 45.25, sqrt(3584) = 59.8665 becomes
  59.75, sqrt(4608) becomes 68; 48 (2304) is exact. Image tokens (PaliGemma's
  prefix) are not scaled.
- RoPE, max wavelength 10,000, halves split (`[x1 cos - x2 sin, x2 cos + x1 sin]`
  with x1 the first half, not interleaved): keras-hub's `RotaryEmbedding`, whose
  inverse frequencies `10000^(-2i/d)` and rotation are HF's `rotate_half`.
- Grouped-query attention (multi-query for Gemma 1 2B): query head `n` reads
  key/value head `n // (N / K)` (HF `repeat_kv`, big_vision's `(K, G)` reshape).
  Queries scaled by `query_pre_attn_scalar ** -0.5` (head_dim for all but
  Gemma 2 27B, which uses hidden_dim / num_heads = 144); logits in float32;
  Gemma 2 soft-caps them, `tanh(logits / 50) * 50`, before masking.
- GeGLU MLP: `down(gelu_tanh(gate(x)) * up(x))`, no biases anywhere.
- Tied output embedding (`ReversibleEmbedding`), Gemma 2's final soft cap
  `tanh(logits / 30) * 30`.

The attention mask is big_vision's prefix-LM mask made from a padding mask and an
"ar" mask (`make_attention_mask`): tokens sharing `cumsum(ar)` attend to each
other fully, later groups are causal. Gemma 2's local layers (even layer indices,
HF's `layer_types` default) add a sliding window the HF way: a query at `i` sees
keys `j > i - window`, except that keys of its own bidirectional group (PaliGemma's
image + prefix) stay visible (HF ORs its `token_type_ids` block mask onto the
sliding causal mask). big_vision has no sliding window (global attention in every
layer, the way PaliGemma 2 was trained); `sliding_window=None` gives that.

Positions are `0..L-1` over the whole (image + text) sequence, as big_vision; HF
PaliGemma counts from 1, which RoPE cannot see (it depends on `i - j` only).

The key/value cache follows keras-hub: `(B, num_layers, 2, S, K, head_dim)`,
keys then values, one `(B, 2, S, K, head_dim)` slice per layer.
"""

import functools
import math

import keras
from keras import ops
from keras_hub.layers import ReversibleEmbedding, RotaryEmbedding

RMS_NORM_EPSILON = 1e-6
ROPE_MAX_WAVELENGTH = 10_000
# big_vision's fill for masked attention logits (float32; finite, so a fully
# masked row gives a uniform softmax instead of NaN).
MASK_VALUE = -2.3819763e38


def soft_cap(x, cap):
    """`tanh(x / cap) * cap`; `x` unchanged for `cap` None or 0."""
    if not cap:
        return x
    return ops.tanh(x / cap) * cap


def make_attention_mask(padding_mask, ar_mask):
    """big_vision's `make_attn_mask`: `(B, L)`, `(B, L)` -> `(B, L, L)` bool.

    `attn[b, i, j] = cumsum(ar)[b, j] <= cumsum(ar)[b, i] and padding_mask[b, i]
    and padding_mask[b, j]`. Tokens with `ar = 0` join the group of the token
    before them (attend to it and it to them); `ar = 1` starts a new group.
    PaliGemma: image + prefix (+ "\\n") have ar 0, one full block; every suffix
    token has ar 1, so the suffix is causal and sees the whole prefix.
    """
    return prefix_lm_mask(padding_mask, ar_mask)


def prefix_lm_mask(padding_mask, ar_mask, query_start=0, query_length=None, sliding_window=None):
    """The prefix-LM mask of the queries `[query_start, query_start + T)` over all keys.

    Args:
        padding_mask: `(B, S)`, 1 / True for real tokens (keys and queries).
        ar_mask: `(B, S)` int, big_vision's `mask_ar` (see `make_attention_mask`).
        query_start: int or int tensor, position of the first query.
        query_length: T (static int); default `S - query_start` for a Python int
            start (the whole sequence when 0).
        sliding_window: None, or the local window W of Gemma 2's sliding layers:
            a key `j` is also required to satisfy `j > i - W` unless it is in the
            query's own bidirectional group (HF's rule, see the module docstring).

    Returns:
        `(B, T, S)` bool, True = attend. Keys at or after `query_start + T` are
        never attended (unwritten cache slots). Padded query rows are all False
        (big_vision); their outputs are unused and stay finite.
    """
    valid = ops.cast(padding_mask, "bool")
    groups = ops.cumsum(ops.cast(ar_mask, "int32"), axis=1)
    length = ops.shape(groups)[1]
    if query_length is None:
        query_length = length - query_start
    start = ops.cast(query_start, "int32")
    queries = start + ops.arange(query_length, dtype="int32")  # (T,)
    keys = ops.arange(length, dtype="int32")  # (S,)
    query_groups = ops.take(groups, queries, axis=1)  # (B, T)
    query_valid = ops.take(valid, queries, axis=1)
    mask = groups[:, None, :] <= query_groups[:, :, None]
    mask = mask & valid[:, None, :] & query_valid[:, :, None]
    mask = mask & (keys < start + query_length)[None, None, :]
    if sliding_window:
        near = keys[None, :] > queries[:, None] - sliding_window  # (T, S)
        same_group = groups[:, None, :] == query_groups[:, :, None]
        mask = mask & (near[None] | same_group)
    return mask


class RMSNormalization(keras.layers.Layer):
    """Gemma's RMSNorm `x * rsqrt(mean(x^2) + eps) * (1 + scale)`, in float32.

    The product is taken in float32 and cast back afterwards (HF Gemma 2's
    `(x * w).to(dtype)`, big_vision), `scale` `(D,)` starts at 0.
    """

    def __init__(self, epsilon=RMS_NORM_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x):
        y = ops.cast(x, "float32")
        y = y * ops.rsqrt(ops.mean(ops.square(y), axis=-1, keepdims=True) + self.epsilon)
        y = y * (1.0 + ops.cast(self.scale, "float32"))
        return ops.cast(y, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


class GemmaAttention(keras.layers.Layer):
    """Grouped-query self-attention with RoPE, optional logit soft cap and a KV cache.

    Kernels (keras-hub Gemma layouts; no biases): `query` `(N, D, H)`, `key` and
    `value` `(K, D, H)`, `attention_output` `(N, H, D)` (N query heads, K key/value
    heads, H head_dim, D width).

    Call args:
        x: `(B, T, D)`.
        attention_mask: `(B, T, S)` bool, True = attend (S = T without a cache).
        cache: optional `(B, 2, S, K, H)`: the keys and values of `x` are written
            at `cache_update_index` and attention runs over the whole cache.
        cache_update_index: int or int tensor, the position of `x[:, 0]` (also
            its RoPE position; 0 without a cache).

    Returns:
        `(B, T, D)`, and the updated cache when one is given.
    """

    def __init__(
        self,
        num_query_heads,
        num_key_value_heads,
        head_dim,
        query_pre_attn_scalar=None,
        logit_soft_cap=None,
        rope_max_wavelength=ROPE_MAX_WAVELENGTH,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_query_heads % num_key_value_heads:
            raise ValueError(
                f"num_query_heads={num_query_heads} is not a multiple of "
                f"num_key_value_heads={num_key_value_heads}."
            )
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.logit_soft_cap = logit_soft_cap
        self.rope_max_wavelength = rope_max_wavelength
        self.dropout = float(dropout)

    def build(self, input_shape):
        width = input_shape[-1]
        n, k, h = self.num_query_heads, self.num_key_value_heads, self.head_dim

        def einsum(equation, output_shape, name):
            return keras.layers.EinsumDense(
                equation, output_shape=output_shape, kernel_initializer="lecun_normal",
                name=name, dtype=self.dtype_policy,
            )

        self.query_dense = einsum("btd,ndh->btnh", (None, n, h), "query")
        self.key_dense = einsum("bsd,kdh->bskh", (None, k, h), "key")
        self.value_dense = einsum("bsd,kdh->bskh", (None, k, h), "value")
        self.output_dense = einsum("btnh,nhd->btd", (None, width), "attention_output")
        self.query_dense.build(input_shape)
        self.key_dense.build(input_shape)
        self.value_dense.build(input_shape)
        self.output_dense.build((None, None, n, h))
        self.rotary = RotaryEmbedding(
            max_wavelength=self.rope_max_wavelength, sequence_axis=1, feature_axis=-1,
            dtype=self.dtype_policy,
        )
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    @property
    def query_scale(self):
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def call(self, x, attention_mask=None, cache=None, cache_update_index=0, training=None):
        start = 0 if cache_update_index is None else cache_update_index
        query = self.rotary(self.query_dense(x), start_index=start)
        key = self.rotary(self.key_dense(x), start_index=start)
        value = self.value_dense(x)
        if cache is not None:
            index = ops.cast(start, "int32")
            zero = ops.zeros((), "int32")
            key = ops.slice_update(cache[:, 0], (zero, index, zero, zero), key)
            value = ops.slice_update(cache[:, 1], (zero, index, zero, zero), value)
            cache = ops.stack([key, value], axis=1)
        query = query * ops.cast(self.query_scale, query.dtype)
        out = self._attend(query, key, value, attention_mask, training)
        out = self.output_dense(out)
        return out if cache is None else (out, cache)

    def _attend(self, query, key, value, attention_mask, training):
        """`(B, T, N, H)` queries over `(B, S, K, H)` keys/values -> `(B, T, N, H)`."""
        batch, length = ops.shape(query)[0], ops.shape(query)[1]
        k, groups = self.num_key_value_heads, self.num_query_heads // self.num_key_value_heads
        query = ops.reshape(query, (batch, length, k, groups, self.head_dim))
        logits = ops.einsum(
            "btkgh,bskh->bkgts", ops.cast(query, "float32"), ops.cast(key, "float32")
        )
        logits = soft_cap(logits, self.logit_soft_cap)
        if attention_mask is not None:
            mask = ops.cast(attention_mask, "bool")[:, None, None, :, :]
            logits = ops.where(mask, logits, MASK_VALUE)
        probs = ops.cast(ops.softmax(logits, axis=-1), value.dtype)
        probs = self.dropout_layer(probs, training=training)
        out = ops.einsum("bkgts,bskh->btkgh", probs, value)
        return ops.reshape(out, (batch, length, self.num_query_heads, self.head_dim))

    def get_config(self):
        config = super().get_config()
        config.update(
            num_query_heads=self.num_query_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            query_pre_attn_scalar=self.query_pre_attn_scalar,
            logit_soft_cap=self.logit_soft_cap,
            rope_max_wavelength=self.rope_max_wavelength,
            dropout=self.dropout,
        )
        return config


class GemmaDecoderBlock(keras.layers.Layer):
    """One Gemma block: `h = x + [post_norm](attn(pre_norm(x)))`,
    `out = h + [post_ffw_norm](ffw(pre_ffw_norm(h)))`.

    Args:
        num_query_heads, num_key_value_heads, head_dim: attention sizes.
        intermediate_dim: GeGLU hidden width F (`ffw_gating`, `ffw_gating_2`
            `(D, F)`, `ffw_linear` `(F, D)`).
        query_pre_attn_scalar, attention_logit_soft_cap: see `GemmaAttention`.
        use_post_norms: Gemma 2's post-attention and post-FFW RMSNorms.
        dropout: rate on both branch outputs and the attention probabilities,
            training only (big_vision `dropout`; 0 by default).

    Call args:
        x: `(B, T, D)`; attention_mask `(B, T, S)`; cache, cache_update_index
        as in `GemmaAttention`.
    """

    def __init__(
        self,
        num_query_heads,
        num_key_value_heads,
        head_dim,
        intermediate_dim,
        query_pre_attn_scalar=None,
        attention_logit_soft_cap=None,
        use_post_norms=False,
        rope_max_wavelength=ROPE_MAX_WAVELENGTH,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.intermediate_dim = intermediate_dim
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.attention_logit_soft_cap = attention_logit_soft_cap
        self.use_post_norms = bool(use_post_norms)
        self.rope_max_wavelength = rope_max_wavelength
        self.dropout = float(dropout)

    def build(self, input_shape):
        width = input_shape[-1]
        tokens = (None, None, width)
        dtype = self.dtype_policy

        def norm(name):
            layer = RMSNormalization(name=name, dtype=dtype)
            layer.build(tokens)
            return layer

        def dense(units, name):
            return keras.layers.Dense(
                units, use_bias=False, kernel_initializer="lecun_normal", name=name, dtype=dtype
            )

        self.pre_attention_norm = norm("pre_attention_norm")
        self.attention = GemmaAttention(
            self.num_query_heads, self.num_key_value_heads, self.head_dim,
            query_pre_attn_scalar=self.query_pre_attn_scalar,
            logit_soft_cap=self.attention_logit_soft_cap,
            rope_max_wavelength=self.rope_max_wavelength,
            dropout=self.dropout, name="attention", dtype=dtype,
        )
        self.attention.build(tokens)
        self.pre_ffw_norm = norm("pre_ffw_norm")
        if self.use_post_norms:
            self.post_attention_norm = norm("post_attention_norm")
            self.post_ffw_norm = norm("post_ffw_norm")
        self.ffw_gating = dense(self.intermediate_dim, "ffw_gating")
        self.ffw_gating_2 = dense(self.intermediate_dim, "ffw_gating_2")
        self.ffw_linear = dense(width, "ffw_linear")
        self.ffw_gating.build(tokens)
        self.ffw_gating_2.build(tokens)
        self.ffw_linear.build((None, None, self.intermediate_dim))
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=dtype)

    def feed_forward(self, x):
        """GeGLU: `ffw_linear(gelu_tanh(ffw_gating(x)) * ffw_gating_2(x))`."""
        gate = keras.activations.gelu(self.ffw_gating(x), approximate=True)
        return self.ffw_linear(gate * self.ffw_gating_2(x))

    def call(self, x, attention_mask=None, cache=None, cache_update_index=0, training=None):
        y = self.attention(
            self.pre_attention_norm(x), attention_mask=attention_mask,
            cache=cache, cache_update_index=cache_update_index, training=training,
        )
        if cache is not None:
            y, cache = y
        if self.use_post_norms:
            y = self.post_attention_norm(y)
        x = x + self.dropout_layer(y, training=training)
        y = self.feed_forward(self.pre_ffw_norm(x))
        if self.use_post_norms:
            y = self.post_ffw_norm(y)
        x = x + self.dropout_layer(y, training=training)
        return x if cache is None else (x, cache)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_query_heads=self.num_query_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            intermediate_dim=self.intermediate_dim,
            query_pre_attn_scalar=self.query_pre_attn_scalar,
            attention_logit_soft_cap=self.attention_logit_soft_cap,
            use_post_norms=self.use_post_norms,
            rope_max_wavelength=self.rope_max_wavelength,
            dropout=self.dropout,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_siglip")
class GemmaDecoder(keras.layers.Layer):
    """Gemma 1 / Gemma 2 language model on embedded inputs, prefix-LM masked.

    Args:
        vocabulary_size: V.
        num_layers: blocks.
        num_query_heads, num_key_value_heads, head_dim: attention sizes
            (Gemma 1 2B: 8, 1, 256).
        hidden_dim: width D.
        intermediate_dim: GeGLU hidden width F.
        query_pre_attn_scalar: queries are scaled by its inverse square root
            (None: `head_dim`; Gemma 2 27B: `hidden_dim // num_query_heads`).
        attention_logit_soft_cap, final_logit_soft_cap: Gemma 2's caps
            (50 and 30); None for Gemma 1.
        use_post_norms: Gemma 2's post-attention and post-FFW norms.
        sliding_window: None (global attention in every layer, big_vision), or
            Gemma 2's local window on the even layers (HF: 4096).
        rope_max_wavelength: RoPE base (10,000).
        dropout: blocks' dropout, training only.
        remat: rematerialise each block in the backward pass (`keras.remat`):
            only the block inputs are kept for it, the rest is recomputed.

    Call args:
        embeddings: `(B, L, D)` inputs (`embed(token_ids)` for text; PaliGemma
            prepends unscaled image tokens).
        padding_mask: `(B, L)`, 1 for real tokens.
        ar_mask: `(B, L)` int, big_vision's `mask_ar` (0: joins the previous
            token's bidirectional group; 1: causal). None: all 1 (causal LM).

    Returns:
        `(B, L, D)` hidden states after the final norm; `logits(hidden)` gives
        `(B, L, V)`.
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_query_heads,
        num_key_value_heads,
        hidden_dim,
        intermediate_dim,
        head_dim,
        query_pre_attn_scalar=None,
        attention_logit_soft_cap=None,
        final_logit_soft_cap=None,
        use_post_norms=False,
        sliding_window=None,
        rope_max_wavelength=ROPE_MAX_WAVELENGTH,
        dropout=0.0,
        remat=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.remat = bool(remat)
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.head_dim = head_dim
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.attention_logit_soft_cap = attention_logit_soft_cap
        self.final_logit_soft_cap = final_logit_soft_cap
        self.use_post_norms = bool(use_post_norms)
        self.sliding_window = sliding_window
        self.rope_max_wavelength = rope_max_wavelength
        self.dropout = float(dropout)
        dtype = self.dtype_policy
        self.token_embedding = ReversibleEmbedding(
            vocabulary_size,
            hidden_dim,
            tie_weights=True,
            # big_vision: variance_scaling(1, fan_in, in_axis=1) -> std 1/sqrt(D).
            embeddings_initializer=keras.initializers.RandomNormal(stddev=hidden_dim**-0.5),
            logit_soft_cap=final_logit_soft_cap or None,
            name="token_embedding",
            dtype=dtype,
        )
        self.blocks = [
            GemmaDecoderBlock(
                num_query_heads, num_key_value_heads, head_dim, intermediate_dim,
                query_pre_attn_scalar=query_pre_attn_scalar,
                attention_logit_soft_cap=attention_logit_soft_cap,
                use_post_norms=use_post_norms, rope_max_wavelength=rope_max_wavelength,
                dropout=dropout, name=f"block_{i}", dtype=dtype,
            )
            for i in range(num_layers)
        ]
        self.final_norm = RMSNormalization(name="final_norm", dtype=dtype)

    def build(self, input_shape=None):
        tokens = (None, None, self.hidden_dim)
        self.token_embedding.build(None)
        for block in self.blocks:
            block.build(tokens)
        self.final_norm.build(tokens)

    def is_sliding(self, layer_index):
        """Whether block `layer_index` is local (HF Gemma 2: the even layers)."""
        return bool(self.sliding_window) and layer_index % 2 == 0

    def embed(self, token_ids):
        """`(B, T)` ids -> `(B, T, D)` embeddings times `sqrt(D)` (in their dtype)."""
        x = self.token_embedding(token_ids)
        return x * ops.cast(math.sqrt(self.hidden_dim), x.dtype)

    def logits(self, hidden_states):
        """`(B, T, D)` final-normed states -> `(B, T, V)` (tied embedding, soft cap)."""
        return self.token_embedding(hidden_states, reverse=True)

    def _masks(self, padding_mask, ar_mask, query_start=0, query_length=None):
        """`(global, local)` `(B, T, S)` masks; local is None without a window."""
        if ar_mask is None:
            ar_mask = ops.ones_like(ops.cast(padding_mask, "int32"))
        full = prefix_lm_mask(padding_mask, ar_mask, query_start, query_length)
        local = None
        if self.sliding_window:
            local = prefix_lm_mask(
                padding_mask, ar_mask, query_start, query_length, sliding_window=self.sliding_window
            )
        return full, local

    def call(self, embeddings, padding_mask, ar_mask=None, training=None):
        full, local = self._masks(padding_mask, ar_mask)
        x = embeddings
        for i, block in enumerate(self.blocks):
            # The mask is closed over: TensorFlow's `recompute_grad` takes tensors positionally only.
            step = functools.partial(block, attention_mask=local if self.is_sliding(i) else full, training=training)
            x = keras.remat(step)(x) if self.remat else step(x)
        return self.final_norm(x)

    def initial_cache(self, batch_size, length, dtype=None):
        """An empty cache `(B, num_layers, 2, length, K, head_dim)`."""
        shape = (batch_size, self.num_layers, 2, length, self.num_key_value_heads, self.head_dim)
        return ops.zeros(shape, dtype=dtype or self.compute_dtype)

    def call_with_cache(self, embeddings, cache, cache_update_index, padding_mask, ar_mask=None):
        """Run `T` new positions `[index, index + T)` against a key/value cache.

        Args:
            embeddings: `(B, T, D)` inputs at those positions (a whole prompt
                at once, or one token per step).
            cache: `(B, num_layers, 2, S, K, head_dim)` (`initial_cache`).
            cache_update_index: int or int tensor `index`.
            padding_mask, ar_mask: `(B, S)` over all cache slots (slots past
                `index + T` are ignored); generated tokens take ar 1.

        Returns:
            `(logits, hidden_states, cache)`: `(B, T, V)`, `(B, T, D)` after the
            final norm, and the cache with the T positions written.
        """
        length = embeddings.shape[1]
        if length is None:
            length = ops.shape(embeddings)[1]
        full, local = self._masks(padding_mask, ar_mask, cache_update_index, length)
        x = embeddings
        caches = []
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(
                x, attention_mask=local if self.is_sliding(i) else full,
                cache=cache[:, i], cache_update_index=cache_update_index,
            )
            caches.append(layer_cache)
        hidden_states = self.final_norm(x)
        return self.logits(hidden_states), hidden_states, ops.stack(caches, axis=1)

    def compute_output_shape(self, embeddings_shape, *args, **kwargs):
        return tuple(embeddings_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            num_layers=self.num_layers,
            num_query_heads=self.num_query_heads,
            num_key_value_heads=self.num_key_value_heads,
            hidden_dim=self.hidden_dim,
            intermediate_dim=self.intermediate_dim,
            head_dim=self.head_dim,
            query_pre_attn_scalar=self.query_pre_attn_scalar,
            attention_logit_soft_cap=self.attention_logit_soft_cap,
            final_logit_soft_cap=self.final_logit_soft_cap,
            use_post_norms=self.use_post_norms,
            sliding_window=self.sliding_window,
            rope_max_wavelength=self.rope_max_wavelength,
            dropout=self.dropout,
            remat=self.remat,
        )
        return config
