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
        cross_device: with a `SigLIPBackbone` trained on several devices,
            every image meets the texts of all devices: the loss is the one of
            the global batch (`keras_siglip.losses.distributed`: a ring of
            `ppermute`s on a JAX `keras.distribution` mesh, an all-gather
            across TensorFlow replicas or torch processes). `False` keeps each
            replica's local batch on TensorFlow / torch (as keras-hub and HF
            do); on JAX the compiled global batch is then used as is.
    """

    def __init__(
        self, chunk_size=None, cross_device=True, name="sigmoid_loss", reduction="sum_over_batch_size", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if chunk_size is not None and int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}.")
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.cross_device = bool(cross_device)

    def get_config(self):
        return {**super().get_config(), "chunk_size": self.chunk_size, "cross_device": self.cross_device}

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        terms = ops.log_sigmoid(y_true * y_pred)
        return -ops.sum(ops.where(y_true == 0, ops.zeros_like(terms), terms), axis=-1)


def sigmoid_loss_from_embeddings(image_embeddings, text_embeddings, log_temperature, bias, positive_offset=0):
    """The plain SigLIP loss of `B` images against `M` texts, from embeddings.

    Image `i` matches text `i + positive_offset`; every other pair is a
    negative. Summed over texts, mean over the `B` images. Holds the `(B, M)`
    logits; `chunked_sigmoid_loss` gives the same value without them.
    """
    logits = ops.exp(log_temperature) * ops.matmul(image_embeddings, ops.transpose(text_embeddings)) + bias
    rows = ops.arange(ops.shape(logits)[0])[:, None] + positive_offset
    labels = ops.where(rows == ops.arange(ops.shape(logits)[1])[None, :], 1.0, -1.0)
    return -ops.mean(ops.sum(ops.log_sigmoid(ops.cast(labels, logits.dtype) * logits), axis=-1))


def pairwise_sigmoid_losses(image_embeddings, text_embeddings, log_temperature, bias):
    """`(B, B)` loss of every pair: `-log sigmoid(z_ij * (exp(t) <x_i, y_j> + b))`
    with `z_ij = +1` for the matching pair `i == j` and -1 otherwise (the terms
    `sigmoid_loss_from_embeddings` sums over texts and averages over images)."""
    logits = ops.exp(log_temperature) * ops.matmul(image_embeddings, ops.transpose(text_embeddings)) + bias
    return -ops.log_sigmoid(ops.cast(sigmoid_labels(ops.shape(logits)[0]), logits.dtype) * logits)


def chunked_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias, chunk_size, positive_offset=0):
    """The SigLIP loss from embeddings, without ever holding the B x M logits.

    Equals `sigmoid_loss_from_embeddings` (for M = B and offset 0 that is
    `SigmoidLoss()(sigmoid_labels(B), exp(t) * zimg @ ztxt.T + b)`: summed over
    texts, mean over images). The texts are taken `chunk_size` at a time in a
    loop (`ops.fori_loop`, so a compiler runs the blocks one after another),
    forward and backward: the gradient is written out and recomputes each
    `(B, chunk_size)` block, so memory is O(B * chunk_size) instead of
    autodiff's saved B x M.

    Args:
        image_embeddings: `(B, D)`, L2-normalised; B static.
        text_embeddings: `(M, D)`, L2-normalised; M static (M = B, or the texts
            of all replicas for the cross-device form).
        log_temperature, bias: `(1,)` (`t` and `b`).
        chunk_size: texts per block; the texts are zero-padded to a multiple
            of it and the padding is left out.
        positive_offset: image `i` matches text `i + positive_offset` (an int
            or a scalar tensor).

    Returns:
        The scalar loss.
    """
    batch, dim = image_embeddings.shape
    num_texts = text_embeddings.shape[0]
    if batch is None or num_texts is None or text_embeddings.shape[1] != dim:
        raise ValueError(
            "chunked_sigmoid_loss needs image and text embeddings of the same width with static "
            f"batch sizes; got {tuple(image_embeddings.shape)} and {tuple(text_embeddings.shape)}."
        )
    chunk = int(min(chunk_size, num_texts))
    num_blocks = -(-num_texts // chunk)
    rows = ops.arange(batch)[:, None] + positive_offset

    def block(images, padded, scale, b, index):
        """Block `index`: its texts `(c, D)`, cosines, labels (0 on padding) and logits."""
        start = index * chunk
        texts = ops.slice(padded, (start, 0), (chunk, dim))
        cos = ops.matmul(images, ops.transpose(texts))  # (B, c)
        columns = start + ops.arange(chunk)[None, :]
        labels = ops.where(rows == columns, 1.0, -1.0) * ops.cast(columns < num_texts, "float32")
        return texts, cos, ops.cast(labels, cos.dtype), scale * cos + b

    @ops.custom_gradient
    def loss(images, texts, t, b):
        scale = ops.exp(t)
        padded = ops.pad(texts, ((0, num_blocks * chunk - num_texts), (0, 0)))

        def add_block(index, total):
            _, _, labels, logits = block(images, padded, scale, b, index)
            terms = ops.where(labels == 0, 0.0, -ops.log_sigmoid(labels * logits))
            return total + ops.sum(terms)

        # Zeros taken from the inputs so they share their sharding type inside `shard_map`.
        value = ops.fori_loop(0, num_blocks, add_block, ops.zeros_like(images[0, 0])) / batch

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

            zeros = ops.zeros_like(images[0, :1])
            g_images, g_texts, g_t, g_b = ops.fori_loop(
                0, num_blocks, add_block_grads,
                (ops.zeros_like(images), ops.zeros_like(padded), zeros, zeros),
            )
            return (
                g_images,
                g_texts[:num_texts],
                ops.reshape(g_t, ops.shape(t)),
                ops.reshape(g_b, ops.shape(b)),
            )

        return value, grad

    # Tensors, not Keras variables: torch's custom-gradient function saves its inputs.
    return loss(*(ops.convert_to_tensor(v) for v in (image_embeddings, text_embeddings, log_temperature, bias)))
