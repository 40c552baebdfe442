"""`read_image`: every PIL mode and format to upright uint8 RGB, huge files at
reduced size, and a clear `ImageReadError` for every file it cannot read."""

import io
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageOps

from keras_siglip.utils.images import ImageReadError, read_image

ORIENTATION = 0x0112
# EXIF orientation o: how the stored pixels relate to the upright picture `u`
# (the EXIF specification's meaning, written with numpy, independent of PIL).
STORED = {
    1: lambda u: u,
    2: lambda u: u[:, ::-1],
    3: lambda u: u[::-1, ::-1],
    4: lambda u: u[::-1],
    5: lambda u: u.swapaxes(0, 1),
    6: lambda u: np.rot90(u, 1),
    7: lambda u: np.rot90(u, 2).swapaxes(0, 1),
    8: lambda u: np.rot90(u, -1),
}
EXIF_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")  # the formats that carry EXIF
FORMATS = EXIF_FORMATS + ("GIF", "BMP")
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I", "I;16", "I;16B", "F")
SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L")


def save(image, path, orientation=1, **kwargs):
    if orientation != 1:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        kwargs["exif"] = exif
    image.save(path, **kwargs)
    return path


def random_image(mode, height, width, seed):
    """A random PIL image of `mode`: 8-bit modes full range, 16-bit modes
    0..65535, float images in [0, 1] or [0, 255] (by seed)."""
    rng = np.random.default_rng(seed)
    size = (width, height)
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (height, width)).astype(bool))
    if mode in ("P", "PA"):
        image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())  # L -> P
        if mode == "PA":
            image = image.convert("PA")
        else:
            image.info["transparency"] = int(rng.integers(0, 256))
        return image
    if mode in SIXTEEN_BIT:
        values = rng.integers(0, 65536, (height, width)).astype(np.uint16)
        if mode == "I":
            return Image.fromarray(values.astype(np.int32))
        return Image.frombytes(mode, size, values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    if mode == "F":
        scale = 1.0 if seed % 2 else 255.0
        return Image.fromarray((rng.random((height, width)) * scale).astype(np.float32))
    bands = len(Image.new(mode, (1, 1)).getbands())
    return Image.frombytes(mode, size, rng.integers(0, 256, (height, width, bands), dtype=np.uint8).tobytes())


def reference(path):
    """What `read_image` must return for a small file: PIL's `exif_transpose`,
    then `convert("RGB")` for 8-bit modes and round(v / 257) for 16-bit ones."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in SIXTEEN_BIT:
            values = np.asarray(image).astype(np.int64)
            gray = ((values * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257), exactly
            return np.repeat(gray[..., None], 3, axis=-1)
        if image.mode == "F":
            values = np.asarray(image).astype(np.float64)
            gray = np.rint(values * 255 if values.max() <= 1 else values).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=-1)
        return np.asarray(image.convert("RGB"))


def _writable(mode, fmt):
    try:
        random_image(mode, 2, 2, 0).save(io.BytesIO(), fmt)
        return True
    except (OSError, ValueError, KeyError):
        return False


WRITABLE = [(mode, fmt) for mode in MODES for fmt in FORMATS if _writable(mode, fmt)]


# ---- properties (Hypothesis) ------------------------------------------------------


@given(orientation=st.integers(1, 8), fmt=st.sampled_from(("PNG", "TIFF", "WEBP")),
       height=st.integers(1, 9), width=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_every_orientation_reads_upright(tmp_path_factory, orientation, fmt, height, width, seed):
    upright = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    stored = Image.fromarray(np.ascontiguousarray(STORED[orientation](upright)))
    path = tmp_path_factory.mktemp("o") / f"photo.{fmt.lower()}"
    save(stored, path, orientation, **({"lossless": True} if fmt == "WEBP" else {}))
    np.testing.assert_array_equal(read_image(path), upright)


@given(case=st.sampled_from(WRITABLE), orientation=st.integers(1, 8), height=st.integers(1, 12),
       width=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_every_mode_and_format_reads_as_uint8_rgb(tmp_path_factory, case, orientation, height, width, seed):
    mode, fmt = case
    orientation = orientation if fmt in EXIF_FORMATS else 1
    path = save(random_image(mode, height, width, seed), tmp_path_factory.mktemp("m") / f"x.{fmt.lower()}",
                orientation)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    expected = reference(path)
    if Image.open(path).mode == "F":  # float32 rounding may differ by one level
        np.testing.assert_allclose(image, expected, atol=1)
    else:
        np.testing.assert_array_equal(image, expected)


@given(fmt=st.sampled_from(("PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP")), cut=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4), seed=st.integers(0, 99))
def test_corrupt_files_raise_image_read_error_or_read(tmp_path_factory, fmt, cut, flips, seed):
    """Truncated or byte-flipped files: an ImageReadError naming the file, or
    (when the damage is harmless) a uint8 RGB image; never another exception."""
    buffer = io.BytesIO()
    random_image("RGB", 8, 8, seed).save(buffer, fmt)
    data = bytearray(buffer.getvalue()[: max(1, int(len(buffer.getvalue()) * cut))])
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    path = tmp_path_factory.mktemp("c") / f"bad.{fmt.lower()}"
    path.write_bytes(bytes(data))
    try:
        image = read_image(path)
    except ImageReadError as error:
        assert str(path) in str(error)
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


# ---- depth and modes --------------------------------------------------------------


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    """A 16-bit gradient used to come out white (PIL clips at 255)."""
    values = np.linspace(0, 65535, 64).astype(np.uint16).reshape(4, 16)
    path = save(Image.fromarray(values), tmp_path / "depth.png")
    assert Image.open(path).mode == "I;16"
    image = read_image(path)
    expected = np.rint(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(image, np.repeat(expected[..., None], 3, axis=-1))
    assert image.min() == 0 and image.max() == 255 and len(np.unique(image)) > 50


@pytest.mark.parametrize("mode", ["I;16B", "I"])
def test_16_bit_tiff_modes(tmp_path, mode):
    image = random_image(mode, 5, 7, seed=3)
    path = save(image, tmp_path / "depth.tif")
    assert Image.open(path).mode == mode
    values = np.asarray(image).astype(np.float64)
    np.testing.assert_array_equal(read_image(path)[..., 0], np.rint(values / 257).astype(np.uint8))


def test_32_bit_integer_values_beyond_16_bits_raise(tmp_path):
    path = save(Image.fromarray(np.array([[0, 70000]], np.int32)), tmp_path / "wide.tif")
    with pytest.raises(ImageReadError, match=r"wide.tif.*\[0, 70000\].*16-bit"):
        read_image(path)


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_float_images_in_unit_or_byte_range(tmp_path, scale):
    values = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32) * scale
    path = save(Image.fromarray(values), tmp_path / "float.tif")
    np.testing.assert_array_equal(read_image(path)[0, :, 0], [0, 64, 128, 255])


@pytest.mark.parametrize("values, problem", [([[0.0, np.nan]], "NaN or inf"), ([[-3.0, 2.0]], "outside"),
                                             ([[0.0, 300.0]], "outside")])
def test_float_images_without_an_8_bit_reading_raise(tmp_path, values, problem):
    path = save(Image.fromarray(np.array(values, np.float32)), tmp_path / "float.tif")
    with pytest.raises(ImageReadError, match=problem):
        read_image(path)


def test_alpha_is_dropped_and_palettes_looked_up(tmp_path):
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 255]]], np.uint8)
    np.testing.assert_array_equal(read_image(save(Image.fromarray(rgba), tmp_path / "a.png")), rgba[..., :3])
    la = np.array([[[7, 0], [250, 128]]], np.uint8)
    np.testing.assert_array_equal(read_image(save(Image.fromarray(la, "LA"), tmp_path / "la.png")),
                                  np.repeat(la[..., :1], 3, axis=-1))
    palette = Image.fromarray(np.array([[0, 1]], np.uint8))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.info["transparency"] = b"\x00\xff"  # the red entry fully transparent
    np.testing.assert_array_equal(read_image(save(palette, tmp_path / "p.png")), [[[255, 0, 0], [0, 0, 255]]])
    bilevel = Image.fromarray(np.array([[True, False]]))
    np.testing.assert_array_equal(read_image(save(bilevel, tmp_path / "b.png")), [[[255] * 3, [0] * 3]])
    cmyk = Image.frombytes("CMYK", (1, 1), bytes([0, 255, 0, 0]))  # magenta
    np.testing.assert_array_equal(read_image(save(cmyk, tmp_path / "c.tif")), [[[255, 0, 255]]])


def test_phone_photo_orientation_6_is_upright(tmp_path):
    """A portrait photo stored landscape with orientation 6 (rotate 90 clockwise)."""
    upright = np.zeros((48, 32, 3), np.uint8)
    upright[:8] = 255  # a white band at the top of the upright picture
    path = save(Image.fromarray(np.ascontiguousarray(STORED[6](upright))), tmp_path / "phone.jpg", 6, quality=95)
    image = read_image(path)
    assert image.shape == (48, 32, 3)
    np.testing.assert_allclose(image.astype(float), upright, atol=12)


# ---- size -------------------------------------------------------------------------


def test_large_images_are_reduced_by_an_integer_factor(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)
    path = save(Image.fromarray(pixels), tmp_path / "large.png")
    image = read_image(path, max_size=16)  # 64 / 16 -> factor 4
    assert image.shape == (10, 16, 3)
    boxes = pixels.reshape(10, 4, 16, 4, 3).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_allclose(image, boxes, atol=1)
    assert read_image(path, max_size=None).shape == (40, 64, 3)
    assert read_image(path, max_size=64).shape == (40, 64, 3)
    assert read_image(path, max_size=63).shape == (20, 32, 3)


def test_reduction_happens_before_orientation(tmp_path):
    upright = np.zeros((64, 32, 3), np.uint8)
    upright[:16] = 255
    path = save(Image.fromarray(np.ascontiguousarray(STORED[8](upright))), tmp_path / "r.png", 8)
    image = read_image(path, max_size=16)
    assert image.shape == (16, 8, 3)
    assert image[:4].min() == 255 and image[4:].max() == 0


def test_jpeg_decodes_at_reduced_scale_within_the_pixel_limit(tmp_path):
    """800 x 800 is more than max_pixels, but decoded at 1/8 scale it is not."""
    path = save(Image.new("RGB", (800, 800), (90, 160, 30)), tmp_path / "big.jpg")
    image = read_image(path, max_size=100, max_pixels=20_000)
    assert image.shape == (100, 100, 3)
    np.testing.assert_allclose(image.reshape(-1, 3).mean(0), [90, 160, 30], atol=3)
    with pytest.raises(ImageReadError, match=r"big.jpg.*800 x 800 = 640,000 pixels.*20,000"):
        read_image(path, max_size=None, max_pixels=20_000)


def test_decompression_bombs_raise_image_read_error(tmp_path, monkeypatch):
    """Past PIL's own limit (lowered here to keep the files small): a JPEG is
    decoded at reduced size anyway; another format is a clear ImageReadError."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL raises above 2000 pixels
    jpeg = save(Image.new("RGB", (160, 120), (0, 0, 255)), tmp_path / "bomb.jpg")
    png = save(Image.new("RGB", (160, 120), (0, 0, 255)), tmp_path / "bomb.png")
    assert read_image(jpeg, max_size=20).shape == (15, 20, 3)
    with pytest.raises(ImageReadError, match=r"bomb.png.*decompression bombs"):
        read_image(png, max_size=20)


# ---- files that are not images ----------------------------------------------------


def test_unreadable_files_raise_image_read_error(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    buffer = io.BytesIO()
    random_image("RGB", 64, 64, 1).save(buffer, "JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(buffer.getvalue()[:300])
    cases = [
        (text, "not an image"),
        (empty, "empty"),
        (truncated, "truncated"),
        (tmp_path, "directory"),
        (tmp_path / "missing.png", "no such file"),
    ]
    for path, reason in cases:
        with pytest.raises(ImageReadError, match=reason) as caught:
            read_image(path)
        assert str(path) in str(caught.value) and isinstance(caught.value, ValueError)


def test_permission_denied_raises_image_read_error(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (2, 2)), tmp_path / "locked.png")
    if os.geteuid() != 0:  # root reads anything: simulate the refusal there
        os.chmod(path, 0)
    else:
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(ImageReadError, match=r"locked.png.*permission denied"):
        read_image(path)
