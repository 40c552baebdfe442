"""NaFlex preprocessing: native-aspect-ratio resize, patchify, pad (SigLIP 2).

An image becomes a fixed-length sequence of at most `max_num_patches` patches:
it is resized (aspect ratio kept up to rounding) to the largest multiple of the
patch size that fits the budget, cut into patches, and zero-padded. The tensors
follow big_vision: patches `(N, P*P*3)` in (py, px, c) order, a mask `(N,)`
(1 = real patch) and integer coordinates `(N, 2)` as (y, x).
"""

import functools
import math
import operator

import keras
import tensorflow as tf
from keras_hub.src.layers.preprocessing.preprocessing_layer import PreprocessingLayer
from keras_hub.src.utils.tensor_utils import (
    convert_preprocessing_outputs,
    convert_to_numpy,
    in_tf_function,
)

from keras_siglip.utils.images import check_raw_images

_EPS = 1e-5  # binary-search tolerance of HF and big_vision
_MAX_SCALE = 100.0  # upper bound of the search: tiny images are upscaled at most x100


def target_size(height, width, patch_size, max_num_patches):
    """The NaFlex target size `(th, tw)` of a `height x width` image.

    HF `get_image_size_for_max_num_patches`, bit for bit: a binary search in
    float64 over the scale `s` in [1e-6, 100] for the largest `s` whose size
    `max(P, ceil(hw * s / P) * P)` holds at most `max_num_patches` patches.
    big_vision runs the same search in float32 (edge cases can differ by one
    patch). `target_size_tf` is the TensorFlow-graph twin.

    Returns:
        `(th, tw)`, Python ints, multiples of `patch_size`.
    """
    height, width, patch_size = int(height), int(width), int(patch_size)

    def scaled(scale, size):
        return max(patch_size, math.ceil(size * scale / patch_size) * patch_size)

    lo, hi = _EPS / 10, _MAX_SCALE
    while hi - lo >= _EPS:
        mid = (lo + hi) / 2
        if (scaled(mid, height) / patch_size) * (scaled(mid, width) / patch_size) <= max_num_patches:
            lo = mid
        else:
            hi = mid
    return scaled(lo, height), scaled(lo, width)


def target_size_tf(height, width, patch_size, max_num_patches):
    """`target_size` in float64 TensorFlow ops, elementwise over broadcastable
    tensors (dynamic shapes inside `tf.data`). Same results as `target_size`.

    Returns:
        `(th, tw)`, int32 tensors of the broadcast shape.
    """
    h, w, p, n = (tf.cast(v, tf.float64) for v in (height, width, patch_size, max_num_patches))

    def scaled(scale, size):
        return tf.maximum(p, tf.math.ceil(size * scale / p) * p)

    def body(lo, hi):
        mid = (lo + hi) / 2
        fits = (scaled(mid, h) / p) * (scaled(mid, w) / p) <= n
        # Elements whose interval has closed stay put, as in the scalar loop.
        active = hi - lo >= _EPS
        return tf.where(active & fits, mid, lo), tf.where(active & ~fits, mid, hi)

    shape = tf.shape(h + w + p + n)
    lo = tf.fill(shape, tf.constant(_EPS / 10, tf.float64))
    hi = tf.fill(shape, tf.constant(_MAX_SCALE, tf.float64))
    lo, _ = tf.while_loop(lambda lo, hi: tf.reduce_any(hi - lo >= _EPS), body, (lo, hi))
    return tf.cast(scaled(lo, h), tf.int32), tf.cast(scaled(lo, w), tf.int32)


def patchify_with_coords(image, patch_size):
    """Cut one image into patches with their grid coordinates (TensorFlow ops).

    The single-image, dynamic-shape form of `keras_siglip.layers.vit.patchify`:
    same patch order and flattening; trailing rows/columns that do not fill a
    patch are dropped.

    Args:
        image: `(h, w, C)`.
        patch_size: int P.

    Returns:
        `(patches, coords)`: patches `(n, P*P*C)` in row-major patch order, each
        flattened in (py, px, c) order; coords `(n, 2)` int32 (y, x).
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    channels = image.shape[-1] if image.shape[-1] is not None else shape[-1]
    nh, nw = shape[0] // patch_size, shape[1] // patch_size
    x = tf.reshape(image[: nh * patch_size, : nw * patch_size], [nh, patch_size, nw, patch_size, channels])
    x = tf.reshape(tf.transpose(x, [0, 2, 1, 3, 4]), [nh * nw, patch_size * patch_size * channels])
    y_idx, x_idx = tf.meshgrid(tf.range(nh), tf.range(nw), indexing="ij")
    return x, tf.stack([tf.reshape(y_idx, [-1]), tf.reshape(x_idx, [-1])], axis=-1)


@keras.saving.register_keras_serializable(package="keras_siglip")
class NaFlexImageConverter(PreprocessingLayer):
    """Raw images to NaFlex inputs `{"patches", "patch_mask", "patch_coords"}`.

    Per image, in big_vision's order: map pixel values to [-1, 1] in float32
    (`x / 127.5 - 1`), resize to `target_size(H, W, P, N)` with antialiased
    bilinear interpolation, patchify, zero-pad to N patches. Grayscale images
    are replicated to RGB and the alpha channel of RGBA images is dropped
    (PIL's / HF's `convert("RGB")`).

    Target sizes, masks and coordinates equal HF's `Siglip2ImageProcessor`;
    pixel values differ by about one grey level at most (2/255 in [-1, 1]
    units), because HF resizes uint8 and rounds back to uint8 (PIL: after each
    of its two separable passes) before rescaling. The resampling filter is
    PIL's bilinear (antialiased): in float the two agree to 0.02 grey levels.

    Call it on one image `(H, W, C)` (numpy, backend or tf tensor), on a list of
    images of different sizes, or on a batch `(B, H, W, C)`. Images are uint8,
    or float with values in [0, 255]; C is 1 (grayscale), 3 (RGB) or 4 (RGBA).
    It runs inside `tf.data` (`dataset.map(converter)`, images of dynamic
    shape) and eagerly on every backend, returning backend tensors. An empty
    batch (or list) gives outputs with a leading axis of 0.

    Input scale: called eagerly, it raises a ValueError on a float image whose
    maximum lies in (0, 1] (a [0, 1] image would come out nearly black:
    multiply by 255 or pass uint8), on values below 0 or above 255 (e.g. images
    already preprocessed to [-1, 1], or 16-bit values) and on NaN / inf,
    naming the image's index. Inside `tf.data` only dtype and shape are
    checked (`keras_siglip.utils.images.check_raw_images`).

    Args:
        patch_size: int P.
        max_num_patches: int N, the default sequence length; a call may
            override it (`converter(image, max_num_patches=1024)`).
        return_grid_shape: also return `"grid_shape"`.

    Returns:
        A dict; a leading batch axis B is added for a list or a batch:
        `"patches"` float32 `(N, P*P*3)`, `"patch_mask"` int32 `(N,)`,
        `"patch_coords"` int32 `(N, 2)` as (y, x), (0, 0) on padding, and with
        `return_grid_shape` `"grid_shape"` int32 `(2,)` = (h_patches, w_patches).

    Example:
    ```python
    converter = keras_siglip.layers.NaFlexImageConverter(16, 256)
    x = converter(np.zeros((480, 640, 3), "uint8"))  # 14 x 18 patches of 256
    ds = ds.map(lambda image, label: (converter(image), label))
    ```
    """

    def __init__(self, patch_size=16, max_num_patches=256, return_grid_shape=False, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)
        self.max_num_patches = _check_num_patches(max_num_patches)
        self.return_grid_shape = bool(return_grid_shape)
        self.built = True

    def call(self, images, max_num_patches=None):
        n = self.max_num_patches if max_num_patches is None else _check_num_patches(max_num_patches)
        convert = functools.partial(self._convert, n=n)
        if not in_tf_function():
            check_raw_images(images, "NaFlexImageConverter")
        if isinstance(images, tf.RaggedTensor):  # a batch of sizes (e.g. from a preprocessor)
            if images.dtype.is_integer:
                # keras-hub turns a list of uint8 arrays into an int32 ragged tensor.
                images = tf.cast(images, tf.float32)
            outputs = tf.map_fn(
                lambda image: convert(image.to_tensor()), images,
                fn_output_signature=self._output_signature(n),
            )
            return outputs if in_tf_function() else convert_preprocessing_outputs(outputs)
        if in_tf_function():
            if isinstance(images, (list, tuple)):
                raise ValueError(
                    "Inside tf.data or tf.function, call NaFlexImageConverter on one "
                    "image (H, W, C) or a batch (B, H, W, C), not on a list."
                )
            images = tf.convert_to_tensor(images)
            if images.shape.rank != 4:
                return convert(images)
            return tf.map_fn(convert, images, fn_output_signature=self._output_signature(n))
        with tf.device("cpu"):
            if not isinstance(images, (list, tuple)):
                images = _as_tf(images)
                if images.shape.rank != 4:
                    return convert_preprocessing_outputs(convert(images))
            if len(images) == 0:
                return convert_preprocessing_outputs(self._empty_outputs(n))
            outputs = [convert(_as_tf(image)) for image in images]
            return convert_preprocessing_outputs({k: tf.stack([o[k] for o in outputs]) for k in outputs[0]})

    def _empty_outputs(self, n):
        """The outputs of an empty batch: every tensor with a leading axis of 0."""
        return {k: tf.zeros([0, *spec.shape], spec.dtype) for k, spec in self._output_signature(n).items()}

    def _output_signature(self, n):
        spec = {
            "patches": tf.TensorSpec([n, self.patch_size**2 * 3], tf.float32),
            "patch_mask": tf.TensorSpec([n], tf.int32),
            "patch_coords": tf.TensorSpec([n, 2], tf.int32),
        }
        if self.return_grid_shape:
            spec["grid_shape"] = tf.TensorSpec([2], tf.int32)
        return spec

    def _convert(self, image, n, budget=None):
        """One image `(H, W, C)` -> the output dict (TensorFlow ops), padded to
        `n` patches; `budget` (an int tensor <= n, default n) caps the image's
        own patches (NaViT resolution sampling)."""
        p = self.patch_size
        image = _check_image(image)
        rgb = image if image.shape[-1] == 3 else image[..., :3]  # RGBA -> RGB; no copy for RGB
        x = tf.cast(rgb, tf.float32) / 127.5 - 1.0
        h, w = image.shape[0], image.shape[1]
        if budget is not None:
            shape = tf.shape(image)
            size = tf.stack(target_size_tf(shape[0], shape[1], p, tf.minimum(budget, n)))
        elif h is not None and w is not None:
            size = target_size(h, w, p, n)
        else:
            shape = tf.shape(image)
            size = tf.stack(target_size_tf(shape[0], shape[1], p, n))
        x = tf.image.resize(x, size, "bilinear", antialias=True)
        x = tf.broadcast_to(x, tf.concat([tf.shape(x)[:2], [3]], 0))  # grayscale -> RGB
        patches, coords = patchify_with_coords(tf.ensure_shape(x, [None, None, 3]), p)
        pad = [[0, n - tf.shape(patches)[0]]]
        outputs = {
            "patches": tf.ensure_shape(tf.pad(patches, pad + [[0, 0]]), [n, p * p * 3]),
            "patch_mask": tf.ensure_shape(tf.pad(tf.ones_like(coords[:, 0]), pad), [n]),
            "patch_coords": tf.ensure_shape(tf.pad(coords, pad + [[0, 0]]), [n, 2]),
        }
        if self.return_grid_shape:
            outputs["grid_shape"] = tf.cast(size, tf.int32) // p
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            patch_size=self.patch_size,
            max_num_patches=self.max_num_patches,
            return_grid_shape=self.return_grid_shape,
        )
        return config


def _check_num_patches(n):
    try:
        value = operator.index(n)
    except TypeError:
        value = 0
    if isinstance(n, bool) or value < 1:
        raise ValueError(f"max_num_patches must be a positive int; got {n!r}.")
    return value


def _as_tf(x):
    return x if isinstance(x, tf.Tensor) else tf.convert_to_tensor(convert_to_numpy(x))


def _check_image(image):
    """Raise on what the static shape/dtype rule out; assert the rest at run time."""
    image = tf.convert_to_tensor(image)
    shape, dtype = image.shape, image.dtype
    if not (dtype == tf.uint8 or dtype.is_floating):
        raise ValueError(
            "NaFlexImageConverter takes uint8 images, or float images with values "
            f"in [0, 255]; got dtype {dtype.name}. Cast to uint8 or float32 first "
            "(and scale 16-bit images to [0, 255])."
        )
    if shape.rank is not None and shape.rank != 3:
        raise ValueError(
            "NaFlexImageConverter takes an image (height, width, channels), a list "
            f"of them or a batch (batch, height, width, channels); got shape {tuple(shape)}."
        )
    channels = shape[-1] if shape.rank is not None else None
    if channels is not None and channels not in (1, 3, 4):
        raise ValueError(
            "NaFlexImageConverter takes 1 (grayscale), 3 (RGB) or 4 (RGBA) channels; "
            f"got an image of shape {tuple(shape)}."
        )
    if shape.rank is not None and 0 in shape:
        raise ValueError(f"NaFlexImageConverter got an empty image of shape {tuple(shape)}.")
    if shape.rank is None or not shape.is_fully_defined():
        image = tf.ensure_shape(image, [None, None, None])
        dims = tf.shape(image)
        valid = (dims[0] > 0) & (dims[1] > 0) & tf.reduce_any(tf.equal(dims[2], [1, 3, 4]))
        message = "NaFlexImageConverter takes non-empty images (height, width, 1|3|4); got shape"
        with tf.control_dependencies([tf.debugging.Assert(valid, [message, dims])]):
            image = tf.identity(image)
    return image
