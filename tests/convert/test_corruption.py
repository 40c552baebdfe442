"""Checkpoint corruption matrix: damaged checkpoints never load silently and never crash.

One tiny model is written once per module as a big_vision `.npz`, a Hugging Face
folder (one `model.safetensors`), a sharded Hugging Face folder (two shards and
`model.safetensors.index.json`) and a keras_siglip preset folder. Each test damages
a copy (truncation at many offsets, flipped header bytes, a missing file, a tensor
of a wrong dtype, NaN / inf weights, two tensors' names swapped, foreign bytes, an
empty file) and loads it both ways that apply: `convert.convert(src, dst)` and
`SigLIPBackbone.from_preset(src)` (which converts foreign sources on the fly).
Each must raise a `ValueError` / `FileNotFoundError` of ours (never a foreign
error type) naming the file and, where one is at fault, the tensor; the
destination (and the conversion cache) must stay empty.

float16 tensors where float32 weights belong are not an error: they are cast
(exactly: every float16 is a float32). The full matrix is slow; one cell per
source kind runs in the fast suite.
"""

import glob
import json
import os
import shutil
import struct

import h5py
import numpy as np
import pytest
from keras import ops
from safetensors.numpy import load_file, save_file

from keras_siglip import convert
from keras_siglip.convert import CorruptCheckpoint, NonFiniteWeights
from keras_siglip.models import SigLIPBackbone, SigLIPImageConverter, SigLIPPreprocessor, SigLIPTokenizer
from keras_siglip.utils.checksums import record_checksums
from tests.helpers import tiny_backbone

SOURCES = ("npz", "safetensors", "sharded", "preset")
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
# Where each source keeps the weights a damage targets (sharded: the larger, second shard).
WEIGHTS_FILE = {"npz": None, "safetensors": "model.safetensors", "sharded": SHARDS[1], "preset": "model.weights.h5"}
_H5_TEXT = "layers/sig_lip_text_encoder/layers/text_transformer"
_H5_VISION = "layers/sig_lip_vision_encoder/layers/vision_transformer"
# The same weights in each format: (our path, {source: stored name}).
TENSORS = {
    "text_head_bias": ("transformer/head/bias", {
        "npz": "params/txt/head/bias", "safetensors": "text_model.head.bias",
        "preset": f"{_H5_TEXT}/head/vars/1",
    }),
    "vision_fc1_bias": ("vit/encoder/block_0/mlp/dense_0/bias", {  # (64,)
        "npz": "params/img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/bias",
        "safetensors": "vision_model.encoder.layers.0.mlp.fc1.bias",
        "preset": f"{_H5_VISION}/encoder/blocks/encoder_block/mlp/dense_0/vars/1",
    }),
    "text_fc1_bias": ("transformer/encoder/block_0/mlp/dense_0/bias", {  # (48,)
        "npz": "params/txt/Encoder_0/encoderblock_0/MlpBlock_0/Dense_0/bias",
        "safetensors": "text_model.encoder.layers.0.mlp.fc1.bias",
        "preset": f"{_H5_TEXT}/encoder/blocks/encoder_block/mlp/dense_0/vars/1",
    }),
}


# -- the sources (written once) ----------------------------------------------------


def _shard(single, folder):
    """A sharded HF folder from a single-file one: text tensors in shard 1, the rest in 2."""
    shutil.copytree(single, folder)
    os.remove(os.path.join(folder, "model.safetensors"))
    tensors = load_file(os.path.join(single, "model.safetensors"))
    groups = {SHARDS[0]: sorted(n for n in tensors if n.startswith("text_model.")),
              SHARDS[1]: sorted(n for n in tensors if not n.startswith("text_model."))}
    for shard, names in groups.items():
        save_file({n: tensors[n] for n in names}, os.path.join(folder, shard), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: shard for shard, names in groups.items() for n in names}}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)


@pytest.fixture(scope="module")
def sources(tmp_path_factory, t5_proto):
    """`{kind: path}` of the four sources of one tiny random model, and its weights."""
    root = tmp_path_factory.mktemp("sources")
    backbone = tiny_backbone()
    rng = np.random.default_rng(0)
    for v in backbone.weights:  # distinct values everywhere, so any misplaced tensor shows
        v.assign(rng.normal(scale=0.1, size=v.shape).astype("float32"))
    paths = {kind: str(root / name) for kind, name in
             (("npz", "bv.npz"), ("safetensors", "hf"), ("sharded", "hf_sharded"), ("preset", "preset"))}
    convert.write_big_vision(backbone, paths["npz"])
    convert.write_huggingface(backbone, paths["safetensors"])
    _shard(paths["safetensors"], paths["sharded"])
    backbone.save_to_preset(paths["preset"])
    preprocessor = SigLIPPreprocessor(
        SigLIPTokenizer(proto=t5_proto), SigLIPImageConverter(image_size=(32, 32)), sequence_length=8
    )
    preprocessor.save_to_preset(paths["preset"])
    weights = {v.path: ops.convert_to_numpy(v) for v in backbone.weights}
    return paths, weights


@pytest.fixture
def source(sources, tmp_path, monkeypatch):
    """`make(kind)`: a fresh copy of one source to damage (and a private conversion cache)."""
    monkeypatch.setenv("KERAS_SIGLIP_CACHE", str(tmp_path / "cache"))
    paths, _ = sources

    def make(kind):
        target = str(tmp_path / os.path.basename(paths[kind]))
        (shutil.copy if kind == "npz" else shutil.copytree)(paths[kind], target)
        return target

    return make


def weights_file(kind, src):
    return src if kind == "npz" else os.path.join(src, WEIGHTS_FILE[kind])


def locate(kind, src, tensor):
    """`(file, stored name, our path)` of one of `TENSORS` in a source."""
    ours, names = TENSORS[tensor]
    name = names["safetensors" if kind == "sharded" else kind]
    if kind == "sharded":
        return os.path.join(src, SHARDS[0] if name.startswith("text_model.") else SHARDS[1]), name, ours
    return weights_file(kind, src), name, ours


# -- damage ------------------------------------------------------------------------


def read_tensor(path, name):
    if path.endswith(".npz"):
        with np.load(path) as npz:
            return npz[name]
    if path.endswith(".safetensors"):
        return load_file(path)[name]
    with h5py.File(path, "r") as f:
        return f[name][()]


def write_tensor(path, name, value):
    """Replace one stored tensor (any dtype, any shape) in an npz, safetensors or h5 file
    (a preset's checksums re-recorded: as if it had been saved so)."""
    if path.endswith(".npz"):
        with np.load(path) as npz:
            arrays = dict(npz.items())
        arrays[name] = value
        np.savez(path, **arrays)
    elif path.endswith(".safetensors"):
        tensors = load_file(path)
        tensors[name] = np.ascontiguousarray(value)
        save_file(tensors, path, metadata={"format": "pt"})
    else:
        with h5py.File(path, "r+") as f:
            del f[name]
            f[name] = value
        # A preset saved holding this tensor: its record matches (the checks below the
        # checksum are under test here; damage after saving is test_checksums').
        record_checksums(os.path.dirname(path))


def truncate(path, offset):
    with open(path, "rb") as f:
        data = f.read(offset)
    with open(path, "wb") as f:
        f.write(data)


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def header_end(kind, path):
    """Where the format's own header ends: the safetensors JSON header, the
    first `.npy` header in the zip, the HDF5 superblock."""
    with open(path, "rb") as f:
        data = f.read()
    if kind in ("safetensors", "sharded"):
        return 8 + struct.unpack("<Q", data[:8])[0]
    if kind == "npz":
        return data.index(b"}") + 1  # the end of the first .npy header dict
    return 96  # HDF5 superblock version 0 with its root group entry


def truncation_offsets(kind, path):
    """Ten offsets: inside the header, across the data, and the last byte."""
    size, header = os.path.getsize(path), header_end(kind, path)
    return sorted({1, 7, header // 2, header - 1, header + 1, size // 4, size // 2, 3 * size // 4, size - 2, size - 1})


# -- the property --------------------------------------------------------------------


def loaders(kind, src, dst):
    """`(name, load)` for each way a user loads this source."""
    if kind != "preset":
        yield "convert", lambda: convert.convert(src, dst, progress=False)
    yield "from_preset", lambda: SigLIPBackbone.from_preset(src)


def assert_refused(kind, src, tmp_path, names, error=(ValueError, FileNotFoundError)):
    """Every loader raises one of our clear errors naming each of `names`, and
    leaves no destination (or cached conversion) behind. Returns the messages."""
    dst = str(tmp_path / "dst")
    messages = []
    for loader, load in loaders(kind, src, dst):
        with pytest.raises(error) as info:
            load()
        cls = type(info.value)
        assert cls.__module__.startswith("keras_siglip") or cls in (ValueError, FileNotFoundError), (
            f"{loader}: a foreign {cls.__module__}.{cls.__name__} escaped: {info.value}"
        )
        message = str(info.value)
        for name in names:
            assert name in message, f"{loader}: {name!r} not named in: {message}"
        messages.append(message)
    assert not os.path.exists(dst)
    assert not glob.glob(str(tmp_path / "cache" / "converted" / "*" / "config.json"))
    return messages


def assert_loads(kind, src, tmp_path, expected, **kwargs):
    """Both loaders succeed and give exactly `expected` (`{path: array}`, NaN equal to NaN)."""
    loaded = {"from_preset": SigLIPBackbone.from_preset(src, **kwargs)}
    if kind != "preset":
        dst = convert.convert(src, str(tmp_path / "dst"), progress=False, **kwargs)
        loaded["convert"] = SigLIPBackbone.from_preset(dst, **kwargs)
    for loader, backbone in loaded.items():
        for v in backbone.weights:
            np.testing.assert_array_equal(ops.convert_to_numpy(v), expected[v.path], err_msg=f"{loader}: {v.path}")


def _slow_except(fast):
    """Parametrize values: `fast` ones run in the quick suite, the rest are marked slow."""
    return lambda values: [v if v in fast else pytest.param(v, marks=pytest.mark.slow) for v in values]


# -- truncation -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", _slow_except({"npz", "safetensors", "sharded", "preset"})(SOURCES))
def test_truncated_at_a_middle_offset(kind, source, tmp_path):
    src = source(kind)
    path = weights_file(kind, src)
    truncate(path, os.path.getsize(path) // 2)
    assert_refused(kind, src, tmp_path, [os.path.basename(path)])


@pytest.mark.slow
@pytest.mark.parametrize("kind", SOURCES)
def test_truncated_at_many_offsets(kind, sources, tmp_path, monkeypatch):
    """Ten offsets from inside the header to the last byte: each is refused."""
    paths, _ = sources
    original = weights_file(kind, paths[kind])
    for offset in truncation_offsets(kind, original):
        case = tmp_path / f"at_{offset}"
        case.mkdir()
        monkeypatch.setenv("KERAS_SIGLIP_CACHE", str(case / "cache"))
        src = str(case / os.path.basename(paths[kind]))
        (shutil.copy if kind == "npz" else shutil.copytree)(paths[kind], src)
        path = weights_file(kind, src)
        truncate(path, offset)
        assert_refused(kind, src, case, [os.path.basename(path)])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["safetensors", "sharded", "preset"])
def test_truncated_config_json(kind, source, tmp_path):
    src = source(kind)
    config = os.path.join(src, "config.json")
    truncate(config, os.path.getsize(config) // 2)
    assert_refused(kind, src, tmp_path, ["config.json"])


@pytest.mark.slow
def test_truncated_shard_index(source, tmp_path):
    src = source("sharded")
    index = os.path.join(src, "model.safetensors.index.json")
    truncate(index, os.path.getsize(index) // 2)
    assert_refused("sharded", src, tmp_path, ["model.safetensors.index.json"])


# -- flipped header bytes ---------------------------------------------------------------


def _zip_fields(path):
    """Offsets of the zip directory fields a reader relies on: the end record's
    signature and directory offset, the first directory entry's signature, CRC,
    size and name (an `.npz` is a zip of `.npy` members)."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.rindex(b"PK\x05\x06")
    directory = struct.unpack("<I", data[end + 16:end + 20])[0]
    return {"end_signature": end, "directory_offset": end + 16, "entry_signature": directory,
            "entry_crc": directory + 16, "entry_size": directory + 20, "entry_name": directory + 46 + 8}


def flip_offsets(kind, path):
    """`{field: offset}` of header bytes whose damage must be refused."""
    if kind == "npz":
        return _zip_fields(path)
    if kind == "preset":  # HDF5 superblock: signature, version, sizes, flags, base / EOF addresses
        return {"signature": 0, "version": 8, "offset_size": 13, "flags": 20, "base_address": 24,
                "eof_address": 40}
    end = header_end(kind, path)  # safetensors: the length prefix and the JSON header
    return {"length_low": 0, "length_high": 7, "json_open": 8, "json_third": 8 + (end - 8) // 3,
            "json_half": 8 + (end - 8) // 2, "json_close": end - 1}


@pytest.mark.slow
@pytest.mark.parametrize("kind", SOURCES)
def test_flipped_header_bytes(kind, sources, tmp_path, monkeypatch):
    paths, _ = sources
    for field, offset in flip_offsets(kind, weights_file(kind, paths[kind])).items():
        case = tmp_path / field
        case.mkdir()
        monkeypatch.setenv("KERAS_SIGLIP_CACHE", str(case / "cache"))
        src = str(case / os.path.basename(paths[kind]))
        (shutil.copy if kind == "npz" else shutil.copytree)(paths[kind], src)
        flip(weights_file(kind, src), offset)
        assert_refused(kind, src, case, [os.path.basename(weights_file(kind, src))])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["npz", "preset"])
def test_flipped_bytes_anywhere_in_the_header_never_load_wrong_weights(kind, sources, tmp_path, monkeypatch):
    """Some header bytes are ignored by their readers (zip timestamps and
    attributes, HDF5 reserved fields and cached addresses): damage there loads
    the very same weights. Every other flip is refused; none loads other weights."""
    paths, weights = sources
    original = weights_file(kind, paths[kind])
    end = _zip_fields(original)["end_signature"] + 22 if kind == "npz" else 96
    start = _zip_fields(original)["entry_signature"] if kind == "npz" else 0
    refused = 0
    for offset in np.linspace(start, end - 1, 8).astype(int):
        case = tmp_path / f"at_{offset}"
        case.mkdir()
        monkeypatch.setenv("KERAS_SIGLIP_CACHE", str(case / "cache"))
        src = str(case / os.path.basename(paths[kind]))
        (shutil.copy if kind == "npz" else shutil.copytree)(paths[kind], src)
        flip(weights_file(kind, src), int(offset))
        try:
            loaded = SigLIPBackbone.from_preset(src)
        except (ValueError, FileNotFoundError) as error:
            assert os.path.basename(weights_file(kind, src)) in str(error)
            refused += 1
            continue
        for v in loaded.weights:
            np.testing.assert_array_equal(ops.convert_to_numpy(v), weights[v.path])
    assert refused > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["safetensors", "preset"])
def test_flipped_byte_in_config_json(kind, source, tmp_path):
    src = source(kind)
    config = os.path.join(src, "config.json")
    flip(config, os.path.getsize(config) // 2)  # a byte >= 0x80 alone: not UTF-8
    assert_refused(kind, src, tmp_path, ["config.json"])


# -- missing files ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", _slow_except({"sharded"})(SOURCES))
def test_missing_weights_file(kind, source, tmp_path):
    """A missing shard (or the only weights file) is named."""
    src = source(kind)
    path = weights_file(kind, src)
    os.remove(path)
    assert_refused(kind, src, tmp_path, [os.path.basename(path)])


# -- foreign and empty files -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("content", ["random", "empty"])
@pytest.mark.parametrize("kind", SOURCES)
def test_not_a_checkpoint(kind, content, source, tmp_path):
    """Random bytes (or nothing) under the right file name."""
    src = source(kind)
    path = weights_file(kind, src)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(1).bytes(4096) if content == "random" else b"")
    assert_refused(kind, src, tmp_path, [os.path.basename(path)])


# -- wrong dtypes -------------------------------------------------------------------------------

WRONG = {"int32": np.arange(32, dtype="int32"), "bool": np.ones(32, bool), "string": np.array(["0.5"] * 32)}
# safetensors holds no strings; HDF5 stores them as fixed-length bytes.
# int32 in every format; bool and strings (which safetensors cannot hold) in two.
WRONG_CASES = [(kind, "int32") for kind in SOURCES] + [
    ("npz", "bool"), ("safetensors", "bool"), ("npz", "string"), ("preset", "string")]


@pytest.mark.parametrize(
    "kind,dtype",
    [case if case == ("safetensors", "int32") else pytest.param(*case, marks=pytest.mark.slow)
     for case in WRONG_CASES],
)
def test_tensor_of_a_wrong_dtype(kind, dtype, source, tmp_path):
    src = source(kind)
    path, name, ours = locate(kind, src, "text_head_bias")
    value = WRONG[dtype].astype("S3") if kind == "preset" and dtype == "string" else WRONG[dtype]
    write_tensor(path, name, value)
    # The preset's file is checked before loading (dataset names); the converters name our path too.
    names = [os.path.basename(path), name] + ([] if kind == "preset" else [ours])
    assert_refused(kind, src, tmp_path, names, error=(CorruptCheckpoint,))


# -- NaN and inf -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,value",
    [(kind, value) if (kind, value) == ("preset", "nan") else pytest.param(kind, value, marks=pytest.mark.slow)
     for kind, value in [(kind, "nan") for kind in SOURCES] + [("npz", "inf"), ("preset", "inf")]],
)
def test_non_finite_weights_are_refused(kind, value, source, tmp_path):
    src = source(kind)
    path, name, ours = locate(kind, src, "text_head_bias")
    tensor = read_tensor(path, name)
    tensor[3] = float(value)
    write_tensor(path, name, tensor)
    names = [os.path.basename(path), ours, "allow_nan=True"] + ([] if kind == "preset" else [name])
    assert_refused(kind, src, tmp_path, names, error=(NonFiniteWeights,))


@pytest.mark.slow
@pytest.mark.parametrize("kind", SOURCES)
def test_float16_is_cast_and_nan_loads_with_allow_nan(kind, sources, source, tmp_path):
    """A float16 tensor where float32 weights belong is not an error: it loads
    as the same numbers rounded to float16 (each float16 is exactly a
    float32). With `allow_nan=True` a NaN weight loads as NaN. (One load
    checks both, to keep the matrix fast.)"""
    _, weights = sources
    src = source(kind)
    path, name, ours = locate(kind, src, "text_head_bias")
    half = read_tensor(path, name).astype("float16")
    write_tensor(path, name, half)
    nan_path, nan_name, nan_ours = locate(kind, src, "vision_fc1_bias")
    with_nan = read_tensor(nan_path, nan_name)
    with_nan[3] = np.nan
    write_tensor(nan_path, nan_name, with_nan)
    expected = {**weights, ours: half.astype("float32"), nan_ours: with_nan}
    assert_loads(kind, src, tmp_path, expected, allow_nan=True)


# -- swapped names ------------------------------------------------------------------------------------
#
# Two tensors of the same shape whose names are swapped cannot be told apart by
# any reader: names and shapes are all a checkpoint without checksums of its
# meaning offers, so such a file loads (with the two weights exchanged). What is
# caught is every swap that changes a shape, tested here with the vision and text
# towers' first MLP biases, (64,) and (48,) (in different shards when sharded).


@pytest.mark.slow
@pytest.mark.parametrize("kind", SOURCES)
def test_swapped_tensor_names_of_different_shapes(kind, source, tmp_path):
    src = source(kind)
    (path_a, name_a, ours_a), (path_b, name_b, ours_b) = (locate(kind, src, t) for t in ("vision_fc1_bias",
                                                                                          "text_fc1_bias"))
    a, b = read_tensor(path_a, name_a), read_tensor(path_b, name_b)
    write_tensor(path_a, name_a, b)
    write_tensor(path_b, name_b, a)
    if kind == "preset":
        # keras-hub's loader (Keras) reports the first variable that fails and how many did.
        for message in assert_refused(kind, src, tmp_path, ["model.weights.h5", "2 objects"]):
            assert ours_a in message or ours_b in message
    else:
        names = {ours_a, ours_b, name_a, name_b, os.path.basename(path_a), os.path.basename(path_b)}
        for message in assert_refused(kind, src, tmp_path, sorted(names)):
            assert "mis-shaped (2)" in message


# -- cells whose fixes need no matrix --------------------------------------------------------------


def test_a_tensor_stored_in_two_shards_is_refused(source, tmp_path):
    src = source("sharded")
    stray = load_file(os.path.join(src, SHARDS[0]))
    stray["logit_bias"] = np.zeros(1, "float32")  # also in shard 2
    save_file(stray, os.path.join(src, SHARDS[0]), metadata={"format": "pt"})
    assert_refused("sharded", src, tmp_path, ["'logit_bias'", SHARDS[0], SHARDS[1]], error=(CorruptCheckpoint,))


@pytest.mark.slow
def test_a_damaged_npy_header_is_refused_naming_the_array(source, tmp_path):
    """A `.npy` header claiming a shape its member cannot hold (here 9.6 GB:
    refused before numpy allocates it), and one that no longer parses. The
    member is larger than zipfile's first read, so its CRC is not yet checked."""
    src = source("npz")
    with open(src, "rb") as f:
        data = f.read()
    header = data.index(b"'shape': (60, 24), }")
    end = data.index(b"\n", header)
    for damaged, problem in (
        (b"'shape': (99999999, 24), }", "the member holds"),  # the padding absorbs the longer text
        (b"'shape': (60, 24), \xff", "not a readable"),
    ):
        padded = damaged + b" " * (end - header - len(damaged))
        with open(src, "wb") as f:
            f.write(data[:header] + padded + data[end:])
        for message in assert_refused("npz", src, tmp_path, [os.path.basename(src), "txt/Embed_0/embedding"]):
            assert problem in message


@pytest.mark.slow
def test_a_checkpoint_whose_tensors_describe_no_buildable_model_names_the_file(source, tmp_path):
    """Without the text head (a damaged name hides it) the towers' widths differ."""
    src = source("npz")
    with np.load(src) as npz:
        arrays = {k: v for k, v in npz.items() if not k.startswith("params/txt/head/")}
    np.savez(src, **arrays)
    for message in assert_refused("npz", src, tmp_path, [os.path.basename(src)]):
        assert "cannot be built" in message


@pytest.mark.slow
def test_a_truncated_keras_hub_preset_names_the_file(tmp_path, monkeypatch):
    """keras-hub presets are read by keras-hub's loader: its h5py errors are translated too."""
    import keras_hub

    monkeypatch.setenv("KERAS_SIGLIP_CACHE", str(tmp_path / "cache"))
    backbone = keras_hub.models.SigLIPBackbone(
        keras_hub.models.SigLIPVisionEncoder(patch_size=8, hidden_dim=16, num_layers=1, num_heads=2,
                                             intermediate_dim=32, image_shape=(16, 16, 3)),
        keras_hub.models.SigLIPTextEncoder(vocabulary_size=20, embedding_dim=16, hidden_dim=16, num_layers=1,
                                           num_heads=2, intermediate_dim=32, max_sequence_length=4,
                                           projection_dim=16),
    )
    src = str(tmp_path / "kaggle_download")
    backbone.save_to_preset(src)
    path = os.path.join(src, "model.weights.h5")
    truncate(path, os.path.getsize(path) // 2)
    assert_refused("keras_hub", src, tmp_path, ["model.weights.h5"], error=(CorruptCheckpoint,))


@pytest.mark.slow
def test_a_refused_conversion_leaves_an_existing_destination_as_it_was(sources, source, tmp_path):
    paths, _ = sources
    src = source("npz")
    truncate(src, os.path.getsize(src) // 2)
    dst = str(tmp_path / "old_preset")
    shutil.copytree(paths["preset"], dst)
    before = {name: open(os.path.join(dst, name), "rb").read() for name in os.listdir(dst) if name.endswith(
        (".json", ".h5"))}
    with pytest.raises(CorruptCheckpoint, match="bv.npz"):
        convert.convert(src, dst, progress=False, overwrite=True)
    assert {name: open(os.path.join(dst, name), "rb").read() for name in before} == before
    assert sorted(os.listdir(dst)) == sorted(os.listdir(paths["preset"]))
