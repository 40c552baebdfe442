"""Images in and out of the models: the one file reader and the one value check.

Raw images (image converters, preprocessors, `SigLIPZeroShotClassifier.classify`,
the command line) are uint8, or float with values in [0, 255]. Model images
(`encode_images`, the image towers' `predict` / `fit` / `evaluate`, PaliGemma and
CapPa entry points that take preprocessed images) are float in [-1, 1], what an
image converter returns. When the values are concrete (an eager call, not inside
`tf.data` or a traced function) `check_raw_images` and `check_model_images`
raise a ValueError on the mistakes that would otherwise give a silently wrong
answer: [0, 1] floats given as raw images (nearly black), raw uint8 given to the
model (garbage), NaN / inf, values out of range.

`read_image` turns any image file PIL reads into uint8 RGB `(H, W, 3)`: upright
(EXIF orientation), 16-bit and float images scaled to 8 bits, huge images
decoded at reduced size, and every failure an `ImageReadError` naming the file.
"""

import math
import os
import sys
import warnings

import keras
import numpy as np

from keras_siglip.utils.tensors import concrete_numpy

DEFAULT_MAX_SIZE = 4096
"""`read_image` reduces images whose longest side is larger than this (pixels).
Above what any model here needs (fixed resolution 224-896 px; NaFlex about
sqrt(max_num_patches) * patch_size px a side), at most 48 MiB as uint8 RGB."""

MAX_PIXELS = 2**27
"""`read_image` refuses to decode more pixels than this (134,217,728, e.g.
11585 x 11585): a decompression-bomb guard that bounds memory (at most 512 MiB
of decoded 4-byte pixels). JPEG files count the pixels decoded after libjpeg's
1/2, 1/4 or 1/8 scaling, so large photos pass."""

MODEL_IMAGE_LIMIT = 1.5
"""Model images may reach +-1.5: bicubic resizing overshoots [-1, 1] slightly."""

# EXIF orientation -> the transpose that makes the image upright (the table of
# PIL.ImageOps.exif_transpose; applied here after any size reduction).
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
            7: "TRANSVERSE", 8: "ROTATE_90"}
_JPEG_MAGIC = b"\xff\xd8\xff"


class ImageReadError(ValueError):
    """An image file that cannot be read; the message names the file and why."""


def read_image(path, max_size=DEFAULT_MAX_SIZE, max_pixels=MAX_PIXELS):
    """An image file as an upright uint8 RGB array `(H, W, 3)`.

    - EXIF orientation is applied (as `PIL.ImageOps.exif_transpose`): a phone
      photo comes out the way it is displayed.
    - 8-bit modes become RGB by PIL's `convert("RGB")`: grayscale is replicated,
      palettes are looked up, CMYK / YCbCr / LAB are converted without colour
      management, and alpha (RGBA, LA, PA, palette transparency) is dropped, as
      in Hugging Face's and PIL's convention (transparent pixels keep the colour
      they store; composite onto a background first if that matters).
    - 16-bit images (modes `I;16`, `I;16B`, `I;16L`, and `I`, which must hold
      16-bit values 0..65535) are scaled to 8 bits: `round(value / 257)`.
      Float images (mode `F`) in [0, 1] are scaled by 255 and rounded; other
      float images must lie in [0, 255] and are rounded. Values outside these
      ranges, or NaN / inf, raise.
    - An image whose longest side exceeds `max_size` is reduced by the smallest
      integer factor that brings it to at most `max_size` (box averaging,
      `Image.reduce`; JPEG files are decoded at 1/2, 1/4 or 1/8 scale first), so
      huge files take little time and memory. The aspect ratio is kept up to
      one pixel of rounding.
    - Multi-frame files (animated GIF / WebP, multi-page TIFF) give their first frame.

    Args:
        path: a file path (str or path-like).
        max_size: the longest side of the returned image, in pixels, or None to
            never reduce. Default `DEFAULT_MAX_SIZE` (4096).
        max_pixels: the most pixels decoded (`MAX_PIXELS`, 2**27, by default);
            larger images raise `ImageReadError`.

    Returns:
        uint8 numpy array `(H, W, 3)`.

    Raises:
        ImageReadError (a ValueError): the file is missing, a directory,
            unreadable, empty, not an image, truncated or corrupt, too large,
            or holds values that have no 8-bit meaning.
    """
    from PIL import Image

    path = os.fspath(path)
    if max_size is not None and int(max_size) < 1:
        raise ValueError(f"max_size must be a positive number of pixels or None; got {max_size!r}.")
    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # `max_pixels` replaces it
            warnings.filterwarnings("ignore", "Palette images with Transparency")  # alpha is dropped anyway
            with _open(path, max_pixels) as image:
                return _decode(image, path, max_size, max_pixels)
    except (ImageReadError, MemoryError):
        raise
    except PermissionError as error:
        raise ImageReadError(f"Cannot read image file {path}: permission denied.") from error
    except Exception as error:  # PIL's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageReadError(f"Cannot read image file {path}: {_reason(error)}") from error


def _check_file(path):
    if not os.path.exists(path):
        raise ImageReadError(f"Cannot read image file {path}: no such file.")
    if os.path.isdir(path):
        raise ImageReadError(f"Cannot read image file {path}: it is a directory, not an image file.")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ImageReadError(f"Cannot read image file {path}: the file is empty.")


def _reason(error):
    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return "not an image file in a format PIL reads (or its header is corrupt)."
    text = str(error) or type(error).__name__
    if "truncated" in text.lower():
        return f"the file is truncated ({text})."
    return f"the file is corrupt or not a supported image ({type(error).__name__}: {text})."


def _open(path, max_pixels):
    """`Image.open`, except that a JPEG over PIL's own decompression-bomb limit is
    opened anyway: `_decode` decodes it at reduced scale and applies `max_pixels`
    to what it decodes."""
    from PIL import Image, JpegImagePlugin

    try:
        return Image.open(path)
    except Image.DecompressionBombError as error:
        with open(path, "rb") as file:
            is_jpeg = file.read(3) == _JPEG_MAGIC
        if not is_jpeg:
            raise ImageReadError(
                f"Cannot read image file {path}: it has more pixels than allowed (a guard against "
                f"decompression bombs; limits: max_pixels={max_pixels}, PIL.Image.MAX_IMAGE_PIXELS in PIL). "
                f"PIL: {error}"
            ) from error
        return JpegImagePlugin.JpegImageFile(path)


def _decode(image, path, max_size, max_pixels):
    """An opened PIL image -> upright uint8 RGB `(H, W, 3)` of at most `max_size` a side."""
    if max_size is not None:
        factor = math.ceil(max(image.size) / max_size)
        if factor > 1:  # JPEG: decode at 1/2, 1/4 or 1/8 scale (no-op for other formats)
            image.draft(None, tuple(math.ceil(side / factor) for side in image.size))
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            f"Cannot read image file {path}: it is {width} x {height} = {width * height:,} pixels, more "
            f"than the limit of {int(max_pixels):,} (max_pixels; a guard against decompression bombs)."
        )
    image.load()
    orientation = _orientation(image)
    image = _reduce(_reducible(image, path), max_size)
    if orientation in _UPRIGHT:
        from PIL import Image

        image = image.transpose(getattr(Image.Transpose, _UPRIGHT[orientation]))
    return _as_uint8(image)


def _orientation(image):
    """The EXIF (or XMP) orientation 1-8; 1 when absent or unreadable (a broken
    metadata block says nothing about how the pixels are stored)."""
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:
        return 1


def _reducible(image, path):
    """A PIL image `Image.reduce` can average without changing its meaning: L, LA,
    RGB and RGBA as they are (their RGB conversion commutes with averaging),
    other 8-bit modes (palette, bilevel, CMYK, ...) converted to RGB, 16-bit,
    integer and float modes as an "F" image in [0, 255]."""
    from PIL import Image

    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if not (mode.startswith("I") or mode == "F"):
        return image.convert("RGB")
    values = np.asarray(image)
    if mode == "F":
        values = _float_to_255(values, path)
    else:
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > 65535:
            raise ImageReadError(
                f"Cannot read image file {path}: its {mode} pixels hold values in [{low}, {high}], "
                "outside the 16-bit range [0, 65535] this reader scales to 8 bits."
            )
        values = values.astype(np.float32) / 257.0
    return Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))  # mode "F"


def _float_to_255(values, path):
    """Float pixels -> [0, 255]: [0, 1] images are scaled by 255, [0, 255] ones kept."""
    if not np.isfinite(values).all():
        raise ImageReadError(f"Cannot read image file {path}: its float pixels include NaN or inf.")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low < 0 or high > 255:
        raise ImageReadError(
            f"Cannot read image file {path}: its float pixels lie in [{low:g}, {high:g}], outside "
            "[0, 1] and [0, 255]; there is no 8-bit reading of them."
        )
    return values * 255.0 if high <= 1.0 else values


def _reduce(image, max_size):
    if max_size is None:
        return image
    factor = math.ceil(max(image.size) / max_size)
    return image.reduce(factor) if factor > 1 else image


def _as_uint8(image):
    """A reduced, upright PIL image -> uint8 RGB `(H, W, 3)`; "F" is rounded."""
    if image.mode == "F":
        gray = np.rint(np.asarray(image)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


# ---- value checks ------------------------------------------------------------------


def check_raw_images(images, where):
    """Raise a ValueError unless `images` are raw images: uint8 (any integer type
    with values in [0, 255]) or float with values in [0, 255].

    The dtype is checked always; values only when concrete (eager). A float
    image whose maximum lies in (0, 1] raises ("looks like [0, 1]"), values
    below 0 or above 255 raise, and so do NaN / inf, naming the image's index.

    Args:
        images: one image `(H, W, C)`, a batch `(B, H, W, C)`, a list of images,
            or a `tf.RaggedTensor` batch.
        where: the entry point named in messages, e.g. `"SigLIPImageConverter"`.
    """
    if isinstance(images, (list, tuple)):
        for index, image in enumerate(images):
            _check_raw(image, where, index)
        return
    if _is_eager_ragged(images):
        for index, image in enumerate(images):
            _check_raw(image.to_tensor() if hasattr(image, "to_tensor") else image, where, index)
        return
    _check_raw(images, where)


def _check_raw(images, where, index=None):
    if not hasattr(images, "dtype"):
        images = np.asarray(images)
    kind = _dtype_kind(images.dtype)
    if kind == "bool":
        raise ValueError(
            f"{where} takes uint8 images or float images in [0, 255]; got dtype bool. "
            "Pass uint8 (e.g. `mask.astype('uint8') * 255`)."
        )
    if kind not in ("int", "float"):
        raise ValueError(f"{where} takes uint8 images or float images in [0, 255]; got dtype {images.dtype}.")
    values = concrete_numpy(images)
    if values is None:
        return
    for position, (finite, low, high) in _per_image(values, image_rank=3):
        name = _image_name(index, position)
        if not finite:
            raise ValueError(f"{where}: {name} is not finite (it holds NaN or inf).")
        if low < 0 or high > 255:
            raise ValueError(
                f"{where}: {name} has values in [{low:g}, {high:g}], outside [0, 255]. Raw images are uint8 or "
                "float in [0, 255] (16-bit images: scale to 8 bits; images already preprocessed to [-1, 1] "
                "go to the model, not to the image converter)."
            )
        if kind == "float" and 0 < high <= 1:
            raise ValueError(
                f"{where}: {name} is float with values in [{low:g}, {high:g}]: looks like [0, 1]: multiply by "
                "255 or pass uint8 (if it really is a nearly black [0, 255] image, cast it to uint8)."
            )


def check_model_images(images, where):
    """Raise a ValueError unless `images` are preprocessed model images: float
    with values in [-1, 1] (up to `MODEL_IMAGE_LIMIT` = 1.5: resizing overshoots).

    An integer or bool dtype raises always; values (beyond +-1.5, NaN / inf)
    only when concrete (eager), so compiled paths are untouched.

    Args:
        images: `(B, H, W, C)` (or one `(H, W, C)`), or model inputs: a dict with
            `"images"`, or with NaFlex / packed `"patches"` `(B, N, P*P*C)`; the
            range of padding patches (`patch_mask` / `segment_ids` 0) is not
            checked (the model ignores their content), their finiteness is
            (0 * NaN is NaN in attention).
        where: the entry point named in messages, e.g. `"encode_images"`.
    """
    image_rank, real = 3, None
    if isinstance(images, dict):
        key = "images" if "images" in images else "patches" if "patches" in images else None
        if key is None:
            return
        mask = images.get("patch_mask", images.get("segment_ids")) if key == "patches" else None
        real = concrete_numpy(mask) if mask is not None else None
        images, image_rank = images[key], 3 if key == "images" else 2
    if not hasattr(images, "dtype"):
        if not isinstance(images, (list, tuple)):
            return  # None, a tf.data.Dataset, a generator: values arrive traced
        images = np.asarray(images)
    advice = f"{where} takes preprocessed images in [-1, 1]; run the preprocessor / image_converter first"
    if _dtype_kind(images.dtype) != "float":
        raise ValueError(f"{advice} (got dtype {images.dtype}: raw images?).")
    values = concrete_numpy(images)
    if values is None:
        return
    if real is not None and np.shape(real) == values.shape[:-1]:  # (B, N) -> (B, N, P*P*C)
        real = np.broadcast_to(np.asarray(real)[..., None] > 0, values.shape)
    else:
        real = None  # misshaped masks are reported by the model's own shape checks
    for position, (finite, low, high) in _per_image(values, image_rank, real):
        name = _image_name(None, position)
        if not finite:
            raise ValueError(f"{where}: {name} is not finite (it holds NaN or inf).")
        if low < -MODEL_IMAGE_LIMIT or high > MODEL_IMAGE_LIMIT:
            raise ValueError(f"{advice} ({name} has values in [{low:g}, {high:g}]).")


def _per_image(values, image_rank, where=None):
    """Yield `(position, (finite, low, high))` for each image of `values`;
    position is None for one unbatched image. Empty images are skipped.
    `where` (bool, the shape of `values`) limits the range to those values
    (inf, -inf for an image without any)."""
    if values.size == 0:
        return
    batched = values.ndim > image_rank
    flat = values.reshape(len(values), -1) if batched else values.reshape(1, -1)
    if flat.dtype.kind not in "biuf":  # bfloat16 (ml_dtypes) and friends
        flat = flat.astype(np.float32)
    finite = np.isfinite(flat).all(axis=1) if flat.dtype.kind == "f" else np.ones(len(flat), bool)
    if where is None:
        low, high = flat.min(axis=1), flat.max(axis=1)  # meaningless (NaN) where not finite: reported first
    else:
        where = where.reshape(flat.shape)
        low = flat.min(axis=1, initial=np.inf, where=where)
        high = flat.max(axis=1, initial=-np.inf, where=where)
    for i in range(len(flat)):
        yield (i if batched else None), (bool(finite[i]), float(low[i]), float(high[i]))


def _image_name(index, position):
    if index is None and position is None:
        return "the image"
    return f"image {position if index is None else index}"


def _dtype_kind(dtype):
    """"bool", "int", "float" or "other"."""
    try:
        name = keras.backend.standardize_dtype(dtype)
    except (ValueError, TypeError):
        return "other"
    if name == "bool":
        return "bool"
    if name.startswith(("int", "uint")):
        return "int"
    return "float" if name.startswith(("float", "bfloat")) else "other"


def _is_eager_ragged(images):
    if "tensorflow" not in sys.modules:
        return False
    import tensorflow as tf

    return isinstance(images, tf.RaggedTensor) and tf.executing_eagerly()
