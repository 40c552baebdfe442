"""The SigLIP sigmoid loss (big_vision `trainers/proj/image_text/siglip.py`)."""

import keras
from keras import ops


def sigmoid_labels(batch_size, dtype="float32"):
    """`2 * eye(B) - 1`: +1 for the matching image-text pair, -1 elsewhere."""
    return 2.0 * ops.eye(batch_size, dtype=dtype) - 1.0


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigmoidLoss(keras.losses.Loss):
    """`-(1/B) sum_ij log sigmoid(z_ij * logits_ij)`: summed over texts, mean over images.

    Call args:
        y_true: `(B_img, B_txt)` labels in {+1, -1} (`sigmoid_labels(B)` for a
            batch of matching pairs); 0 leaves a pair out (e.g. an empty slot
            of a packed sequence).
        y_pred: `(B_img, B_txt)` logits `exp(t) * cos + b`.

    Returns (with the default mean reduction) the scalar loss; per image
    `(B_img,)` with `reduction=None`.
    """

    def __init__(self, name="sigmoid_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        terms = ops.log_sigmoid(y_true * y_pred)
        return -ops.sum(ops.where(y_true == 0, ops.zeros_like(terms), terms), axis=-1)
