"""SigLIP 2 NaFlex and NaViT packing in the shared ViT.

Reference numerics:
- position-embedding resize: big_vision `naflex_vit.py` resizes the learned grid with
  `jax.image.scale_and_translate(bilinear, antialias=True)`; compared directly.
- the whole model: a random `transformers.Siglip2Model` (every parameter perturbed),
  copied onto our NaFlex `SigLIPBackbone`. HF resizes position embeddings with
  torch's antialiased `F.interpolate`, which is wrong on CPU for grids one patch wide
  (`(h, 1)`, reference/peers.md section 7.1); for those rows HF's resize is
  computed on the transposed grid (exact) so the comparison stays meaningful.

Tolerances (float32, CPU): resize vs scale_and_translate ATOL 1e-6 (measured
<= 4.8e-7); vs HF ATOL 1e-5 on embeddings and logits (measured, all backends:
image <= 3e-7, logits <= 3e-6); packed vs alone ATOL 1e-5 (measured <= 1e-6).
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip.layers.vit import PositionEmbedding, VisionTransformer
from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder
from tests.helpers import naflex_batch

GRIDS = [(4, 4), (3, 5), (1, 12), (12, 1), (2, 9), (7, 7), (1, 1), (5, 2), (9, 3), (40, 1), (1, 70)]


@pytest.mark.parametrize("grid", GRIDS + [(16, 16), (64, 3), (100, 2)])
def test_position_resize_equals_big_vision_scale_and_translate(grid, rng):
    import jax

    table = rng.normal(size=(6, 5, 8)).astype("float32")
    layer = PositionEmbedding((6, 5))
    layer.build((None, None, 8))
    layer.embeddings.assign(table)
    h, w = grid
    expected = jax.image.scale_and_translate(
        table, (h, w, 8), (0, 1), np.array([h / 6, w / 5], "float32"), np.zeros(2, "float32"),
        method="bilinear", antialias=True,
    )
    expected = np.asarray(expected).reshape(h * w, 8)
    static = ops.convert_to_numpy(layer.grid((h, w)))
    np.testing.assert_allclose(static, expected, atol=1e-6)
    coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(1, h * w, 2)
    shapes = np.broadcast_to(np.array([h, w], "int32"), coords.shape)
    traced = ops.convert_to_numpy(layer.at(coords.astype("int32"), shapes))[0]
    np.testing.assert_allclose(traced, expected, atol=1e-6)


# -- HF Siglip2 parity ----------------------------------------------------------

SPEC = dict(
    vision=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_patches=16, patch_size=4),
    text=dict(vocab_size=60, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
              num_attention_heads=3, max_position_embeddings=6, projection_size=32),
)


def _hf_pair(seed=0):
    pytest.importorskip("transformers")
    from tests.hf_reference import build_hf_siglip, copy_hf_to_keras, keras_config_from_hf

    hf_model = build_hf_siglip(**SPEC, seed=seed, naflex=True)
    config = keras_config_from_hf(hf_model.config)
    backbone = SigLIPBackbone(
        SigLIPVisionEncoder(**config["vision_encoder"]), SigLIPTextEncoder(**config["text_encoder"])
    )
    copy_hf_to_keras(hf_model, backbone)
    return hf_model, backbone


def _fixed_interpolate(monkeypatch):
    """HF's resize with torch's (h, 1) antialias bug worked around by transposing."""
    import torch
    import torch.nn.functional as F
    from transformers.models.siglip2 import modeling_siglip2

    interpolate = F.interpolate

    def transposed_when_one_wide(x, size, **kwargs):
        if size[1] == 1 and size[0] != 1:
            return interpolate(x.transpose(-1, -2), size=(size[1], size[0]), **kwargs).transpose(-1, -2)
        return interpolate(x, size=size, **kwargs)

    monkeypatch.setattr(modeling_siglip2.F, "interpolate", transposed_when_one_wide)
    return torch


@pytest.mark.parametrize(
    "grids,num_patches",
    [
        ([(4, 4), (3, 5), (1, 12), (12, 1)], 16),
        ([(2, 9), (7, 7), (1, 1), (5, 2)], 64),
        ([(9, 3), (40, 1), (1, 70), (8, 16)], 128),  # grids beyond big_vision's 64x64 canvas too
    ],
)
def test_matches_hf_siglip2(grids, num_patches, monkeypatch):
    torch = _fixed_interpolate(monkeypatch)
    hf_model, backbone = _hf_pair()
    x = naflex_batch(grids, num_patches, 4 * 4 * 3)
    token_ids = np.random.default_rng(1).integers(2, 60, (len(grids), 6)).astype("int32")
    token_ids[:, -1] = 1
    with torch.no_grad():
        out = hf_model(
            input_ids=torch.from_numpy(token_ids).long(),
            pixel_values=torch.from_numpy(x["patches"]),
            pixel_attention_mask=torch.from_numpy(x["patch_mask"]),
            spatial_shapes=torch.tensor(grids),
        )
    ours = backbone.predict({**x, "token_ids": token_ids}, verbose=0)
    np.testing.assert_allclose(ours["image_embeddings"], out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours["text_embeddings"], out.text_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours["logits"], out.logits_per_image.numpy(), atol=1e-5)


def test_padding_content_does_not_change_outputs():
    _, backbone = _hf_pair()
    x = naflex_batch([(3, 5), (1, 12)], 32, 48)
    token_ids = np.ones((2, 6), "int32")
    a = backbone.predict({**x, "token_ids": token_ids}, verbose=0)["image_embeddings"]
    noisy = {**x, "patches": x["patches"] + (1 - x["patch_mask"][..., None]) * 5.0}
    noisy["patch_coords"] = np.where(x["patch_mask"][..., None] == 1, x["patch_coords"], 7)
    b = backbone.predict({**noisy, "token_ids": token_ids}, verbose=0)["image_embeddings"]
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.isfinite(a).all()


# -- packing -------------------------------------------------------------------

def _pack(examples, sequence_length, slots):
    """Pack NaFlex examples (one image each) in order into one sequence."""
    patch_dim = examples[0]["patches"].shape[-1]
    patches = np.zeros((sequence_length, patch_dim), "float32")
    coords = np.zeros((sequence_length, 2), "int32")
    segments = np.zeros((sequence_length,), "int32")
    grid_shape = np.zeros((slots, 2), "int32")
    image_mask = np.zeros((slots,), "int32")
    start = 0
    for s, ex in enumerate(examples):
        n = int(ex["patch_mask"].sum())
        patches[start:start + n] = ex["patches"][:n]
        coords[start:start + n] = ex["patch_coords"][:n]
        segments[start:start + n] = s + 1
        grid_shape[s] = ex["patch_coords"][:n].max(0) + 1
        image_mask[s] = 1
        start += n
    return {"patches": patches, "patch_coords": coords, "segment_ids": segments,
            "image_mask": image_mask, "grid_shape": grid_shape}


def _vit(pooling="map"):
    vit = VisionTransformer(4, 32, 2, 4, 48, grid_size=(4, 4), pooling=pooling)
    vit.build((None, None, None, 3))
    return vit


@pytest.mark.parametrize("pooling", ["map", "gap"])
def test_packed_images_embed_as_if_alone(pooling):
    keras.utils.set_random_seed(0)
    vit = _vit(pooling)
    grids = [(3, 5), (1, 7), (6, 2), (2, 2), (4, 4)]
    alone = naflex_batch(grids, 16, 48, seed=3)
    expected = ops.convert_to_numpy(vit(alone))
    singles = [{k: v[i] for k, v in alone.items()} for i in range(len(grids))]
    packed = [_pack(singles[:3], 40, 4), _pack(singles[3:], 40, 4)]
    batch = {k: np.stack([p[k] for p in packed]) for k in packed[0]}
    got = ops.convert_to_numpy(vit(batch))  # (2, 4, W)
    assert got.shape == (2, 4, 32)
    np.testing.assert_allclose(got[0, :3], expected[:3], atol=1e-5)
    np.testing.assert_allclose(got[1, :2], expected[3:], atol=1e-5)
    np.testing.assert_array_equal(got[0, 3], 0)  # empty slots are zeros
    np.testing.assert_array_equal(got[1, 2:], 0)


def test_grid_shape_keeps_dropped_tokens_positions():
    """With tokens dropped, the image grid comes from `grid_shape`, not the coordinates."""
    keras.utils.set_random_seed(0)
    vit = _vit("none")
    full = naflex_batch([(4, 6)], 24, 48, seed=5)
    tokens = ops.convert_to_numpy(vit.position_embedding.at(full["patch_coords"], np.full((1, 24, 2), [4, 6], "int32")))
    keep = np.array([0, 3, 7, 8, 12, 13])  # the last row and column are dropped
    one = {k: v[0] for k, v in full.items()}
    single = {k: (v[keep] if k != "patch_mask" else v[keep]) for k, v in one.items()}
    packed = _pack([single], 8, 1)
    packed["grid_shape"][0] = (4, 6)
    x = vit.embedding(packed["patches"][None])
    got = vit.position_embedding(x, patch_coords=packed["patch_coords"][None],
                                 grid_shapes=np.broadcast_to(packed["grid_shape"][0], (1, 8, 2)))
    np.testing.assert_allclose(ops.convert_to_numpy(got - x)[0, :6], tokens[0, keep], atol=1e-6)


def test_bad_naflex_inputs_are_named():
    vit = _vit()
    x = naflex_batch([(2, 2)], 8, 48)
    with pytest.raises(ValueError, match="patches of shape"):
        vit({**x, "patches": x["patches"][..., :40]})
    with pytest.raises(ValueError, match="patch_mask"):
        vit({"patches": x["patches"], "patch_coords": x["patch_coords"]})


def test_naflex_backbone_fits_and_saves(tmp_path):
    keras.utils.set_random_seed(0)
    vision = SigLIPVisionEncoder(4, 32, 1, 2, 48, image_size=16, input_format="naflex")
    text = SigLIPTextEncoder(60, 32, 1, 2, 48, sequence_length=6)
    backbone = SigLIPBackbone(vision, text)
    x = naflex_batch([(4, 4), (2, 7), (1, 9), (5, 3)], 20, 48)
    x["token_ids"] = np.random.default_rng(0).integers(2, 60, (4, 6)).astype("int32")
    backbone.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = backbone.fit(x, epochs=3, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    path = str(tmp_path / "preset")
    backbone.save_to_preset(path)
    restored = SigLIPBackbone.from_preset(path)
    assert restored.vision_encoder.input_format == "naflex"
    np.testing.assert_allclose(
        restored.predict(x, verbose=0)["logits"], backbone.predict(x, verbose=0)["logits"], atol=1e-6
    )


def test_packed_backbone_fits_with_empty_slots():
    keras.utils.set_random_seed(0)
    vision = SigLIPVisionEncoder(4, 32, 1, 2, 48, image_size=16, input_format="packed")
    text = SigLIPTextEncoder(60, 32, 1, 2, 48, sequence_length=6)
    backbone = SigLIPBackbone(vision, text)
    singles = [{k: v[0] for k, v in naflex_batch([g], 16, 48, seed=i).items()}
               for i, g in enumerate([(3, 5), (1, 7), (2, 2), (4, 4), (2, 3)])]
    packed = [_pack(singles[:3], 32, 3), _pack(singles[3:], 32, 3)]
    x = {k: np.stack([p[k] for p in packed]) for k in packed[0]}
    x["token_ids"] = np.random.default_rng(0).integers(2, 60, (2, 3, 6)).astype("int32")
    out = backbone.predict(x, verbose=0)
    assert out["logits"].shape == (6, 6)
    np.testing.assert_array_equal(out["image_mask"], [1, 1, 1, 1, 1, 0])
    # The loss ignores the empty slot: changing its text changes nothing.
    backbone.compile(optimizer=keras.optimizers.Adam(1e-3))
    y_pred = backbone(x)
    loss = float(ops.convert_to_numpy(backbone.compute_loss(x=x, y_pred=y_pred)))
    other = {**x, "token_ids": x["token_ids"].copy()}
    other["token_ids"][1, 2] = 5
    loss_other = float(ops.convert_to_numpy(backbone.compute_loss(x=other, y_pred=backbone(other))))
    assert loss == pytest.approx(loss_other, abs=1e-6)
    # ... and equals the plain loss over the five real images.
    real = np.array([0, 1, 2, 3, 4])
    logits = ops.convert_to_numpy(y_pred["logits"])[np.ix_(real, real)]
    labels = 2 * np.eye(5) - 1
    expected = np.mean(np.sum(np.logaddexp(0, -labels * logits), axis=1))
    assert loss == pytest.approx(expected, rel=1e-5)
    history = backbone.fit(x, epochs=2, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="torch runs eagerly; nothing to trace")
def test_compiles_once_for_a_fixed_sequence_length(monkeypatch):
    """Batches of other aspect ratios at the same N reuse the compiled predict step."""
    keras.utils.set_random_seed(0)
    vision = SigLIPVisionEncoder(4, 32, 1, 2, 48, image_size=16, input_format="naflex")
    traces = []
    call = VisionTransformer._call_patches
    monkeypatch.setattr(VisionTransformer, "_call_patches", lambda self, x, *args: traces.append(1) or call(self, x, *args))
    vision.compile(jit_compile=True)
    for seed, grids in enumerate([[(4, 4), (2, 7)], [(1, 20), (20, 1)], [(3, 3), (5, 4)]]):
        out = vision.predict_on_batch(naflex_batch(grids, 20, 48, seed=seed))
        assert np.isfinite(out).all()
    assert len(traces) == 1


def _raw_images(count, seed):
    rng = np.random.default_rng(seed)
    sizes = [(int(rng.integers(4, 40)), int(rng.integers(4, 40))) for _ in range(count)]
    return [rng.integers(0, 256, (h, w, 3)).astype("uint8") for h, w in sizes]


def test_preprocessor_with_naflex_converter(tmp_path, t5_proto):
    from keras_siglip.layers import NaFlexImageConverter
    from keras_siglip.models import SigLIPPreprocessor, SigLIPTokenizer

    preprocessor = SigLIPPreprocessor(
        SigLIPTokenizer(proto=t5_proto), NaFlexImageConverter(4, 24), sequence_length=6
    )
    images = _raw_images(3, 0)
    x = preprocessor({"images": images, "texts": ["a red circle", "two blue squares", ""]})
    assert set(x) == {"patches", "patch_mask", "patch_coords", "token_ids"}
    assert tuple(x["patches"].shape) == (3, 24, 48) and tuple(x["token_ids"].shape) == (3, 6)
    backbone = SigLIPBackbone(
        SigLIPVisionEncoder(4, 32, 1, 2, 48, image_size=16, input_format="naflex"),
        SigLIPTextEncoder(preprocessor.tokenizer.vocabulary_size(), 32, 1, 2, 48, sequence_length=6),
    )
    backbone.save_to_preset(str(tmp_path))
    preprocessor.save_to_preset(str(tmp_path))
    restored = SigLIPPreprocessor.from_preset(str(tmp_path))
    assert np.isfinite(SigLIPBackbone.from_preset(str(tmp_path)).predict(x, verbose=0)["logits"]).all()
    assert isinstance(restored.image_converter, NaFlexImageConverter)
    again = restored({"images": images, "texts": ["a red circle", "two blue squares", ""]})
    for key in x:
        np.testing.assert_array_equal(ops.convert_to_numpy(again[key]), ops.convert_to_numpy(x[key]))


def test_packed_training_from_raw_images_without_retracing(monkeypatch):
    """Raw images -> NaFlex converter -> NaViT packer (token dropping) -> `fit`."""
    import tensorflow as tf

    from keras_siglip.data import pack_dataset
    from keras_siglip.layers import NaFlexImageConverter

    converter = NaFlexImageConverter(4, 32)
    images = _raw_images(24, 1)
    token_ids = np.random.default_rng(2).integers(2, 60, (24, 6)).astype("int32")
    raw = tf.data.Dataset.from_generator(
        lambda: ({"image": im, "token_ids": t} for im, t in zip(images, token_ids)),
        output_signature={"image": tf.TensorSpec((None, None, 3), tf.uint8),
                          "token_ids": tf.TensorSpec((6,), tf.int32)},
    )
    singles = raw.map(lambda e: {**converter(e["image"]), "token_ids": e["token_ids"]})
    packed, stats = pack_dataset(singles, 48, 4, buffer_size=4, drop_rate=(0.0, 0.5), seed=0)
    batches = packed.batch(2, drop_remainder=True)

    keras.utils.set_random_seed(0)
    vision = SigLIPVisionEncoder(4, 32, 1, 2, 48, image_size=16, input_format="packed")
    backbone = SigLIPBackbone(vision, SigLIPTextEncoder(60, 32, 1, 2, 48, sequence_length=6))
    traces = []
    call = VisionTransformer._call_patches
    monkeypatch.setattr(VisionTransformer, "_call_patches", lambda self, x, *args: traces.append(1) or call(self, x, *args))
    backbone.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = backbone.fit(batches, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    # Two epochs of 24 images (Keras may also peek at a first batch).
    assert stats.images >= 48 and stats.real_fraction > stats.baseline_real_fraction
    if keras.backend.backend() != "torch":  # compiled once: every batch has the same shapes
        assert len(traces) <= 2  # the functional build's symbolic call, then one trace


@pytest.mark.parametrize("size", [(24, 36), (36, 8), (16, 16), (9, 50)])
def test_fixed_resolution_model_runs_at_any_size_like_naflex(size):
    """A fixed-res tower (4x4 grid) on images of another size equals the NaFlex path
    on the same image's patches: one position resize for both."""
    from keras_siglip.layers import patchify

    keras.utils.set_random_seed(0)
    fixed = SigLIPVisionEncoder(4, 32, 2, 4, 48, image_size=16)
    naflex = SigLIPVisionEncoder(4, 32, 2, 4, 48, image_size=16, input_format="naflex")
    naflex.set_weights(fixed.get_weights())
    images = np.random.default_rng(0).uniform(-1, 1, (2, *size, 3)).astype("float32")
    patches, (h, w) = patchify(images, 4)
    coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(1, h * w, 2)
    x = {"patches": ops.convert_to_numpy(patches), "patch_coords": np.repeat(coords, 2, 0).astype("int32"),
         "patch_mask": np.ones((2, h * w), "int32")}
    np.testing.assert_allclose(
        ops.convert_to_numpy(fixed(images)), ops.convert_to_numpy(naflex(x)), atol=1e-5
    )
