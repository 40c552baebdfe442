"""A list of photos of different sizes (what a folder holds) goes through the
fixed-resolution converters and the models that use them: each image is resized
alone, exactly as if it came on its own."""

import keras
import numpy as np
import pytest

from keras_siglip.models import PaliGemmaImageConverter, SigLIPImageConverter
from tests.helpers import tiny_pali_gemma_preset


def photos(sizes=((37, 53), (64, 20), (16, 16)), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in sizes]


@pytest.mark.parametrize("converter", [SigLIPImageConverter(image_size=(16, 16)),
                                       SigLIPImageConverter(image_size=(16, 16), interpolation="bicubic",
                                                            antialias=True),
                                       PaliGemmaImageConverter(image_size=(16, 16))])
def test_a_list_of_different_sizes_converts_each_image_alone(converter):
    images = photos()
    together = keras.ops.convert_to_numpy(converter(images))
    alone = np.concatenate([keras.ops.convert_to_numpy(converter(image[None])) for image in images])
    assert together.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(together, alone)
    # A list of one size is still converted as one batch, with the same numbers.
    same = [images[0], images[0][::-1]]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(converter(same)),
                                  keras.ops.convert_to_numpy(converter(np.stack(same))))


def test_a_bad_image_in_the_list_is_named():
    converter = SigLIPImageConverter(image_size=(16, 16))
    with pytest.raises(ValueError, match=r"image 1 of the list has shape \(20, 30\); expected \(height, width, 3\)"):
        converter([photos()[0], np.zeros((20, 30), np.uint8)])
    with pytest.raises(ValueError, match="image 1 .*outside \\[0, 255\\]"):
        converter([photos()[0], np.full((20, 30, 3), 300.0, np.float32)])


@pytest.fixture(scope="module")
def pali_gemma(tmp_path_factory):
    return tiny_pali_gemma_preset(tmp_path_factory.mktemp("pali_gemma") / "preset", seed=0)


def test_pali_gemma_generates_and_detects_on_photos_of_different_sizes(pali_gemma):
    images = photos(((37, 53), (64, 20)))
    together = pali_gemma.generate(images, ["caption en"] * 2, max_new_tokens=4)
    alone = [pali_gemma.generate(image, "caption en", max_new_tokens=4) for image in images]
    assert together == alone
    together = pali_gemma.detect(images, ["a red circle"], max_new_tokens=10, coordinates="pixels")
    alone = [pali_gemma.detect(image, ["a red circle"], max_new_tokens=10, coordinates="pixels")[0]
             for image in images]
    for ours, single in zip(together, alone):
        assert ours.labels == single.labels
        np.testing.assert_array_equal(ours.boxes, single.boxes)  # in each image's own pixels
