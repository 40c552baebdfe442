"""big_vision `.npz` checkpoints: reading, architecture inference, errors, round trips.

The parity tests write the big_vision param tree themselves, from a random, fully
perturbed HF `SiglipModel` / `Siglip2Model` (tests/hf_reference.py), with the key
names and layouts of reference/big_vision.md section 8 (the inverse of HF's
`convert_siglip_to_hf.py` / `convert_siglip2_to_hf.py`), not with
`write_big_vision`. `read_big_vision` + `load_into` must then reproduce HF's
outputs. Round trips through `write_big_vision` check every weight exactly.

Tolerance: ATOL 1e-5 on L2-normalised embeddings and on logits (exp(t) = 10,
b = -10). Measured max |diff| over the five parity cases (CPU, float32; image /
text embeddings / logits): jax 2.2e-7 / 3.9e-7 / 1.9e-6, tensorflow 2.4e-7 /
3.9e-7 / 1.9e-6, torch 1.8e-7 / 0 / 9.5e-7.
"""

import copy
import pathlib
import re

import keras
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from keras_siglip.convert.big_vision import read_big_vision, write_big_vision  # noqa: E402
from keras_siglip.convert.common import CheckpointMismatch, build_backbone, load_into  # noqa: E402
from keras_siglip.presets import PUBLISHED_PRESETS  # noqa: E402
from tests.hf_reference import build_hf_siglip, keras_config_from_hf  # noqa: E402

ATOL = 1e-5
EOS_ID = 1

# Text width 48 != image width 32 (the text head maps 48 -> 32); 4 and 3 heads.
SIGLIP = dict(
    vision=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                image_size=24, patch_size=4),
    text=dict(vocab_size=60, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
              num_attention_heads=3, max_position_embeddings=6),
)
# A 4x4 learned grid of 4x4 patches.
NAFLEX = dict(
    vision=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_patches=16, patch_size=4),
    text=SIGLIP["text"],
)
# mSigLIP So400m/16-i18n style: no text head, so the text width is the image width.
I18N = dict(vision=SIGLIP["vision"], text={**SIGLIP["text"], "hidden_size": 32, "num_attention_heads": 2})


# -- big_vision trees written from HF models (independent of write_big_vision) ---


def hf_to_big_vision(model, text_head=True):
    """The big_vision param tree (flat `/` keys, no `params/`) of an HF SigLIP.

    SigLIP 1 layout: per-block `encoderblock_{i}`, conv patch kernel
    `(P, P, C, W)`, flat positions `(1, N, W)`; an HF `Siglip2Model` (NaFlex)
    gives the Dense patch kernel `(P*P*C, W)` and the `(G, G, W)` grid.
    """
    p = {name: t.detach().numpy().astype("float32") for name, t in model.named_parameters()}
    tree = {}

    def norm(bv, hf):
        tree[f"{bv}/scale"], tree[f"{bv}/bias"] = p[f"{hf}.weight"], p[f"{hf}.bias"]

    def dense(bv, hf):  # torch Linear (out, in) -> Flax Dense (in, out)
        tree[f"{bv}/kernel"], tree[f"{bv}/bias"] = p[f"{hf}.weight"].T, p[f"{hf}.bias"]

    def attention(bv, qkv_weights, qkv_biases, out, heads):  # Flax DenseGeneral layouts
        for name, weight, bias in zip(("query", "key", "value"), qkv_weights, qkv_biases):
            tree[f"{bv}/{name}/kernel"] = weight.T.reshape(weight.shape[1], heads, -1)  # (W, H, hd)
            tree[f"{bv}/{name}/bias"] = bias.reshape(heads, -1)  # (H, hd)
        weight = p[f"{out}.weight"]
        tree[f"{bv}/out/kernel"] = weight.T.reshape(heads, -1, weight.shape[0])  # (H, hd, W)
        tree[f"{bv}/out/bias"] = p[f"{out}.bias"]

    def encoder(bv, hf, config):
        heads = config.num_attention_heads
        for i in range(config.num_hidden_layers):
            b, h = f"{bv}/encoderblock_{i}", f"{hf}.layers.{i}"
            norm(f"{b}/LayerNorm_0", f"{h}.layer_norm1")
            attention(
                f"{b}/MultiHeadDotProductAttention_0",
                [p[f"{h}.self_attn.{x}_proj.weight"] for x in "qkv"],
                [p[f"{h}.self_attn.{x}_proj.bias"] for x in "qkv"],
                f"{h}.self_attn.out_proj", heads,
            )
            norm(f"{b}/LayerNorm_1", f"{h}.layer_norm2")
            dense(f"{b}/MlpBlock_0/Dense_0", f"{h}.mlp.fc1")
            dense(f"{b}/MlpBlock_0/Dense_1", f"{h}.mlp.fc2")

    vision, text = model.config.vision_config, model.config.text_config
    patch = p["vision_model.embeddings.patch_embedding.weight"]
    positions = p["vision_model.embeddings.position_embedding.weight"]  # (N, W)
    if patch.ndim == 4:  # Conv2d (W, C, P, P) -> HWIO (P, P, C, W)
        tree["img/embedding/kernel"] = patch.transpose(2, 3, 1, 0)
        tree["img/pos_embedding"] = positions[None]
    else:  # NaFlex: Linear (W, P*P*C) -> Dense (P*P*C, W); positions as the (G, G, W) grid
        grid = int(round(np.sqrt(positions.shape[0])))
        tree["img/embedding/kernel"] = patch.T
        tree["img/pos_embedding"] = positions.reshape(grid, grid, -1)
    tree["img/embedding/bias"] = p["vision_model.embeddings.patch_embedding.bias"]
    encoder("img/Transformer", "vision_model.encoder", vision)
    norm("img/Transformer/encoder_norm", "vision_model.post_layernorm")
    tree["img/MAPHead_0/probe"] = p["vision_model.head.probe"]
    attention(
        "img/MAPHead_0/MultiHeadDotProductAttention_0",
        np.split(p["vision_model.head.attention.in_proj_weight"], 3),
        np.split(p["vision_model.head.attention.in_proj_bias"], 3),
        "vision_model.head.attention.out_proj", vision.num_attention_heads,
    )
    norm("img/MAPHead_0/LayerNorm_0", "vision_model.head.layernorm")
    dense("img/MAPHead_0/MlpBlock_0/Dense_0", "vision_model.head.mlp.fc1")
    dense("img/MAPHead_0/MlpBlock_0/Dense_1", "vision_model.head.mlp.fc2")

    tree["txt/Embed_0/embedding"] = p["text_model.embeddings.token_embedding.weight"]
    tree["txt/pos_embedding"] = p["text_model.embeddings.position_embedding.weight"][None]
    encoder("txt/Encoder_0", "text_model.encoder", text)
    norm("txt/Encoder_0/encoder_norm", "text_model.final_layer_norm")
    if text_head:
        dense("txt/head", "text_model.head")
    tree["t"], tree["b"] = p["logit_scale"], p["logit_bias"]
    return tree


def scanned(tree):
    """SigLIP 2's scan layout: each block leaf stacked under `encoderblock` (depth first)."""
    out, stacks = {}, {}
    for key, value in tree.items():
        match = re.fullmatch(r"(.+)/encoderblock_(\d+)/(.+)", key)
        if match:
            stacks.setdefault(f"{match[1]}/encoderblock/{match[3]}", {})[int(match[2])] = value
        else:
            out[key] = value
    for key, blocks in stacks.items():
        out[key] = np.stack([blocks[i] for i in range(len(blocks))])
    return out


def save(tree, path, prefix="params/"):
    np.savez(path, **{prefix + key: value for key, value in tree.items()})
    return str(path)


# -- parity with HF ----------------------------------------------------------------


def _inputs(hf_model, naflex, seed=0):
    """The same batch for HF (torch kwargs) and for our backbone (numpy dict)."""
    rng = np.random.default_rng(seed)
    vision, text = hf_model.config.vision_config, hf_model.config.text_config
    token_ids = rng.integers(2, text.vocab_size, (3, text.max_position_embeddings)).astype("int32")
    token_ids[:, -1] = EOS_ID
    theirs = {"input_ids": torch.from_numpy(token_ids).long()}
    if naflex:
        grids, length, size = [(4, 4), (3, 5), (2, 7)], 16, vision.patch_size ** 2 * 3
        patches = np.zeros((3, length, size), "float32")
        coords = np.zeros((3, length, 2), "int32")
        mask = np.zeros((3, length), "int32")
        for i, (h, w) in enumerate(grids):
            patches[i, : h * w] = rng.uniform(-1, 1, (h * w, size))
            coords[i, : h * w] = np.stack(np.meshgrid(range(h), range(w), indexing="ij"), -1).reshape(-1, 2)
            mask[i, : h * w] = 1
        ours = {"patches": patches, "patch_coords": coords, "patch_mask": mask}
        theirs.update(pixel_values=torch.from_numpy(patches), pixel_attention_mask=torch.from_numpy(mask),
                      spatial_shapes=torch.tensor(grids))
    else:
        images = rng.uniform(-1, 1, (3, vision.image_size, vision.image_size, 3)).astype("float32")
        ours = {"images": images}
        theirs["pixel_values"] = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    return theirs, {**ours, "token_ids": token_ids}


def check_against_hf(hf_model, path, naflex=False):
    """Read `path`, load it into a fresh backbone and compare with HF's outputs."""
    checkpoint = read_big_vision(path)
    backbone = build_backbone(checkpoint.config)
    load_into(backbone, checkpoint, progress=False)
    theirs, ours = _inputs(hf_model, naflex)
    with torch.no_grad():
        expected = hf_model(**theirs)
    got = backbone.predict(ours, verbose=0)
    for name, reference in (("image_embeddings", expected.image_embeds), ("text_embeddings", expected.text_embeds),
                            ("logits", expected.logits_per_image)):
        np.testing.assert_allclose(got[name], reference.numpy(), atol=ATOL, err_msg=name)
    return checkpoint


def assert_config_is(checkpoint, hf_model, **text_overrides):
    """The inferred architecture is the HF model's (hf_reference's mapping)."""
    expected = keras_config_from_hf(hf_model.config)
    expected["text_encoder"].update(text_overrides)
    for tower, kwargs in expected.items():
        assert {k: checkpoint.config[tower].get(k) for k in kwargs} == kwargs, tower
    assert checkpoint.config["vision_encoder"]["pooling"] == "map"
    assert checkpoint.config["text_encoder"]["pooling"] == "last"
    assert checkpoint.tokenizer is None


def test_siglip_per_block_layout_matches_hf(tmp_path):
    hf_model = build_hf_siglip(**SIGLIP, seed=0)
    tree = {f"params/{k}": v for k, v in hf_to_big_vision(hf_model).items()}
    tree["opt/state/img/embedding/kernel"] = np.zeros(3, "float32")  # a training checkpoint's optimizer: ignored
    path = str(tmp_path / "siglip.npz")
    np.savez(path, **tree)
    checkpoint = check_against_hf(hf_model, path)
    assert_config_is(checkpoint, hf_model)
    assert checkpoint.config["vision_encoder"]["num_classes"] is None
    assert len(list(read_big_vision(path, progress=True).tensors())) == checkpoint.num_tensors
    assert checkpoint.image_converter == (
        "SigLIPImageConverter", {"image_size": (24, 24), "interpolation": "bilinear", "antialias": False}
    )
    assert checkpoint.num_tensors == len(build_backbone(checkpoint.config).weights)


def test_siglip2_scanned_layout_without_params_prefix_matches_hf(tmp_path):
    hf_model = build_hf_siglip(**SIGLIP, seed=1)
    tree = scanned(hf_to_big_vision(hf_model))
    assert tree["txt/Encoder_0/encoderblock/MlpBlock_0/Dense_0/kernel"].shape == (3, 48, 80)
    checkpoint = check_against_hf(hf_model, save(tree, tmp_path / "siglip2.npz", prefix=""))
    assert_config_is(checkpoint, hf_model)


def test_naflex_matches_hf_siglip2(tmp_path):
    hf_model = build_hf_siglip(**NAFLEX, seed=2, naflex=True)
    tree = scanned(hf_to_big_vision(hf_model))
    assert tree["img/embedding/kernel"].shape == (48, 32) and tree["img/pos_embedding"].shape == (4, 4, 32)
    checkpoint = check_against_hf(hf_model, save(tree, tmp_path / "naflex.npz"), naflex=True)
    assert_config_is(checkpoint, hf_model)
    assert checkpoint.config["vision_encoder"]["input_format"] == "naflex"
    assert checkpoint.config["vision_encoder"]["image_size"] == 16  # G * P
    assert checkpoint.image_converter == ("NaFlexImageConverter", {"patch_size": 4, "max_num_patches": 256})


def test_bfloat16_void_leaves_match_hf_rounded_to_bfloat16(tmp_path):
    hf_model = build_hf_siglip(**SIGLIP, seed=3)
    with torch.no_grad():
        for param in hf_model.parameters():
            param.copy_(param.to(torch.bfloat16).float())
    # big_vision stores bfloat16 as numpy void of itemsize 2.
    tree = {k: v.astype(ml_dtypes.bfloat16).view("V2") for k, v in scanned(hf_to_big_vision(hf_model)).items()}
    path = save(tree, tmp_path / "bf16.npz")
    assert np.load(path)["params/img/embedding/kernel"].dtype == np.dtype("V2")
    _, first = next(iter(read_big_vision(path).tensors()))
    assert first.dtype == ml_dtypes.bfloat16
    check_against_hf(hf_model, path)


def test_i18n_without_text_head_matches_hf_with_an_identity_head(tmp_path):
    hf_model = build_hf_siglip(**I18N, seed=4)
    with torch.no_grad():  # HF always has a text head: make it the identity, then leave it out
        hf_model.text_model.head.weight.copy_(torch.eye(32))
        hf_model.text_model.head.bias.zero_()
    path = save(hf_to_big_vision(hf_model, text_head=False), tmp_path / "i18n.npz")
    checkpoint = check_against_hf(hf_model, path)
    assert_config_is(checkpoint, hf_model, num_classes=None)


# -- configs -----------------------------------------------------------------------


@pytest.fixture
def siglip_npz(tmp_path):
    return save(hf_to_big_vision(build_hf_siglip(**SIGLIP, seed=5)), tmp_path / "siglip.npz")


def test_given_config_overrides_and_validates(siglip_npz):
    inferred = read_big_vision(siglip_npz).config
    given = copy.deepcopy(inferred)
    given["vision_encoder"]["image_size"] = 27  # the same 6x6 grid of 4 px patches
    checkpoint = read_big_vision(siglip_npz, config={"config": given})  # a whole card works too
    assert checkpoint.config == given
    assert checkpoint.image_converter[1]["image_size"] == (27, 27)

    wrong = copy.deepcopy(inferred)
    wrong["vision_encoder"].update(width=64, depth=3, pooling="gap")
    wrong["text_encoder"].update(sequence_length=8, num_classes=None)
    with pytest.raises(CheckpointMismatch) as error:
        read_big_vision(siglip_npz, config=wrong)
    message = str(error.value)
    assert siglip_npz in message
    for line in (
        "vision_encoder.width: checkpoint 32 vs config 64",
        "vision_encoder.depth: checkpoint 2 vs config 3",
        "vision_encoder.map_head: checkpoint True vs config False",
        "text_encoder.sequence_length: checkpoint 6 vs config 8",
        "text_encoder.num_classes: checkpoint 32 vs config None",
    ):
        assert line in message
    assert "num_heads" not in message and "vocabulary_size" not in message

    with pytest.raises(CheckpointMismatch, match="vision_encoder.width: checkpoint 32 vs config 768"):
        read_big_vision(siglip_npz, config="siglip_base_patch16_224")
    with pytest.raises(ValueError, match="Unknown published preset 'siglip_nope'"):
        read_big_vision(siglip_npz, config="siglip_nope")


def test_published_image_size_is_taken_when_patches_do_not_cover_it(siglip_npz, monkeypatch):
    """Like So400m/14 at 384 px (27x27 patches cover 378 px): shapes matching one
    published card take its image size."""
    assert read_big_vision(siglip_npz).config["vision_encoder"]["image_size"] == 24
    card = copy.deepcopy(read_big_vision(siglip_npz).config)
    card["vision_encoder"]["image_size"] = 26
    monkeypatch.setitem(PUBLISHED_PRESETS, "tiny_patch4_26", {"config": card})
    checkpoint = read_big_vision(siglip_npz)
    assert checkpoint.config["vision_encoder"]["image_size"] == 26
    assert "tiny_patch4_26" in checkpoint.source


# -- errors ------------------------------------------------------------------------


def test_unreadable_files_fail_naming_the_file_and_problem(siglip_npz, tmp_path):
    data = pathlib.Path(siglip_npz).read_bytes()
    cases = {
        "truncated.npz": (data[: len(data) // 2], "truncated or corrupt zip archive"),
        "text.npz": (b"not a checkpoint\n", r"not an \.npz \(zip\) archive"),
        "empty.npz": (b"", r"not an \.npz \(zip\) archive"),
    }
    for name, (content, problem) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=problem) as error:
            read_big_vision(path)
        assert str(path) in str(error.value)

    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"single \.npy array"):
        read_big_vision(tmp_path / "single.npy")

    np.savez(tmp_path / "pickled.npz", **{"params/img/x": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="'params/img/x' is a pickled Python object array.*allow_pickle=False"):
        read_big_vision(tmp_path / "pickled.npz")

    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="holds no img/ params.*Keys found: weights"):
        read_big_vision(tmp_path / "other.npz")

    with pytest.raises(FileNotFoundError):
        read_big_vision(tmp_path / "absent.npz")


@pytest.mark.parametrize("key", ["params/img/embedding/bias", "params/txt/Embed_0/embedding"])
def test_corrupt_array_fails_naming_it(key, siglip_npz, tmp_path):
    """A small leaf is checked with its header (read at once); a large one when loaded."""
    array = np.load(siglip_npz)[key]
    data = pathlib.Path(siglip_npz).read_bytes()
    start = data.index(array.tobytes())
    path = tmp_path / "corrupt.npz"
    path.write_bytes(data[:start] + (array + 1).tobytes() + data[start + array.nbytes:])  # CRC no longer matches
    with pytest.raises(ValueError, match=f"Bad CRC-32 for file '{key}.npy'") as error:
        checkpoint = read_big_vision(path)
        load_into(build_backbone(checkpoint.config), checkpoint, progress=False)
    assert str(path) in str(error.value)


def test_missing_unexpected_and_misshaped_leaves_are_listed(siglip_npz, tmp_path):
    tree = {key[len("params/"):]: value for key, value in np.load(siglip_npz).items()}
    del tree["txt/Encoder_0/encoderblock_1/MlpBlock_0/Dense_1/bias"], tree["b"]
    tree["img/Transformer/encoderblock_0/LayerNorm_2/scale"] = np.ones(32, "float32")
    tree["img/MAPHead_0/probe"] = np.zeros((1, 1, 16), "float32")
    path = save(tree, tmp_path / "bad.npz")
    checkpoint = read_big_vision(path)
    with pytest.raises(CheckpointMismatch) as error:
        load_into(build_backbone(checkpoint.config), checkpoint, progress=False)
    message = str(error.value)
    missing = next(line for line in message.splitlines() if line.strip().startswith("missing"))
    assert "contrastive_head/bias" in missing and "transformer/encoder/block_1/mlp/dense_1/bias" in missing
    assert "unexpected (1): params/img/Transformer/encoderblock_0/LayerNorm_2/scale" in message
    assert "mis-shaped (1): vit/map_head/probe: checkpoint (1, 1, 16) vs model (1, 1, 32)" in message

    del tree["txt/Embed_0/embedding"]
    with pytest.raises(CheckpointMismatch, match="lacks 'txt/Embed_0/embedding'"):
        read_big_vision(save(tree, tmp_path / "no_embedding.npz"))


# -- round trips -------------------------------------------------------------------

VISION = dict(patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=48, image_size=16,
              pooling="map", num_classes=None, num_channels=3)
TEXT = dict(vocabulary_size=60, width=24, depth=3, num_heads=2, mlp_dim=40, sequence_length=6,
            pooling="last", num_classes=32)
ROUND_TRIPS = {
    "per_block": (VISION, TEXT, False),
    "scanned": (VISION, TEXT, True),
    "naflex_scanned": ({**VISION, "input_format": "naflex", "image_size": (12, 20)}, TEXT, True),
    "class_token_and_image_head": ({**VISION, "pooling": "token", "num_classes": 16},
                                   {**TEXT, "num_classes": 16}, False),
}


def randomized(config, dtype=None, seed=0):
    backbone = build_backbone(config, dtype=dtype)
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    return backbone


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_round_trip_reproduces_every_weight(name, tmp_path):
    vision, text, scan = ROUND_TRIPS[name]
    config = {"vision_encoder": vision, "text_encoder": text}
    backbone = randomized(config)
    path = str(tmp_path / "model.npz")
    write_big_vision(backbone, path, scan=scan)
    stored = np.load(path)
    assert any("/encoderblock/" in key for key in stored.files) == scan
    reads = []
    checkpoint = read_big_vision(path, progress=reads.append)
    assert checkpoint.config == config
    restored = build_backbone(checkpoint.config)
    load_into(restored, checkpoint, progress=False)
    assert sorted(reads) == sorted(stored.files)  # every leaf read once, stacked ones too
    assert checkpoint.num_tensors == len(backbone.weights)
    for theirs, ours in zip(backbone.weights, restored.weights):
        assert theirs.path == ours.path
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs))


def test_bfloat16_round_trip_is_exact(tmp_path):
    config = {"vision_encoder": VISION, "text_encoder": TEXT}
    backbone = randomized(config, dtype="bfloat16")
    path = str(tmp_path / "bf16.npz")
    write_big_vision(backbone, path, scan=True)
    checkpoint = read_big_vision(path)
    restored = build_backbone(checkpoint.config, dtype="bfloat16")
    load_into(restored, checkpoint, progress=False)
    for theirs, ours in zip(backbone.weights, restored.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(keras.ops.cast(ours, "float32")),
            keras.ops.convert_to_numpy(keras.ops.cast(theirs, "float32")),
        )
