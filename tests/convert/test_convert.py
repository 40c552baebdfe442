"""`keras_siglip.convert` end to end: a keras-hub preset folder becomes a preset of ours
(backbone + preprocessor), `from_preset` converts sources on the fly, the CLI, errors."""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

from keras_siglip import convert
from keras_siglip.cli import main as cli
from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor
from tests.helpers import perturb


@pytest.fixture
def keras_hub_preset(tmp_path, rng, t5_proto):
    """A keras-hub SigLIP preset folder (backbone, tokenizer, image converter)."""
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.SigLIPBackbone(
        keras_hub.models.SigLIPVisionEncoder(
            patch_size=8, hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=64,
            image_shape=(32, 32, 3),
        ),
        keras_hub.models.SigLIPTextEncoder(
            vocabulary_size=60, embedding_dim=24, hidden_dim=24, num_layers=1, num_heads=2,
            intermediate_dim=48, max_sequence_length=8, projection_dim=32,
        ),
    )
    perturb(backbone, rng)
    folder = str(tmp_path / "kaggle_download")
    backbone.save_to_preset(folder)
    tokenizer = keras_hub.models.SigLIPTokenizer(proto=t5_proto)
    preprocessor = keras_hub.models.SigLIPPreprocessor(
        tokenizer, keras_hub.layers.SigLIPImageConverter(image_size=(32, 32)), sequence_length=8
    )
    preprocessor.save_to_preset(folder)
    return folder, backbone


def _inputs(rng, vocab=60):
    ids = rng.integers(2, vocab, (3, 8)).astype("int32")
    ids[:, -1] = 1
    return {"images": rng.uniform(-1, 1, (3, 32, 32, 3)).astype("float32"), "token_ids": ids}


def test_detect_format(tmp_path, keras_hub_preset):
    folder, _ = keras_hub_preset
    assert convert.detect_format(folder) == "keras_hub"
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    assert convert.detect_format(str(tmp_path / "hf")) == "huggingface"
    (tmp_path / "x.npz").write_bytes(b"")
    assert convert.detect_format(str(tmp_path / "x.npz")) == "big_vision"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match="model_type 'clip'"):
        convert.detect_format(str(tmp_path / "other"))
    with pytest.raises(ValueError, match="no config.json"):
        convert.detect_format(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        convert.detect_format(str(tmp_path / "missing"))
    (tmp_path / "w.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="not a big_vision .npz"):
        convert.detect_format(str(tmp_path / "w.bin"))


def test_keras_hub_preset_converts_with_preprocessor(tmp_path, keras_hub_preset, rng):
    folder, theirs = keras_hub_preset
    destination = str(tmp_path / "ours")
    convert.convert(folder, destination, progress=False)
    ours = SigLIPBackbone.from_preset(destination)
    x = _inputs(rng)
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours(x)["logits"]), ops.convert_to_numpy(theirs(x)["vision_logits"]), atol=1e-5
    )
    preprocessor = SigLIPPreprocessor.from_preset(destination)
    theirs_pre = keras_hub.models.SigLIPPreprocessor.from_preset(folder)
    texts = ["a red circle", "two blue squares"]
    np.testing.assert_array_equal(
        ops.convert_to_numpy(preprocessor({"texts": texts})["token_ids"]),
        ops.convert_to_numpy(theirs_pre({"prompts": texts, "images": np.zeros((2, 32, 32, 3))})["token_ids"]),
    )
    assert tuple(preprocessor.image_converter.image_size) == (32, 32)


def test_from_preset_converts_on_the_fly_and_caches(tmp_path, keras_hub_preset, rng, monkeypatch):
    folder, theirs = keras_hub_preset
    monkeypatch.setenv("KERAS_SIGLIP_CACHE", str(tmp_path / "cache"))
    ours = SigLIPBackbone.from_preset(folder)
    x = _inputs(rng)
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours(x)["logits"]), ops.convert_to_numpy(theirs(x)["vision_logits"]), atol=1e-5
    )
    (converted,) = os.listdir(tmp_path / "cache" / "converted")
    calls = []
    monkeypatch.setattr(convert, "convert", lambda *a, **k: calls.append(a))
    SigLIPBackbone.from_preset(folder)  # cached: no second conversion
    assert calls == []


def test_mismatch_writes_nothing_and_lists_names(tmp_path, keras_hub_preset):
    folder, _ = keras_hub_preset
    checkpoint = convert.read_checkpoint(folder, progress=False)
    tensors = dict(checkpoint.tensors())
    tensors.pop("vit/map_head/probe")
    tensors["vit/extra"] = np.zeros(3)
    tensors["transformer/head/bias"] = np.zeros(7)
    checkpoint.tensors = lambda: iter(tensors.items())
    with pytest.raises(convert.CheckpointMismatch) as error:
        convert.load_into(convert.build_backbone(checkpoint.config), checkpoint, progress=False)
    message = str(error.value)
    assert "vit/map_head/probe" in message and "vit/extra" in message
    assert "transformer/head/bias: checkpoint (7,)" in message


def test_cli_convert(tmp_path, keras_hub_preset, capsys, monkeypatch):
    """Called from Python (argv given) it converts without touching the caller's
    allocator; run as the program (argv from sys.argv) it returns freed tensors."""
    from keras_siglip.utils import memory

    calls = []
    monkeypatch.setattr(memory, "return_freed_tensors_to_the_system", lambda: calls.append(True))
    folder, _ = keras_hub_preset
    destination = str(tmp_path / "cli_out")
    assert cli(["convert", folder, destination]) == 0
    assert calls == []
    monkeypatch.setattr("sys.argv", ["keras-siglip", "convert", folder, str(tmp_path / "as_program")])
    assert cli() == 0 and calls == [True]
    assert "Wrote" in capsys.readouterr().out
    assert convert.detect_format(destination) == "keras_siglip"
    assert cli(["convert", destination, str(tmp_path / "again")]) == 1
    assert "already a keras_siglip preset" in capsys.readouterr().err


def test_big_vision_npz_with_a_tokenizer_file(tmp_path, rng, t5_proto):
    """An .npz has no tokenizer: `--tokenizer` bundles one, giving a full preset."""
    from keras_siglip.convert.big_vision import write_big_vision

    config = {
        "vision_encoder": dict(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, image_size=32),
        "text_encoder": dict(vocabulary_size=60, width=32, depth=1, num_heads=2, mlp_dim=48,
                             sequence_length=8, num_classes=32),
    }
    keras.utils.set_random_seed(1)
    source = convert.build_backbone(config)
    npz = str(tmp_path / "params.npz")
    write_big_vision(source, npz)
    spm = tmp_path / "cc_en.model"
    spm.write_bytes(t5_proto)
    destination = str(tmp_path / "preset")
    cli(["convert", npz, destination, "--tokenizer", str(spm)])
    preprocessor = SigLIPPreprocessor.from_preset(destination)
    assert preprocessor.tokenizer.pad_token == "</s>"
    x = _inputs(rng)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(SigLIPBackbone.from_preset(destination)(x)["logits"]),
        ops.convert_to_numpy(source(x)["logits"]),
    )
