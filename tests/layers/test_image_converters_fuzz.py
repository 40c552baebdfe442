"""Image converters take raw images: uint8, or float in [0, 255]. Anything else
is a clear ValueError when called eagerly; valid input gives a finite, correctly
shaped result. Fuzzed over dtypes, sizes, channel counts and value ranges."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import assume, event, given
from hypothesis import strategies as st

from keras_siglip.layers import NaFlexImageConverter
from keras_siglip.models import SigLIPImageConverter, SigLIPPreprocessor
from tests.helpers import numpy

SIZE, PATCH, PATCHES = (8, 6), 4, 16
DTYPES = ("uint8", "uint16", "int32", "float16", "float32", "float64", "bool")
SIDES = ((1, 1), (1, 300), (300, 1), (2, 3), (7, 16), (33, 5), (16, 16))
# Value ranges, as (low, high) before the cast to the dtype; valid ones weighted up.
RANGES = ((0, 255), (0, 255), (0, 255), (0, 0), (0, 1), (-1, 1), (0, 300), (-40, 20), (0, 65535))


def siglip():
    return SigLIPImageConverter(image_size=SIZE)


def naflex():
    return NaFlexImageConverter(PATCH, PATCHES)


def make_images(seed, dtype, batch, side, channels, value_range, special):
    """A batch `(B, H, W, C)` of `dtype` (B = 0 means one unbatched image)."""
    rng = np.random.default_rng(seed)
    shape = ((batch,) if batch else ()) + (*side, channels)
    values = rng.uniform(*value_range, shape)
    if dtype == "bool":
        return values > np.mean(value_range)
    if special and np.issubdtype(np.dtype(dtype), np.floating):
        flat = values.reshape(-1)
        flat[rng.integers(0, flat.size)] = special
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype)


def expected_problems(images, converter):
    """The words an error must use for `images` (empty: the input is valid)."""
    kind = images.dtype.kind
    channels = images.shape[-1]
    if kind == "b":
        return {"bool"}
    problems = set()
    if isinstance(converter, NaFlexImageConverter):
        if channels not in (1, 3, 4):
            problems.add("channels")
        if kind in "iu" and images.dtype != np.uint8:
            problems.add("dtype")
    elif channels != 3:
        problems.add("RGB")
    for image in images.reshape(-1, *images.shape[-3:]):
        values = image.astype(np.float64)
        if not np.isfinite(values).all():
            problems.add("not finite")
            continue
        if values.min() < 0 or values.max() > 255:
            problems.add("outside [0, 255]")
        elif kind == "f" and 0 < values.max() <= 1:
            problems.add("looks like [0, 1]")
    return problems


def check_valid_output(outputs, images, converter):
    batch = images.shape[:-3]
    if isinstance(converter, NaFlexImageConverter):
        patches = outputs["patches"]
        assert patches.shape == (*batch, PATCHES, PATCH * PATCH * 3)
        assert outputs["patch_mask"].shape == (*batch, PATCHES)
        assert (outputs["patch_mask"].reshape(-1, PATCHES).sum(-1) >= 1).all()
    else:
        patches = outputs
        assert patches.shape == (*batch, *SIZE, 3)
    assert np.isfinite(patches).all()
    assert np.abs(patches).max() <= 1 + 1e-5  # both resizes are convex combinations


@given(
    which=st.sampled_from(("siglip", "naflex")),
    dtype=st.sampled_from(DTYPES),
    batch=st.integers(0, 2),
    side=st.sampled_from(SIDES),
    channels=st.sampled_from((3, 3, 3, 1, 2, 4, 5)),
    value_range=st.sampled_from(RANGES),
    special=st.sampled_from((None,) * 5 + (np.nan, np.inf, -np.inf)),
    seed=st.integers(0, 2**16),
)
def test_converters_raise_clearly_or_give_finite_shaped_outputs(
    which, dtype, batch, side, channels, value_range, special, seed
):
    converter = siglip() if which == "siglip" else naflex()
    images = make_images(seed, dtype, batch, side, channels, value_range, special)
    problems = expected_problems(images, converter)
    event("invalid" if problems else "valid")
    try:
        outputs = numpy(converter(images))
    except ValueError as error:
        assert problems, f"valid {dtype} images {images.shape} raised: {error}"
        assert any(word in str(error) for word in problems), (problems, str(error))
        return
    assert not problems, f"{problems} passed silently"
    check_valid_output(outputs, images, converter)


@given(
    which=st.sampled_from(("siglip", "naflex")),
    dtype=st.sampled_from(("uint8", "float16", "float32", "float64")),
    batch=st.integers(0, 2),
    side=st.sampled_from(SIDES),
    channels=st.sampled_from((1, 3, 4)),
    seed=st.integers(0, 2**16),
)
def test_valid_raw_images_give_finite_shaped_outputs(which, dtype, batch, side, channels, seed):
    converter = siglip() if which == "siglip" else naflex()
    channels = channels if which == "naflex" else 3
    images = make_images(seed, dtype, batch, side, channels, (0, 255), None)
    assume(not expected_problems(images, converter))  # e.g. a 1x1 float image below 1
    check_valid_output(numpy(converter(images)), images, converter)


# ---- the raw-image rule, one case at a time --------------------------------------


@pytest.mark.parametrize("make", [siglip, naflex, lambda: SigLIPPreprocessor(image_converter=siglip())])
def test_unit_range_float_images_raise(make):
    """[0, 1] floats used to come out nearly black (all -1), silently."""
    images = np.random.default_rng(0).random((2, 9, 7, 3)).astype("float32")
    with pytest.raises(ValueError, match=r"image 0 is float .*looks like \[0, 1\]: multiply by 255"):
        make()(images)
    numpy(make()(images * 255))  # the fix the message asks for


@pytest.mark.parametrize("make", [siglip, naflex])
def test_bad_values_are_named_by_image_index(make):
    images = np.full((3, 9, 7, 3), 128.0, "float32")
    images[2, 1, 1, 0] = np.nan
    with pytest.raises(ValueError, match="image 2 is not finite"):
        make()(images)
    images[2, 1, 1, 0] = -0.5  # e.g. an image already preprocessed to [-1, 1]
    with pytest.raises(ValueError, match=r"image 2 has values in \[-0.5, 128\], outside \[0, 255\]"):
        make()(images)
    listed = [np.full((5, 5, 3), 100.0, "float32"), np.full((4, 6, 3), 1000.0, "float32")]  # 16-bit-like
    with pytest.raises(ValueError, match=r"image 1 has values in \[1000, 1000\], outside"):
        naflex()(listed)


@pytest.mark.parametrize("make", [siglip, naflex])
def test_dark_uint8_and_black_float_images_are_valid(make):
    numpy(make()(np.ones((9, 7, 3), "uint8")))  # integers are never taken for [0, 1]
    numpy(make()(np.zeros((9, 7, 3), "float32")))


def test_checks_leave_tf_data_untouched():
    """Values are only checked when concrete: a traced pipeline is not changed."""
    images = np.random.default_rng(0).random((2, 9, 7, 3)).astype("float32")
    for converter in (siglip(), naflex()):
        dataset = tf.data.Dataset.from_tensor_slices(images).batch(2).map(converter)
        next(iter(dataset))


# ---- empty batches ----------------------------------------------------------------


def test_empty_batches_give_empty_outputs():
    """Every backend: a batch of 0 images is a result with a leading 0, not an
    error (the NaFlex converter raised, SigLIP's raised IndexError on [])."""
    for images in (np.zeros((0, 9, 7, 3), "uint8"), []):
        assert numpy(siglip()(images)).shape == (0, *SIZE, 3)
        outputs = numpy(naflex()(images))
        assert outputs["patches"].shape == (0, PATCHES, PATCH * PATCH * 3)
        assert outputs["patch_mask"].shape == (0, PATCHES) and outputs["patch_coords"].shape == (0, PATCHES, 2)
