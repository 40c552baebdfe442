"""Captioning loss, token accuracy and caption log-likelihood (big_vision CapPa).

Targets are token ids `(B, L)` with padding 0; EOS (id 1) is a target like any
other token, padding is not.
"""

import keras
from keras import ops

PAD_ID = 0


def token_log_probs(logits, token_ids):
    """`(B, L, V)` logits, `(B, L)` targets -> `(B, L)` float32 log p(target)."""
    log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    token_ids = ops.cast(token_ids, "int32")
    return ops.take_along_axis(log_probs, token_ids[..., None], axis=-1)[..., 0]


def caption_log_likelihood(logits, token_ids, pad_id=PAD_ID):
    """`(B,)` sum of the target log-probabilities over non-pad targets.

    big_vision's `scoring_classifier` score: unnormalised, tokens with id
    `!= pad_id` only.
    """
    weights = ops.cast(ops.not_equal(token_ids, pad_id), "float32")
    return ops.sum(token_log_probs(logits, token_ids) * weights, axis=-1)


def chunked_token_nll(hidden_states, kernel, bias, token_ids, chunk_size=None):
    """Per-token NLL of the targets without materialising the `(B, L, V)` logits.

    The logits are `hidden_states @ kernel + bias`; the log-partition is
    accumulated over `chunk_size` vocabulary columns at a time, each chunk
    rematerialised in the backward pass (`keras.remat`), so one `(B, L, chunk)`
    block of logits is live at a time: what a 256k vocabulary (SigLIP 2's
    Gemma tokenizer) needs. Float32 from the logits on.

    Args:
        hidden_states: `(B, L, E)` decoder outputs after the final LayerNorm.
        kernel: `(E, V)` output projection; bias: `(V,)`.
        token_ids: `(B, L)` int targets.
        chunk_size: vocabulary columns per chunk; None (or >= V): one block.

    Returns:
        `(B, L)` float32 `-log p(target)`.
    """
    vocabulary = kernel.shape[-1]
    token_ids = ops.cast(token_ids, "int32")
    target_kernel = ops.take(ops.transpose(kernel), token_ids, axis=0)  # (B, L, E)
    target_logits = ops.sum(
        ops.cast(hidden_states, "float32") * ops.cast(target_kernel, "float32"), axis=-1
    ) + ops.cast(ops.take(bias, token_ids, axis=0), "float32")

    def chunk_logsumexp(h, k, b):
        logits = ops.matmul(h, ops.cast(k, h.dtype)) + ops.cast(b, h.dtype)
        return ops.logsumexp(ops.cast(logits, "float32"), axis=-1)

    if chunk_size is None or chunk_size >= vocabulary:
        log_partition = chunk_logsumexp(hidden_states, kernel, bias)
    else:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of vocabulary columns; got {chunk_size}.")
        parts = [
            keras.remat(chunk_logsumexp)(hidden_states, kernel[:, start:start + chunk_size],
                                         bias[start:start + chunk_size])
            for start in range(0, vocabulary, chunk_size)
        ]
        log_partition = ops.logsumexp(ops.stack(parts, axis=0), axis=0)
    return log_partition - target_logits


def per_caption_mean(token_losses, token_ids, pad_id=PAD_ID):
    """`(B, L)` per-token losses -> `(B,)` means over each caption's non-pad
    targets (`CaptioningLoss`'s normalisation; an all-padding caption is 0)."""
    weights = ops.cast(ops.not_equal(token_ids, pad_id), "float32")
    return ops.sum(token_losses * weights, axis=-1) / ops.maximum(ops.sum(weights, axis=-1), 2e-38)


@keras.saving.register_keras_serializable(package="keras_siglip")
class CaptioningLoss(keras.losses.Loss):
    """Token softmax cross-entropy, normalised per caption (big_vision
    `weighted_softmax_xent(normalize=True)` with weights `targets != pad`).

    Per example: `sum_t w_t * NLL_t / max(sum_t w_t, 2e-38)`; the reduction
    (default mean over the batch) follows. An all-padding caption adds 0.

    Call args: `y_true` `(B, L)` int targets, `y_pred` `(B, L, V)` logits.
    Returns the reduced loss (`reduction=None`: `(B,)` per-example losses).
    """

    def __init__(self, pad_id=PAD_ID, name="captioning_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_id = pad_id

    def call(self, y_true, y_pred):
        return per_caption_mean(-token_log_probs(y_pred, y_true), y_true, self.pad_id)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}


@keras.saving.register_keras_serializable(package="keras_siglip")
class TokenAccuracy(keras.metrics.Metric):
    """Fraction of non-pad targets whose argmax prediction is right, over all
    tokens seen since the last reset.

    Update args: `y_true` `(B, L)` int targets, `y_pred` `(B, L, V)` logits.
    """

    def __init__(self, pad_id=PAD_ID, name="token_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_id = pad_id
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        valid = ops.not_equal(y_true, self.pad_id)
        right = ops.logical_and(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true), valid)
        self.correct.assign_add(ops.sum(ops.cast(right, self.correct.dtype)))
        self.count.assign_add(ops.sum(ops.cast(valid, self.count.dtype)))

    def result(self):
        return self.correct / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.correct.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}
