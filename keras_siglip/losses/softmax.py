"""The CLIP softmax contrastive loss (symmetric InfoNCE; Radford et al., 2021).

The sigmoid loss (`keras_siglip.losses.sigmoid`) scores every pair on its own;
this one normalises each row (image -> texts) and each column (text -> images)
with a softmax and takes the cross-entropy of the matching pair, averaged over
both directions. It has a learnable temperature and no bias.
"""

import keras
from keras import ops


def softmax_loss_from_logits(logits):
    """`(1/2) [CE(rows) + CE(columns)]` of a square `(B, B)` logit matrix whose
    diagonal holds the matching pairs; mean over the B pairs.

    Computed in float32 (or wider) whatever the logits' dtype.
    """
    logits = ops.convert_to_tensor(logits)
    if keras.backend.standardize_dtype(logits.dtype) in ("float16", "bfloat16"):
        logits = ops.cast(logits, "float32")
    diagonal = ops.diagonal(logits)
    image_to_text = ops.logsumexp(logits, axis=1) - diagonal
    text_to_image = ops.logsumexp(logits, axis=0) - diagonal
    return 0.5 * (ops.mean(image_to_text) + ops.mean(text_to_image))


def softmax_loss_from_embeddings(image_embeddings, text_embeddings, log_temperature):
    """The CLIP loss of `B` matching pairs from L2-normalised `(B, D)` embeddings:
    logits `exp(t) * zimg @ ztxt.T` (`t` a scalar or `(1,)`), then
    `softmax_loss_from_logits`."""
    scale = ops.exp(ops.reshape(log_temperature, ()))
    return softmax_loss_from_logits(scale * ops.matmul(image_embeddings, ops.transpose(text_embeddings)))
