"""Fixed-resolution preprocessing against its two references, pixel by pixel, on
natural-looking images (smooth gradients, noise, saturated sharp-edged shapes)
of several sizes and aspect ratios, up- and downsampled:

- HF's `SiglipImageProcessor` (PIL bicubic with antialias in uint8, rescale,
  normalise) vs `SigLIPImageConverter(interpolation="bicubic", antialias=True)`,
  what a converted HF checkpoint carries. PIL resizes in two separable passes,
  each rounded and clipped to uint8; ours resizes in float32 and clips once.
  Tolerances from that: the median within half a grey level (PIL's rounding),
  99% of values within 1 level, at most 0.5% of values over 2 levels (PIL's
  clipped first pass at saturated edges), none over 16, and the output never
  beyond what [0, 255] maps to (bicubic overshoots up to 36 levels unclipped).
- big_vision's `resize(224)|value_range(-1, 1)` (bilinear `tf.image.resize`,
  cast back to uint8, which truncates) vs the default converter: within one
  grey level (the truncation), nowhere more.
"""

import keras
import numpy as np
import pytest

from keras_siglip.models import PaliGemmaImageConverter, SigLIPImageConverter

transformers = pytest.importorskip("transformers")

SIZES = [(37, 53), (300, 200), (500, 333), (1000, 150), (64, 64)]
GREY = 127.5  # one grey level in the [-1, 1] output


def natural_image(height, width, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([200 * x + 30, 180 * y + 40, 60 * (x + y) + 60], axis=-1)
    for _ in range(6):
        top, left = rng.integers(0, height), rng.integers(0, width)
        image[top:top + height // 4, left:left + width // 5] = rng.choice([0, 255], 3)
    image += rng.normal(0, 4, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def ours(converter, image):
    return np.asarray(keras.ops.convert_to_numpy(converter(image[None])))[0]


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_bicubic_matches_hf_siglip_image_processor(size):
    image = natural_image(*size, seed=size[0])
    processor = transformers.SiglipImageProcessor(size={"height": 224, "width": 224}, resample=3)
    expected = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    actual = ours(SigLIPImageConverter(image_size=(224, 224), interpolation="bicubic", antialias=True), image)
    assert actual.shape == expected.shape == (224, 224, 3)
    assert actual.min() >= -1.0 and actual.max() <= 1.0
    levels = np.abs(actual - expected) * GREY
    assert np.median(levels) <= 0.5
    assert np.percentile(levels, 99) <= 1.0
    assert (levels > 2).mean() <= 0.005
    assert levels.max() <= 16, levels.max()


@pytest.mark.parametrize("converter_class", [SigLIPImageConverter, PaliGemmaImageConverter])
@pytest.mark.parametrize("size", SIZES[:4], ids=[f"{h}x{w}" for h, w in SIZES[:4]])
def test_bilinear_matches_big_vision_resize_value_range(size, converter_class):
    tf = pytest.importorskip("tensorflow")
    image = natural_image(*size, seed=size[1])
    resized = tf.cast(tf.image.resize(image, (224, 224), method="bilinear"), tf.uint8).numpy()
    expected = resized.astype("float32") / 127.5 - 1.0  # value_range(-1, 1)
    actual = ours(converter_class(image_size=(224, 224)), image)
    levels = np.abs(actual - expected) * GREY
    assert levels.max() <= 1.0 + 1e-3, levels.max()
    assert levels.mean() > 0.1  # the truncation is there: the comparison is not of a thing with itself


def test_the_clip_follows_scale_and_offset():
    """Per-channel scale/offset (ImageNet-style): the output is clipped to what
    0 and 255 map to, channel by channel."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    converter = SigLIPImageConverter(image_size=(224, 224), scale=list(1 / (255 * std)), offset=list(-mean / std),
                                     interpolation="bicubic", antialias=True)
    out = ours(converter, natural_image(37, 53, seed=1))
    low, high = -mean / std, (1 - mean) / std
    assert (out.min(axis=(0, 1)) >= low - 1e-5).all() and (out.max(axis=(0, 1)) <= high + 1e-5).all()
    assert np.isclose(out.min(axis=(0, 1)), low, atol=1e-5).all()  # saturated black edges reach it
