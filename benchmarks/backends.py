"""Per-backend execution: how each framework normally runs a Keras forward pass.

    jax         `jax.jit` of `model.stateless_call` (what `predict` compiles)
    tensorflow  `tf.function(jit_compile=True)` (XLA)
    torch       `torch.export` of `model.stateless_call`, run as its FX graph under
                `no_grad` (`keras_siglip.utils.compiled_forward`; Keras' own torch
                `predict` is eager, with Keras' per-layer Python cost)

`keras_forward(model, inputs)` returns `(run, mode)`: `run()` computes the
outputs and blocks until they are ready; `mode_name(mode)` is how it ran, known
once `run` has been called (torch may fall back to eager). HF models run eager
under `no_grad`, as their users run them. Import inside a worker only.
"""

import keras
import numpy as np


def backend():
    return keras.config.backend()


def device_kind():
    """"gpu" if the current backend places work on a GPU, else "cpu"."""
    name = backend()
    if name == "jax":
        import jax

        return "gpu" if jax.default_backend() == "gpu" else "cpu"
    if name == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def block(x):
    """Wait for every array in the structure `x` to be computed."""
    name = backend()
    leaves = keras.tree.flatten(x)
    if name == "jax":
        for leaf in leaves:
            if hasattr(leaf, "block_until_ready"):
                leaf.block_until_ready()
    elif name == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    else:
        for leaf in leaves:
            if hasattr(leaf, "numpy"):
                leaf.numpy()  # TF CPU ops are synchronous already; this is cheap and sure
    return x


def to_backend(structure):
    """numpy inputs -> backend tensors, converted outside any timed region."""
    return keras.tree.map_structure(keras.ops.convert_to_tensor, structure)


def keras_forward(model, inputs):
    """The compiled forward `keras_siglip.utils.compiled_forward` offers, on any Keras model."""
    from keras_siglip.utils.compiled_forward import compiled_forward

    forward = compiled_forward(model)
    x = to_backend(inputs)
    return (lambda: block(forward(x))), (lambda: forward.mode)  # known after the first call


def mode_name(mode):
    """The text of a `(run, mode)` pair's mode, after `run` has been called once."""
    return mode() if callable(mode) else mode


def hf_image_forward(hf_model, images):
    """HF `SiglipVisionTransformer` pooled output from NHWC numpy images."""
    import torch

    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(torch_device())

    def run():
        with torch.no_grad():
            return block(hf_model.vision_model(pixel_values=pixels).pooler_output)

    return run, hf_mode(hf_model)


def hf_text_forward(hf_model, token_ids):
    import torch

    ids = torch.from_numpy(token_ids.astype(np.int64)).to(torch_device())

    def run():
        with torch.no_grad():
            return block(hf_model.text_model(input_ids=ids).pooler_output)

    return run, hf_mode(hf_model)


def hf_naflex_forward(hf_model, x):
    """HF `Siglip2VisionTransformer` pooled output from our NaFlex numpy inputs."""
    import torch

    device = torch_device()
    patches = torch.from_numpy(x["patches"]).to(device)
    mask = torch.from_numpy(x["patch_mask"]).to(device)
    shapes = torch.from_numpy(x["patch_coords"].max(axis=1) + 1).long().to(device)

    def run():
        with torch.no_grad():
            out = hf_model.vision_model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)
            return block(out.pooler_output)

    return run, hf_mode(hf_model)


def hf_mode(hf_model):
    return f"torch eager, no_grad, attn={getattr(hf_model.config, '_attn_implementation', '?')}"


def to_numpy(x):
    if hasattr(x, "detach"):  # a torch tensor (HF, or Keras' torch backend)
        return x.detach().cpu().numpy()
    return np.asarray(keras.ops.convert_to_numpy(x))


def matmul_fn(n):
    """`(run, mode)` for the backend's compiled float32 `a @ a` on `(n, n)`."""
    name = backend()
    a = np.random.default_rng(0).standard_normal((n, n)).astype("float32")
    if name == "jax":
        import jax

        x = jax.device_put(a)
        f = jax.jit(lambda a: a @ a)
        return (lambda: f(x).block_until_ready()), "jax.jit(a @ a)"
    if name == "tensorflow":
        import tensorflow as tf

        x = tf.constant(a)
        f = tf.function(lambda a: tf.matmul(a, a), jit_compile=True)
        # TF executes synchronously on CPU: the call returns when the product is done.
        return (lambda: f(x)), "tf.function(jit_compile=True)(tf.matmul)"
    import torch

    x = torch.from_numpy(a).to(torch_device())

    def run():
        with torch.no_grad():
            return block(x @ x)

    return run, "torch.matmul"
