"""Evaluation helpers: image-text retrieval Recall@K (big_vision's evaluators) and
the contrastive training statistics SigLIP logs."""

import numpy as np
from keras import ops


def mean_pair_logits(image_embeddings, text_embeddings, scale, bias, mask=None):
    """Mean logit of the matching and of the non-matching pairs, in O(B * D).

    Pair `(i, i)` matches. Never forms the B x B logits: the sum of all logits
    is `scale * (sum_i zimg_i) . (sum_j ztxt_j) + B^2 * bias`.

    Args:
        image_embeddings, text_embeddings: `(B, D)`.
        scale, bias: scalars `exp(t)` and `b`.
        mask: optional `(B,)`, 1 for real pairs (packed slots), 0 to leave out.

    Returns:
        `(positive, negative)` scalars.
    """
    image_embeddings, text_embeddings = ops.convert_to_tensor(image_embeddings), ops.convert_to_tensor(text_embeddings)
    dtype = image_embeddings.dtype
    real = ops.ones(ops.shape(image_embeddings)[:1], dtype) if mask is None else ops.cast(mask, dtype)
    images, texts = image_embeddings * real[:, None], text_embeddings * real[:, None]
    count = ops.sum(real)
    positive_sum = scale * ops.sum(images * texts) + count * bias
    all_sum = scale * ops.sum(ops.sum(images, axis=0) * ops.sum(texts, axis=0)) + count * count * bias
    positive = positive_sum / ops.maximum(count, 1.0)
    negative = (all_sum - positive_sum) / ops.maximum(count * count - count, 1.0)
    return positive, negative


def retrieval_recall(image_embeddings, text_embeddings, text_to_image, ks=(1, 5, 10)):
    """Recall@K for image->text and text->image retrieval.

    Args:
        image_embeddings: `(I, D)` L2-normalised.
        text_embeddings: `(T, D)` L2-normalised.
        text_to_image: `(T,)` index of the image each text describes (an image
            may have several texts).
        ks: the K values.

    Returns:
        `{"image_to_text": {k: recall}, "text_to_image": {k: recall}}`: an
        image counts as found at K when any of its texts ranks in the top K; a
        text when its image ranks in the top K.
    """
    image_embeddings = np.asarray(image_embeddings, np.float32)
    text_embeddings = np.asarray(text_embeddings, np.float32)
    text_to_image = np.asarray(text_to_image)
    num_images = len(image_embeddings)
    if text_to_image.shape != (len(text_embeddings),):
        raise ValueError(
            f"text_to_image must have one entry per text ({len(text_embeddings)}); "
            f"got shape {text_to_image.shape}."
        )
    if text_to_image.min() < 0 or text_to_image.max() >= num_images:
        raise ValueError(f"text_to_image entries must lie in [0, {num_images}).")
    similarity = image_embeddings @ text_embeddings.T  # (I, T)
    # Rank of every text for every image, and of every image for every text.
    text_rank = np.argsort(np.argsort(-similarity, axis=1), axis=1)
    image_rank = np.argsort(np.argsort(-similarity, axis=0), axis=0)
    matches = text_to_image[None, :] == np.arange(num_images)[:, None]  # (I, T)
    best_text_rank = np.where(matches, text_rank, np.iinfo(np.int64).max).min(axis=1)
    own_image_rank = image_rank[text_to_image, np.arange(len(text_to_image))]
    has_text = matches.any(axis=1)
    return {
        "image_to_text": {k: float(np.mean(best_text_rank[has_text] < k)) for k in ks},
        "text_to_image": {k: float(np.mean(own_image_rank < k)) for k in ks},
    }
