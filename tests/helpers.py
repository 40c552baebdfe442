"""Helpers shared by tests/ and integration_tests/ (not a test module).

Frameworks are imported inside the functions: tests/conftest.py imports this
module, and the integration scripts import it after setting up their devices.
"""

import io
import os
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]

SENTENCES = [
    "a photo of a red circle",
    "two blue squares at the bottom",
    "a small green triangle in the top left",
    "The quick brown fox jumped over the lazy dog!",
    "un chat noir et un chien blanc",
] * 4


def pythonpath():
    """`PYTHONPATH` with the repository root first, for scripts run as subprocesses."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


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


# === Tensors and weights ===


def numpy(x):
    """A tensor, or a dict of them, as numpy."""
    from keras import ops

    if isinstance(x, dict):
        return {k: numpy(v) for k, v in x.items()}
    return np.asarray(ops.convert_to_numpy(x))


def float64(x):
    """A tensor as a float64 numpy array (for numpy references)."""
    return numpy(x).astype("float64")


def weights_by_path(model):
    return {v.path: numpy(v).copy() for v in model.weights}


def changed(before, model):
    """The paths of the weights that differ from `before` (a `weights_by_path`)."""
    after = weights_by_path(model)
    return {path for path, value in before.items() if not np.array_equal(value, after[path])}


def perturb(model, rng):
    """Randomise every float weight so a dropped or swapped parameter shows."""
    for v in model.weights:
        if "float" in str(v.dtype):
            v.assign(rng.normal(scale=0.1, size=v.shape).astype("float32") + numpy(v))


def perturb_pali_gemma(model, rng, eos=1):
    """Noise on every weight: zero biases and unit / zero norm scales become distinct,
    so a dropped or swapped parameter changes the outputs."""
    for v in model.weights:
        if "float" in str(v.dtype):
            v.assign(numpy(v) + rng.normal(scale=0.2, size=v.shape).astype("float32"))
    # EOS can never win the argmax (logit 0 among random ones): generation runs its full length.
    table = numpy(model.token_embedding.embeddings).copy()
    table[eos] = 0.0
    model.token_embedding.embeddings.assign(table)


def perturb_siglip_backbone(backbone, seed=0):
    """Shift every weight by noise, so no bias is zero and no LayerNorm scale one;
    then exp(t) = 10, b = -10."""
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        noise = rng.normal(scale=0.1, size=variable.shape).astype("float32")
        variable.assign(numpy(variable) + noise)
    backbone.contrastive_head.log_temperature.assign(np.log([10.0]).astype("float32"))
    backbone.contrastive_head.bias.assign(np.array([-10.0], "float32"))
    return backbone


# === Inputs ===


def naflex_batch(grids, num_patches, patch_dim, seed=0):
    """Random patches of images with the given patch grids, padded to `num_patches`.

    Returns numpy `patches (B, N, D)`, `patch_coords (B, N, 2)`, `patch_mask (B, N)`.
    """
    rng = np.random.default_rng(seed)
    batch = len(grids)
    patches = np.zeros((batch, num_patches, patch_dim), "float32")
    coords = np.zeros((batch, num_patches, 2), "int32")
    mask = np.zeros((batch, num_patches), "int32")
    for i, (h, w) in enumerate(grids):
        n = h * w
        patches[i, :n] = rng.uniform(-1, 1, (n, patch_dim))
        coords[i, :n] = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(n, 2)
        mask[i, :n] = 1
    return {"patches": patches, "patch_coords": coords, "patch_mask": mask}


# === The command line ===


def run_cli(capsys, *args):
    """`(exit status, stdout, stderr)` of one in-process call."""
    from keras_siglip import cli

    status = cli.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status, err, *words):
    assert status == 1, err
    assert err.startswith("keras-siglip: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


# === Images ===


def shapes_image(name, seed=0):
    """A 64 px image of one shape of class `name`, drawn by the data generator."""
    import numpy as np

    from keras_siglip.data import shapes

    rng = np.random.default_rng(seed)
    attrs = shapes.sample_attributes(rng)
    while shapes.class_label(attrs) != name or attrs.count != 1:
        attrs = shapes.sample_attributes(rng)
    return shapes.render(attrs, rng, 64, 64)[0]


def png(image):
    """uint8 `(H, W, 3)` -> PNG file bytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_gemma_causal_lm(tokenizer=None, vocabulary_size=20, num_layers=1, seed=0, **preprocessor_kwargs):
    """A tiny random keras-hub `GemmaCausalLM`: with a `GemmaTokenizer`, its
    vocabulary and a `GemmaCausalLMPreprocessor(tokenizer, **preprocessor_kwargs)`;
    without, `vocabulary_size` and no preprocessor."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=tokenizer.vocabulary_size() if tokenizer is not None else vocabulary_size,
        num_layers=num_layers, num_query_heads=2, num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
        head_dim=8)
    preprocessor = (keras_hub.models.GemmaCausalLMPreprocessor(tokenizer, **preprocessor_kwargs)
                    if tokenizer is not None else None)
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=preprocessor)


def tiny_captioner_preset(path, locca=True, seed=0):
    """Saves a tiny LocCa (or, with `locca=False`, CapPa) captioner with random
    (perturbed) weights to the preset folder `path`: 32 px images, a T5-layout
    word vocabulary."""
    import keras

    from keras_siglip.models import (
        CapPaBackbone, CapPaCaptioner, CapPaPreprocessor, LocCaCaptioner, LocCaPreprocessor, SigLIPImageConverter,
        SigLIPTokenizer,
    )

    preprocessor_class, task_class = (LocCaPreprocessor, LocCaCaptioner) if locca else (CapPaPreprocessor,
                                                                                      CapPaCaptioner)
    preprocessor = preprocessor_class(SigLIPTokenizer(train_sentencepiece("t5")),
                                      SigLIPImageConverter(image_size=(32, 32)), sequence_length=12)
    vocabulary_size = preprocessor.vocabulary_size if locca else preprocessor.tokenizer.vocabulary_size()
    keras.utils.set_random_seed(seed)
    backbone = CapPaBackbone(
        vocabulary_size=vocabulary_size, patch_size=8, width=32, depth=1, num_heads=2,
        mlp_dim=64, image_size=32, max_length=12, decoder_depth=1,
    )
    perturb(backbone, np.random.default_rng(seed))
    model = task_class(backbone, preprocessor)
    model.save_to_preset(str(path))
    return model


def tiny_pali_gemma_preset(path, seed=0):
    """Saves a tiny PaliGemma (Gemma 1 decoder, 16 px images) with random
    (perturbed) weights and its preprocessor to the preset folder `path`."""
    import keras

    from keras_siglip.models import (
        PaliGemmaBackbone, PaliGemmaCausalLM, PaliGemmaCausalLMPreprocessor, PaliGemmaImageConverter,
        PaliGemmaTokenizer,
    )

    tokenizer = PaliGemmaTokenizer.from_texts(["caption en", "detect a red circle ; two blue squares"] * 8,
                                             vocabulary_size=1500)
    keras.utils.set_random_seed(seed)
    backbone = PaliGemmaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), image_size=16, num_layers=1, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=16, intermediate_dim=32, head_dim=8, vit_patch_size=8,
        vit_hidden_dim=16, vit_num_layers=1, vit_num_heads=2, vit_intermediate_dim=32,
    )
    perturb(backbone, np.random.default_rng(seed))
    preprocessor = PaliGemmaCausalLMPreprocessor(tokenizer, PaliGemmaImageConverter(image_size=(16, 16)),
                                                 sequence_length=12)
    model = PaliGemmaCausalLM(backbone, preprocessor=preprocessor)
    model.save_to_preset(str(path))
    return model
