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
        weights = ops.cast(ops.not_equal(y_true, self.pad_id), "float32")
        nll = -token_log_probs(y_pred, y_true) * weights
        return ops.sum(nll, axis=-1) / ops.maximum(ops.sum(weights, axis=-1), 2e-38)

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
