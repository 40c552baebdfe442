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

    Args:
        chunk_size: with a `SigLIPBackbone`, compute the loss from the
            embeddings `chunk_size` texts at a time (`chunked_sigmoid_loss`,
            memory O(B * chunk_size)) instead of from the B x B logits; the
            same value and gradients. Called directly on logits, this loss is
            always the plain form.
    """

    def __init__(self, chunk_size=None, name="sigmoid_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if chunk_size is not None and int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}.")
        self.chunk_size = None if chunk_size is None else int(chunk_size)

    def get_config(self):
        return {**super().get_config(), "chunk_size": self.chunk_size}

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        terms = ops.log_sigmoid(y_true * y_pred)
        return -ops.sum(ops.where(y_true == 0, ops.zeros_like(terms), terms), axis=-1)


def chunked_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias, chunk_size):
    """The SigLIP loss from embeddings, without ever holding the B x B logits.

    Equals `SigmoidLoss()(sigmoid_labels(B), exp(t) * zimg @ ztxt.T + b)` (summed
    over texts, mean over images; the i-th image matches the i-th text). The
    texts are taken `chunk_size` at a time in a loop (`ops.fori_loop`, so a
    compiler runs the blocks one after another), forward and backward: the
    gradient is written out and recomputes each `(B, chunk_size)` block, so
    memory is O(B * chunk_size) instead of autodiff's saved B x B.

    Args:
        image_embeddings, text_embeddings: `(B, D)`, L2-normalised; B static.
        log_temperature, bias: `(1,)` (`t` and `b`).
        chunk_size: texts per block; the texts are zero-padded to a multiple
            of it and the padding is left out.

    Returns:
        The scalar loss.
    """
    batch, dim = image_embeddings.shape
    if batch is None or tuple(text_embeddings.shape) != (batch, dim):
        raise ValueError(
            "chunked_sigmoid_loss needs as many images as texts with a static batch size; "
            f"got {tuple(image_embeddings.shape)} and {tuple(text_embeddings.shape)}."
        )
    chunk = int(min(chunk_size, batch))
    num_blocks = -(-batch // chunk)
    rows = ops.arange(batch)[:, None]

    def block(images, padded, scale, b, index):
        """Block `index`: its texts `(c, D)`, cosines, labels (0 on padding) and logits."""
        start = index * chunk
        texts = ops.slice(padded, (start, 0), (chunk, dim))
        cos = ops.matmul(images, ops.transpose(texts))  # (B, c)
        columns = start + ops.arange(chunk)[None, :]
        labels = ops.where(rows == columns, 1.0, -1.0) * ops.cast(columns < batch, "float32")
        return texts, cos, ops.cast(labels, cos.dtype), scale * cos + b

    @ops.custom_gradient
    def loss(images, texts, t, b):
        scale = ops.exp(t)
        padded = ops.pad(texts, ((0, num_blocks * chunk - batch), (0, 0)))

        def add_block(index, total):
            _, _, labels, logits = block(images, padded, scale, b, index)
            terms = ops.where(labels == 0, 0.0, -ops.log_sigmoid(labels * logits))
            return total + ops.sum(terms)

        value = ops.fori_loop(0, num_blocks, add_block, ops.zeros((), images.dtype)) / batch

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream

            def add_block_grads(index, grads):
                g_images, g_texts, g_t, g_b = grads
                texts_c, cos, labels, logits = block(images, padded, scale, b, index)
                # d/dlogits of -log sigmoid(z * l) is -z * sigmoid(-z * l); 0 on padding.
                g = -labels * ops.sigmoid(-labels * logits) * (upstream / batch)
                g_texts = ops.slice_update(
                    g_texts, (index * chunk, 0), ops.matmul(ops.transpose(g * scale), images)
                )
                return (
                    g_images + ops.matmul(g * scale, texts_c),
                    g_texts,
                    g_t + ops.sum(g * cos) * scale,
                    g_b + ops.sum(g),
                )

            zeros = ops.zeros((1,), images.dtype)
            g_images, g_texts, g_t, g_b = ops.fori_loop(
                0, num_blocks, add_block_grads,
                (ops.zeros_like(images), ops.zeros_like(padded), zeros, zeros),
            )
            return (
                g_images,
                g_texts[:batch],
                ops.reshape(g_t, ops.shape(t)),
                ops.reshape(g_b, ops.shape(b)),
            )

        return value, grad

    # Tensors, not Keras variables: torch's custom-gradient function saves its inputs.
    return loss(*(ops.convert_to_tensor(v) for v in (image_embeddings, text_embeddings, log_temperature, bias)))
