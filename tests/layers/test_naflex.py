"""NaFlex preprocessing: the size rule (HF bit for bit), patch order, the converter."""

import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_siglip.layers import NaFlexImageConverter, patchify, target_size, target_size_tf
from keras_siglip.layers.naflex import patchify_with_coords

# big_vision ops_naflex_test: ((h, w), patch_size, max_num_patches) -> target size.
BIG_VISION_VECTORS = [
    ((48, 48), 3, 121, (33, 33)),
    ((112, 109), 7, 225, (105, 105)),
    ((176, 176), 11, 64, (88, 88)),
    ((256, 64), 16, 12, (96, 32)),
    ((256, 64), 8, 15, (56, 16)),
    ((63, 241), 16, 16, (32, 128)),
    ((16, 512), 16, 16, (16, 256)),
]
ANY_IMAGE = tf.TensorSpec((None, None, None), tf.uint8)
EXTREME_SIZES = [(1, 1), (1, 100000), (100000, 1), (10000, 10000), (16, 100000), (1000, 10), (2, 3)]


def hf_size_fn():
    """HF's `get_image_size_for_max_num_patches` (the torchvision module needs
    torchvision; the PIL module holds an identical copy)."""
    try:
        module = importlib.import_module("transformers.models.siglip2.image_processing_siglip2")
    except ImportError:
        module = importlib.import_module("transformers.models.siglip2.image_processing_pil_siglip2")
    return module.get_image_size_for_max_num_patches


def size_cases(seed=0, count=3000):
    """Random (h, w, patch_size, max_num_patches) plus extremes, as int arrays."""
    rng = np.random.default_rng(seed)
    h = np.exp(rng.uniform(0, np.log(20000), count)).astype(int)
    w = np.exp(rng.uniform(0, np.log(20000), count)).astype(int)
    p = rng.integers(1, 33, count)
    n = np.exp(rng.uniform(0, np.log(5000), count)).astype(int)
    extremes = [
        (hh, ww, pp, nn) for hh, ww in EXTREME_SIZES for pp in (1, 14, 16) for nn in (1, 49, 256, 729, 1024, 4096)
    ]
    vectors = [(hw[0], hw[1], pp, nn) for hw, pp, nn, _ in BIG_VISION_VECTORS]
    return np.concatenate([np.stack([h, w, p, n], 1), np.array(extremes + vectors)]).astype("int64")


def to_numpy(outputs):
    return {k: ops.convert_to_numpy(v) for k, v in outputs.items()}


def random_image(rng, h, w, c=3):
    return rng.integers(0, 256, (h, w, c), dtype=np.uint8)


# ---- the size rule ---------------------------------------------------------------


@pytest.mark.parametrize("hw, patch_size, max_num_patches, expected", BIG_VISION_VECTORS)
def test_big_vision_vectors(hw, patch_size, max_num_patches, expected):
    assert target_size(*hw, patch_size, max_num_patches) == expected
    got = target_size_tf(*hw, patch_size, max_num_patches)
    assert tuple(int(v) for v in got) == expected


def test_size_rule_equals_hf_on_a_sweep():
    hf = hf_size_fn()
    cases = size_cases()
    expected = np.array([hf(int(h), int(w), int(p), int(n)) for h, w, p, n in cases])
    ours = np.array([target_size(*c) for c in cases])
    np.testing.assert_array_equal(ours, expected)
    assert target_size(1, 1, 16, 1024) == (112, 112)  # the x100 scale cap
    assert target_size(480, 640, 16, 256) == (224, 288)


def test_size_rule_in_tensorflow_graphs_equals_python():
    """Eager, `tf.function` and `tf.data` (float64 ops, vectorised) give the
    Python rule's sizes exactly."""
    cases = size_cases(seed=1)
    expected = np.array([target_size(*c) for c in cases])
    columns = tuple(cases.T)
    eager = np.stack([t.numpy() for t in target_size_tf(*columns)], 1)
    graph = np.stack([t.numpy() for t in tf.function(target_size_tf)(*columns)], 1)
    ds = tf.data.Dataset.from_tensor_slices(columns).batch(1000).map(target_size_tf)
    data = np.concatenate([np.stack([t.numpy() for t in b], 1) for b in ds])
    for got in (eager, graph, data):
        np.testing.assert_array_equal(got, expected)


# ---- patches and coordinates ------------------------------------------------------


def test_patchify_with_coords_matches_vit_patchify(rng):
    image = rng.normal(size=(5, 7, 3)).astype("float32")  # 2x3 patches of 2, border dropped
    patches, coords = patchify_with_coords(image, 2)
    expected, grid = patchify(image[None], 2)
    assert grid == (2, 3)
    np.testing.assert_array_equal(patches.numpy(), ops.convert_to_numpy(expected)[0])
    np.testing.assert_array_equal(coords.numpy(), [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
    assert coords.dtype == tf.int32


def test_converter_patch_order_coords_and_padding():
    """A 4x6 image already at its target size (P=2, N=8): no resampling, so the
    patches are exactly the rescaled pixels, row-major, (py, px, c) inside."""
    image = np.arange(4 * 6 * 3, dtype="float32").reshape(4, 6, 3)
    out = to_numpy(NaFlexImageConverter(2, 8, return_grid_shape=True)(image))
    scaled = image / 127.5 - 1.0
    np.testing.assert_array_equal(out["grid_shape"], [2, 3])
    np.testing.assert_array_equal(out["patch_mask"], [1] * 6 + [0, 0])
    np.testing.assert_array_equal(out["patch_coords"], [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]] + [[0, 0]] * 2)
    np.testing.assert_allclose(out["patches"][4], scaled[2:4, 2:4].reshape(-1), atol=1e-6)
    expected = ops.convert_to_numpy(patchify(scaled[None], 2)[0])[0]
    np.testing.assert_allclose(out["patches"][:6], expected, atol=1e-6)
    assert not out["patches"][6:].any()
    assert out["patches"].dtype == np.float32 and out["patch_mask"].dtype == np.int32
    assert out["patch_coords"].dtype == np.int32 and out["grid_shape"].dtype == np.int32


# ---- agreement with HF's processor --------------------------------------------------


# HF (PIL) resizes uint8 separably and rounds to uint8 after each pass: up to
# 0.5 + 0.5 grey levels. Measured worst over 100+ random images of these and
# other shapes at N in {16, 64, 256, 1024}: 1.0065 grey levels; 1 grey level is
# 2/255 in [-1, 1] units.
HF_TOLERANCE = 1.05 * 2 / 255
# The same filter in float (PIL mode "F", no rounding): measured worst 0.011 grey
# levels, from TF's float32 sample positions at non-integer scales (480 -> 432).
PIL_FLOAT_TOLERANCE = 0.02 * 2 / 255


@pytest.mark.parametrize("hw", [(1, 200), (300, 20), (37, 91), (480, 640), (5, 3)])
def test_agrees_with_hf_processor(rng, hw):
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    image = random_image(rng, *hw)
    for n in (16, 64, 256, 1024):
        hf = Siglip2ImageProcessorPil(patch_size=16, max_num_patches=n)(
            [image], input_data_format="channels_last", return_tensors="np"
        )
        out = to_numpy(NaFlexImageConverter(16, n, return_grid_shape=True)(image))
        nh, nw = hf["spatial_shapes"][0]
        np.testing.assert_array_equal(out["grid_shape"], [nh, nw])
        np.testing.assert_array_equal(out["patch_mask"], hf["pixel_attention_mask"][0])
        y, x = np.meshgrid(np.arange(nh), np.arange(nw), indexing="ij")
        np.testing.assert_array_equal(out["patch_coords"][: nh * nw], np.stack([y.ravel(), x.ravel()], 1))
        assert not out["patch_coords"][nh * nw :].any()
        np.testing.assert_allclose(out["patches"], hf["pixel_values"][0], atol=HF_TOLERANCE, rtol=0)


@pytest.mark.parametrize("hw, n", [((37, 91), 256), ((480, 640), 1024), ((300, 20), 64), ((5, 3), 1024)])
def test_resize_is_pils_bilinear_in_float(rng, hw, n):
    from PIL import Image

    image = random_image(rng, *hw)
    th, tw = target_size(*hw, 16, n)
    channels = [Image.fromarray(image[..., c].astype("float32"), "F") for c in range(3)]
    expected = np.stack([np.asarray(c.resize((tw, th), Image.BILINEAR)) for c in channels], -1) / 127.5 - 1.0
    expected = expected.reshape(th // 16, 16, tw // 16, 16, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 768)
    got = to_numpy(NaFlexImageConverter(16, n)(image))["patches"][: len(expected)]
    np.testing.assert_allclose(got, expected, atol=PIL_FLOAT_TOLERANCE, rtol=0)


# ---- channels, dtypes, errors --------------------------------------------------------


def test_grayscale_and_rgba(rng):
    converter = NaFlexImageConverter(8, 32)
    gray = random_image(rng, 19, 40, 1)
    rgba = random_image(rng, 19, 40, 4)

    def patches(image):
        return to_numpy(converter(image))["patches"]

    np.testing.assert_array_equal(patches(gray), patches(np.repeat(gray, 3, -1)))
    np.testing.assert_array_equal(patches(rgba), patches(rgba[..., :3]))


def test_float_input_equals_uint8(rng):
    image = random_image(rng, 30, 50)
    converter = NaFlexImageConverter(8, 20)
    np.testing.assert_array_equal(
        to_numpy(converter(image))["patches"], to_numpy(converter(image.astype("float32")))["patches"]
    )


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((5, 7), "uint8"), r"got shape \(5, 7\)"),
        (np.zeros((1, 1, 5, 7, 3), "uint8"), r"got shape \(1, 1, 5, 7, 3\)"),
        (np.zeros((5, 7, 2), "uint8"), r"4 \(RGBA\) channels; got an image of shape \(5, 7, 2\)"),
        (np.zeros((0, 7, 3), "uint8"), r"empty image of shape \(0, 7, 3\)"),
        (np.zeros((5, 7, 3), "int32"), "got dtype int32"),
        (np.zeros((5, 7, 3), "uint16"), "got dtype uint16"),
        (np.zeros((5, 7, 3), bool), "got dtype bool"),
    ],
)
def test_bad_inputs_raise(image, match):
    with pytest.raises(ValueError, match=match):
        NaFlexImageConverter(4, 16)(image)


def test_bad_max_num_patches_raise():
    for bad in (0, -3, 2.5, True, "16"):
        with pytest.raises(ValueError, match="max_num_patches"):
            NaFlexImageConverter(4, bad)
    with pytest.raises(ValueError, match="max_num_patches"):
        NaFlexImageConverter(4, 16)(np.zeros((8, 8, 3), "uint8"), max_num_patches=0)


# ---- batching, overrides, backends, config -----------------------------------------


def test_list_of_images_batches(rng):
    converter = NaFlexImageConverter(8, 24, return_grid_shape=True)
    images = [random_image(rng, 20, 30), random_image(rng, 50, 10), random_image(rng, 7, 7, 1)]
    batch = to_numpy(converter(images))
    assert batch["patches"].shape == (3, 24, 192)
    assert batch["patch_mask"].shape == (3, 24) and batch["patch_coords"].shape == (3, 24, 2)
    for i, image in enumerate(images):
        single = to_numpy(converter(image))
        for key in single:
            np.testing.assert_array_equal(batch[key][i], single[key])
    np.testing.assert_array_equal(batch["patch_mask"].sum(1), batch["grid_shape"].prod(1))
    # A batch array is a list of same-size images.
    stacked = to_numpy(converter(np.stack(images[:1] * 2)))
    np.testing.assert_array_equal(stacked["patches"], batch["patches"][[0, 0]])


def test_outputs_are_backend_tensors_and_take_backend_tensors(rng):
    converter = NaFlexImageConverter(8, 16)
    image = random_image(rng, 20, 30)
    out = converter(ops.convert_to_tensor(image))
    for key, dtype in (("patches", "float32"), ("patch_mask", "int32"), ("patch_coords", "int32")):
        assert ops.is_tensor(out[key]), (key, type(out[key]))
        assert keras.backend.standardize_dtype(out[key].dtype) == dtype
    np.testing.assert_array_equal(to_numpy(out)["patches"], to_numpy(converter(image))["patches"])


def test_max_num_patches_override(rng):
    converter = NaFlexImageConverter(16, 256, return_grid_shape=True)
    image = random_image(rng, 37, 91)
    small = to_numpy(converter(image, max_num_patches=16))
    assert small["patches"].shape == (16, 768)
    th, tw = target_size(37, 91, 16, 16)
    assert small["patch_mask"].sum() == small["grid_shape"].prod() == (th // 16) * (tw // 16)
    assert to_numpy(converter(image))["patches"].shape == (256, 768)


def test_extreme_sizes(rng):
    converter = NaFlexImageConverter(16, 1024, return_grid_shape=True)
    tiny = to_numpy(converter(random_image(rng, 1, 1)))
    np.testing.assert_array_equal(tiny["grid_shape"], [7, 7])  # 112x112: the x100 scale cap
    # Every patch of an upscaled single pixel is that pixel.
    pixel = np.broadcast_to(tiny["patches"][0, :3], (49, 256, 3)).reshape(49, -1)
    np.testing.assert_allclose(tiny["patches"][:49], pixel, atol=1e-6)
    thin = to_numpy(converter(random_image(rng, 1, 100000), max_num_patches=256))
    np.testing.assert_array_equal(thin["grid_shape"], [1, 256])
    assert np.isfinite(thin["patches"]).all()


@pytest.mark.slow
def test_huge_image():
    image = np.full((10000, 10000, 3), 200, np.uint8)
    out = to_numpy(NaFlexImageConverter(16, 256, return_grid_shape=True)(image))
    np.testing.assert_array_equal(out["grid_shape"], [16, 16])
    np.testing.assert_allclose(out["patches"], 200 / 127.5 - 1, atol=1e-5)


def test_get_config_round_trip(rng):
    converter = NaFlexImageConverter(14, 729, return_grid_shape=True, name="naflex")
    config = converter.get_config()
    assert config["patch_size"] == 14 and config["max_num_patches"] == 729 and config["return_grid_shape"]
    restored = NaFlexImageConverter.from_config(config)
    assert restored.get_config() == config
    serialized = keras.saving.serialize_keras_object(converter)
    assert serialized["registered_name"] == "keras_siglip>NaFlexImageConverter"
    revived = keras.saving.deserialize_keras_object(serialized)
    image = random_image(rng, 30, 40)
    np.testing.assert_array_equal(to_numpy(revived(image))["patches"], to_numpy(converter(image))["patches"])


# ---- tf.data -------------------------------------------------------------------------


def test_in_tf_data_with_dynamic_shapes(rng):
    """`dataset.map(converter)` on images of unknown size: static output shapes,
    the same values as the eager call (the graph uses the float64 TF size rule)."""
    converter = NaFlexImageConverter(8, 32, return_grid_shape=True)
    shapes = [(1, 200, 3), (300, 20, 3), (37, 91, 1), (5, 3, 4), (64, 64, 3)]
    images = [random_image(rng, *shape) for shape in shapes]
    ds = tf.data.Dataset.from_generator(lambda: iter(images), output_signature=ANY_IMAGE).map(converter)
    unknown_rank = tf.data.Dataset.from_generator(lambda: iter(images), output_signature=tf.TensorSpec(None, tf.uint8))
    ds = tf.data.Dataset.zip(ds, unknown_rank.map(converter))
    assert ds.element_spec[1]["patches"].shape == (32, 192)
    assert ds.element_spec[0]["patch_coords"].shape == (32, 2)
    for image, (got, got_unknown_rank) in zip(images, ds):
        np.testing.assert_array_equal(got["patches"].numpy(), got_unknown_rank["patches"].numpy())
        expected = to_numpy(converter(image))
        th, tw = target_size(*image.shape[:2], 8, 32)
        np.testing.assert_array_equal(got["grid_shape"].numpy(), [th // 8, tw // 8])
        np.testing.assert_array_equal(got["patch_mask"].numpy(), expected["patch_mask"])
        np.testing.assert_array_equal(got["patch_coords"].numpy(), expected["patch_coords"])
        np.testing.assert_allclose(got["patches"].numpy(), expected["patches"], atol=1e-6)


def test_in_tf_data_batched_and_overridden(rng):
    converter = NaFlexImageConverter(8, 32)
    images = rng.integers(0, 256, (4, 20, 30, 3), dtype=np.uint8)
    ds = tf.data.Dataset.from_tensor_slices(images).batch(2).map(lambda x: converter(x, max_num_patches=12))
    got = np.concatenate([b["patches"].numpy() for b in ds])
    assert got.shape == (4, 12, 192)
    np.testing.assert_allclose(got, to_numpy(converter(images, max_num_patches=12))["patches"], atol=1e-6)


def test_in_tf_data_bad_channels_fail_at_run_time():
    ds = tf.data.Dataset.from_generator(lambda: iter([np.zeros((5, 7, 2), np.uint8)]), output_signature=ANY_IMAGE)
    ds = ds.map(NaFlexImageConverter(4, 16))
    with pytest.raises(tf.errors.InvalidArgumentError, match="height, width, 1\\|3\\|4"):
        next(iter(ds))
