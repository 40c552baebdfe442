"""NaViT resolution sampling: each image's side length drawn from a (truncated)
distribution on [-1, 1] mapped onto a side or area range, then a patch budget.

References: scipy's `truncnorm` / `uniform` (Kolmogorov-Smirnov tests on 3,000
draws; the same test rejects the wrong distribution), `target_size` for the
sizes, and the converter at the budget for the pixels.
"""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from keras_siglip.data import pack_dataset
from keras_siglip.data.resolution_sampling import draw_side_lengths, sample_resolutions, token_budget
from keras_siglip.layers.naflex import NaFlexImageConverter, target_size

LOW, HIGH, N = 64, 384, 3000


def ks_pvalue(sides, distribution):
    return stats.kstest(sides, distribution.cdf).pvalue


def test_truncated_normal_side_lengths_follow_the_paper_distribution():
    sides = draw_side_lengths(N, (LOW, HIGH), "truncated_normal", mean=-0.5, std=1.0, seed=3)
    assert sides.min() >= LOW and sides.max() <= HIGH
    # u ~ N(-0.5, 1) truncated to [-1, 1], side = LOW + (u + 1) / 2 * (HIGH - LOW)
    scale = (HIGH - LOW) / 2
    paper = stats.truncnorm((-1 + 0.5) / 1.0, (1 + 0.5) / 1.0, loc=LOW + scale * 0.5, scale=scale)
    assert ks_pvalue(sides, paper) > 0.01
    assert ks_pvalue(sides, stats.uniform(LOW, HIGH - LOW)) < 1e-6  # biased to small images
    assert np.median(sides) < (LOW + HIGH) / 2 - 20
    shifted = stats.truncnorm(0.5, 2.5, loc=LOW - scale * 0.5 + scale, scale=scale)  # mean +0.5 instead
    assert ks_pvalue(sides, shifted) < 1e-6


def test_uniform_sides_and_uniform_areas():
    sides = draw_side_lengths(N, (LOW, HIGH), "uniform", seed=1)
    assert ks_pvalue(sides, stats.uniform(LOW, HIGH - LOW)) > 0.01
    areas = draw_side_lengths(N, (LOW, HIGH), "uniform", on="area", seed=1) ** 2
    assert ks_pvalue(areas, stats.uniform(LOW**2, HIGH**2 - LOW**2)) > 0.01
    assert ks_pvalue(sides**2, stats.uniform(LOW**2, HIGH**2 - LOW**2)) < 1e-6


def test_draws_are_stateless_and_seeded():
    a = draw_side_lengths(50, seed=5)
    np.testing.assert_array_equal(a, draw_side_lengths(50, seed=5))
    np.testing.assert_array_equal(a[:20], draw_side_lengths(20, seed=5))
    assert not np.allclose(a, draw_side_lengths(50, seed=6))


def test_token_budget():
    np.testing.assert_array_equal(token_budget([64, 100, 384, 3], 16), [16, 39, 576, 1])
    assert int(token_budget(tf.constant(100.0, tf.float64), 16)) == 39


def raw_images():
    rng = np.random.default_rng(0)
    sizes = [(120, 90), (40, 200), (256, 256), (33, 47), (300, 100), (64, 64)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def image_dataset(images):
    return tf.data.Dataset.from_generator(
        lambda: ({"image": image, "label": np.int32(i)} for i, image in enumerate(images)),
        output_signature={"image": tf.TensorSpec([None, None, 3], tf.uint8), "label": tf.TensorSpec([], tf.int32)},
    )


def test_each_image_is_converted_at_its_own_drawn_budget_then_packs():
    images = raw_images()
    converter = NaFlexImageConverter(patch_size=8, max_num_patches=64)
    sampled = list(sample_resolutions(image_dataset(images), converter, side_range=(16, 64), seed=2)
                   .as_numpy_iterator())
    sides = draw_side_lengths(len(images), (16, 64), seed=2)
    budgets = token_budget(sides, 8)
    assert len(set(budgets.tolist())) > 2  # the draws differ per image
    for image, example, budget, i in zip(images, sampled, budgets, range(len(images))):
        assert example["label"] == i
        th, tw = target_size(*image.shape[:2], 8, int(budget))
        real = (th // 8) * (tw // 8)
        assert example["patches"].shape == (64, 192)
        assert example["patch_mask"].sum() == real <= budget
        at_budget = converter(image, max_num_patches=int(budget))
        np.testing.assert_allclose(example["patches"][:real], np.asarray(at_budget["patches"])[:real], atol=1e-6)
        np.testing.assert_array_equal(example["patch_coords"][:real], np.asarray(at_budget["patch_coords"])[:real])
        assert not example["patches"][real:].any()
    packed, packing = pack_dataset(
        sample_resolutions(image_dataset(images), converter, side_range=(16, 64), seed=2), 96, 4)
    sequences = list(packed.as_numpy_iterator())
    assert packing.images == len(images)
    assert sum(int((s["segment_ids"] > 0).sum()) for s in sequences) == sum(
        int(e["patch_mask"].sum()) for e in sampled)


def test_bad_arguments_are_refused():
    converter = NaFlexImageConverter(patch_size=16, max_num_patches=256)
    data = image_dataset(raw_images())
    with pytest.raises(ValueError, match="max_num_patches=256"):
        sample_resolutions(data, converter, side_range=(64, 384))  # 576 patches at 384 px
    with pytest.raises(ValueError, match="distribution must be one of"):
        sample_resolutions(data, converter, side_range=(64, 256), distribution="beta")
    with pytest.raises(ValueError, match="0 < low <= high"):
        sample_resolutions(data, converter, side_range=(256, 64))
    with pytest.raises(ValueError, match="on must be one of"):
        draw_side_lengths(3, on="volume")
    with pytest.raises(ValueError, match="'picture'"):
        sample_resolutions(data, converter, side_range=(64, 256), image_key="picture")
    with pytest.raises(ValueError, match="NaFlexImageConverter"):
        sample_resolutions(data, object(), side_range=(64, 256))
