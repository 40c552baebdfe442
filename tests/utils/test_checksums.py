"""Preset integrity: weight files' sizes and SHA-256 recorded at save, verified at load."""

import json
import os

import keras
import numpy as np
import pytest

from keras_siglip.convert.common import CorruptCheckpoint
from keras_siglip.models import SigLIPBackbone
from keras_siglip.presets import SHIPPED_PRESETS
from keras_siglip.utils.checksums import KEY, file_sha256
from tests.helpers import tiny_backbone

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="file checks: the same on every backend")


def saved(tmp_path):
    path = tmp_path / "preset"
    tiny_backbone().save_to_preset(str(path))
    return path


def metadata(path):
    return json.loads((path / "metadata.json").read_text())


def flip_byte(file):
    """Flip the lowest bit of one byte inside the largest weight's data."""
    import h5py

    datasets = []
    with h5py.File(file, "r") as f:
        f.visititems(lambda name, item: datasets.append(item) if isinstance(item, h5py.Dataset) else None)
        largest = max(datasets, key=lambda d: d.size)
        offset = largest.id.get_offset() + largest.id.get_storage_size() // 2
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x01
    file.write_bytes(bytes(data))


def test_save_records_every_weight_file_and_the_tasks(tmp_path):
    path = saved(tmp_path)
    recorded = metadata(path)[KEY]
    weights = path / "model.weights.h5"
    assert recorded == {"model.weights.h5": {"bytes": weights.stat().st_size, "sha256": file_sha256(weights)}}
    assert "SigLIPZeroShotClassifier" in metadata(path)["tasks"]  # keras-hub's list named a mixin


def test_a_flipped_byte_is_refused_naming_the_file(tmp_path):
    """One bit flipped inside a weight: with the record it is refused; the
    same file without the record loads, with a changed weight (the control:
    only the checksum catches it)."""
    path = saved(tmp_path)
    original = SigLIPBackbone.from_preset(str(path)).get_weights()
    flip_byte(path / "model.weights.h5")
    with pytest.raises(CorruptCheckpoint, match=r"model\.weights\.h5 does not match the SHA-256"):
        SigLIPBackbone.from_preset(str(path))
    unrecorded = metadata(path)
    del unrecorded[KEY]
    (path / "metadata.json").write_text(json.dumps(unrecorded))
    damaged = SigLIPBackbone.from_preset(str(path)).get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(original, damaged))


def test_a_truncated_file_names_its_size(tmp_path):
    path = saved(tmp_path)
    weights = path / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CorruptCheckpoint, match="bytes; the preset recorded"):
        SigLIPBackbone.from_preset(str(path))


def test_a_missing_recorded_file_is_named(tmp_path):
    path = saved(tmp_path)
    os.remove(path / "model.weights.h5")
    with pytest.raises(FileNotFoundError, match="model.weights.h5"):
        SigLIPBackbone.from_preset(str(path))


def test_the_shipped_preset_is_recorded_and_verifies():
    path = SHIPPED_PRESETS["siglip2_shapes_tiny"]
    with open(os.path.join(path, "metadata.json")) as f:
        assert "model.weights.h5" in json.load(f)[KEY]
    SigLIPBackbone.from_preset(path)
