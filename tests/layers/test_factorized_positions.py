"""NaViT's factorized position embeddings (Dehghani et al. 2023, sec. 2.1):
`pos(y, x) = φ_y(y) + φ_x(x)`, absolute (tables indexed by row and column) or
fractional (tables over [0, 1] read at the patch centre's fraction of its
image's side).

References: numpy indexing for the absolute form; for the fractional form each
1-D table resized by `jax.image.scale_and_translate(bilinear, antialias=True)`
(big_vision's resize, as for the 2-D grid in test_naflex.py) and then indexed.
Tolerance 1e-6 (float32 sums of a few products).
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.layers.vit import PositionEmbedding, VisionTransformer
from keras_siglip.models import SigLIPVisionEncoder
from tests.helpers import naflex_batch, numpy

GRIDS = [(3, 4), (1, 6), (5, 1), (5, 6), (2, 2)]
TABLE = (5, 6)  # rows, columns
WIDTH = 8


def layer_with_tables(kind, rng):
    layer = PositionEmbedding(TABLE, kind=kind)
    layer.build((None, None, WIDTH))
    rows = rng.normal(size=(TABLE[0], WIDTH)).astype("float32")
    cols = rng.normal(size=(TABLE[1], WIDTH)).astype("float32")
    layer.embeddings_y.assign(rows)
    layer.embeddings_x.assign(cols)
    return layer, rows, cols


def coords_of(h, w):
    return np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(h * w, 2)


def resized(table, size):
    """A `(n, W)` table resized to `(size, W)` as big_vision resizes position grids."""
    import jax

    n = table.shape[0]
    out = jax.image.scale_and_translate(
        table, (size, table.shape[1]), (0,), np.array([size / n], "float32"), np.zeros(1, "float32"),
        method="bilinear", antialias=True,
    )
    return np.asarray(out)


def expected(kind, rows, cols, h, w):
    if kind == "factorized":
        row_table, col_table = rows[:h], cols[:w]
    else:
        row_table, col_table = resized(rows, h), resized(cols, w)
    y, x = coords_of(h, w).T
    return row_table[y] + col_table[x]


@pytest.mark.parametrize("kind", ["factorized", "factorized_fractional"])
@pytest.mark.parametrize("grid", GRIDS)
def test_grid_and_coordinates_equal_the_numpy_sum_of_row_and_column_tables(kind, grid, rng):
    layer, rows, cols = layer_with_tables(kind, rng)
    h, w = grid
    want = expected(kind, rows, cols, h, w)
    np.testing.assert_allclose(numpy(layer.grid(grid)), want, atol=1e-6)
    coords = coords_of(h, w)[None].astype("int32")
    shapes = np.broadcast_to(np.array(grid, "int32"), coords.shape)
    np.testing.assert_allclose(numpy(layer.at(coords, shapes))[0], want, atol=1e-6)


def test_packed_images_of_different_grids_each_get_their_own_positions(rng):
    """One sequence holding a 2x3 and a 4x1 image plus padding: every token's
    embedding is its own image's (fractional: depends on that image's grid)."""
    for kind in ("factorized", "factorized_fractional"):
        layer, rows, cols = layer_with_tables(kind, rng)
        grids = [(2, 3), (4, 1)]
        coords = np.concatenate([coords_of(*g) for g in grids] + [np.zeros((2, 2), int)])[None].astype("int32")
        shapes = np.concatenate([np.tile(g, (g[0] * g[1], 1)) for g in grids] + [np.ones((2, 2), int)])
        got = numpy(layer.at(coords, shapes[None].astype("int32")))[0]
        want = np.concatenate([expected(kind, rows, cols, *g) for g in grids])
        np.testing.assert_allclose(got[:10], want, atol=1e-6)


def test_fractional_positions_depend_on_the_fraction_not_the_index(rng):
    """Column 3 of a 1x7 grid and column 10 of a 1x21 grid have their centres at
    the same fraction (1/2) of the side: equal fractional embeddings (upsampling,
    so both read the table with the same filter), unlike absolute ones."""
    layer, _, _ = layer_with_tables("factorized_fractional", rng)
    seven, twenty_one = numpy(layer.grid((1, 7))), numpy(layer.grid((1, 21)))
    np.testing.assert_allclose(seven[3], twenty_one[10], atol=1e-6)
    assert not np.allclose(seven[2], twenty_one[10], atol=1e-3)
    absolute, _, _ = layer_with_tables("factorized", rng)
    assert not np.allclose(numpy(absolute.grid((1, 3)))[1], numpy(absolute.grid((1, 5)))[2], atol=1e-3)


def test_absolute_tables_refuse_a_larger_static_grid(rng):
    layer, _, _ = layer_with_tables("factorized", rng)
    with pytest.raises(ValueError, match="exceeds the factorized position tables"):
        layer.grid((6, 2))
    fractional, _, _ = layer_with_tables("factorized_fractional", rng)
    assert numpy(fractional.grid((12, 9))).shape == (108, WIDTH)  # any grid


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="must be one of"):
        PositionEmbedding((2, 2), kind="rope")
    with pytest.raises(ValueError, match="must be one of"):
        VisionTransformer(4, 8, 1, 2, 16, grid_size=(2, 2), position_embedding="sincos")


@pytest.mark.parametrize("kind", ["factorized", "factorized_fractional"])
def test_vision_encoder_images_naflex_and_packed_agree_and_round_trip(kind, rng, tmp_path):
    """A NaViT-style tower: whole images, NaFlex patches and a packed sequence
    give one embedding per image; the config and `.keras` file keep the kind."""
    keras.utils.set_random_seed(0)
    kwargs = dict(patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32, image_size=24,
                  position_embedding=kind)
    images_model = SigLIPVisionEncoder(**kwargs)
    naflex_model = SigLIPVisionEncoder(**kwargs, input_format="naflex")
    naflex_model.set_weights(images_model.get_weights())
    assert {w.path.split("/")[-1] for w in images_model.weights} >= {"embeddings_y", "embeddings_x"}
    image = rng.uniform(-1, 1, (1, 12, 20, 3)).astype("float32")  # a 3x5 grid
    from keras_siglip.layers.vit import patchify

    patches, grid = patchify(image, 4)
    batch = {"patches": numpy(patches), "patch_coords": coords_of(*grid)[None].astype("int32"),
             "patch_mask": np.ones((1, 15), "int32")}
    np.testing.assert_allclose(numpy(naflex_model(batch)), numpy(images_model(image)), atol=1e-5)

    path = tmp_path / "tower.keras"
    images_model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config()["position_embedding"] == kind
    np.testing.assert_allclose(numpy(loaded(image)), numpy(images_model(image)), atol=1e-6)


def test_learned_2d_stays_the_default_and_its_weight_name():
    vit = VisionTransformer(4, 8, 1, 2, 16, grid_size=(2, 3))
    vit.build((None, 8, 12, 3))
    names = [w.path for w in vit.weights if "position" in w.path]
    assert len(names) == 1 and names[0].endswith("position_embedding/embeddings")
    assert vit.get_config()["position_embedding"] == "learned_2d"


def test_naflex_batch_helper_grids_run_through_a_factorized_tower(rng):
    """Padding tokens (coordinates (0, 0)) do not disturb the real images: each
    image of a padded NaFlex batch equals it alone."""
    keras.utils.set_random_seed(1)
    model = SigLIPVisionEncoder(patch_size=2, width=16, depth=1, num_heads=2, mlp_dim=32, image_size=12,
                                position_embedding="factorized", input_format="naflex")
    batch = naflex_batch([(2, 3), (4, 4)], 16, 12, seed=3)
    together = numpy(model(batch))
    for i in range(2):
        alone = numpy(model({k: v[i:i + 1] for k, v in batch.items()}))
        np.testing.assert_allclose(together[i:i + 1], alone, atol=1e-5)
    assert not np.allclose(together[0], together[1])
    assert ops.shape(model(batch)) == (2, 16)
