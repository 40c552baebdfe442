import io
import os

import numpy as np
import pytest

# Tests never reach a real hub: a published card's name fails at once instead of
# downloading (tests/test_hub.py lifts this for its Hub on 127.0.0.1).
os.environ["KERAS_SIGLIP_OFFLINE"] = "1"

SENTENCES = [
    "a photo of a red circle",
    "two blue squares at the bottom",
    "a small green triangle in the top left",
    "The quick brown fox jumped over the lazy dog!",
    "un chat noir et un chien blanc",
] * 4


def train_sentencepiece(layout):
    """A tiny SentencePiece model with T5 (SigLIP) or Gemma (SigLIP 2) special ids."""
    import sentencepiece

    # Gemma's own piece names: its end of sequence is `<eos>`, not T5's `</s>`.
    ids = {
        "t5": dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1, eos_piece="</s>", bos_piece="<s>"),
        "gemma": dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, eos_piece="<eos>", bos_piece="<bos>"),
    }[layout]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES),
        model_writer=model,
        vocab_size=60,
        model_type="word",
        pad_piece="<pad>",
        unk_piece="<unk>",
        hard_vocab_limit=False,
        minloglevel=2,
        **ids,
    )
    return model.getvalue()


@pytest.fixture(scope="session")
def t5_proto():
    return train_sentencepiece("t5")


@pytest.fixture(scope="session")
def gemma_proto():
    return train_sentencepiece("gemma")


def tiny_backbone(vocabulary_size=60, sequence_length=8, image_size=32, seed=0, **text):
    import keras

    from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder

    keras.utils.set_random_seed(seed)
    vision = SigLIPVisionEncoder(
        patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64, image_size=image_size
    )
    text_encoder = SigLIPTextEncoder(
        vocabulary_size=vocabulary_size, width=24, depth=2, num_heads=2, mlp_dim=48,
        sequence_length=sequence_length, num_classes=32, **text,
    )
    return SigLIPBackbone(vision, text_encoder)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def value_and_grads(fn, args):
    """The value of `fn(*args)` and its gradients w.r.t. every arg, on this backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(*args)
        return np.asarray(value), [np.asarray(g) for g in grads]
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = fn(*tensors)
        grads = tape.gradient(value, tensors)  # None where no gradient flows
        return value.numpy(), [np.zeros_like(a) if g is None else g.numpy() for a, g in zip(args, grads)]
    import torch

    tensors = [torch.tensor(a, requires_grad=True) for a in args]
    value = fn(*tensors)
    value.backward()
    return value.detach().numpy(), [np.zeros_like(a) if t.grad is None else t.grad.numpy()
                                    for a, t in zip(args, tensors)]
