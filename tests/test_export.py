"""Exports run in their own runtimes (tf.saved_model, the LiteRT interpreter,
onnxruntime) and give the Keras model's embeddings: fixed-resolution and
NaFlex image towers, the text tower, float32 and int8, any batch size."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_siglip import cli
from keras_siglip.export import ExportedTowers, export, export_preset
from keras_siglip.models import SigLIPBackbone, SigLIPTextEncoder, SigLIPVisionEncoder
from tests.helpers import naflex_batch, numpy

PRESET = "siglip2_shapes_tiny"
FORMATS = ("saved_model", "litert", "onnx")
ATOL = 1e-5
on_tensorflow = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                   reason="exports run on TensorFlow; other backends test the subprocess path")


def fixed_inputs(backbone, batch, seed=0):
    rng = np.random.default_rng(seed)
    size, text = backbone.vision_encoder.image_size, backbone.text_encoder
    return (rng.uniform(-1, 1, (batch, *size, 3)).astype("float32"),
            rng.integers(2, text.vocabulary_size, (batch, text.sequence_length)).astype("int32"))


@pytest.fixture(scope="module")
def shipped():
    return SigLIPBackbone.from_preset(PRESET)


@pytest.fixture(scope="module")
def naflex():
    """A NaFlex model with every weight perturbed (zero biases, unit scales)."""
    keras.utils.set_random_seed(0)
    model = SigLIPBackbone(SigLIPVisionEncoder(4, 32, 2, 2, 48, image_size=16, input_format="naflex"),
                           SigLIPTextEncoder(60, 32, 1, 2, 48, sequence_length=6))
    rng = np.random.default_rng(0)
    for weight in model.weights:
        weight.assign(numpy(weight) + 0.05 * rng.normal(size=tuple(weight.shape)).astype("float32"))
    return model


@on_tensorflow
@pytest.mark.parametrize("format", FORMATS)
def test_shipped_model_exports_match_keras(shipped, format, tmp_path):
    out = export_preset(PRESET, tmp_path / "export", format=format, verbose=False)
    towers = ExportedTowers(out)
    manifest = json.loads((tmp_path / "export" / "export.json").read_text())
    assert manifest["towers"]["image"]["inputs"]["images"]["shape"] == [None, 48, 48, 3]
    assert manifest["preprocessor"]["tokenizer"]["file"] == "tokenizer.model"
    assert (tmp_path / "export" / "tokenizer.model").stat().st_size > 0
    for batch in (3, 1):  # the batch is dynamic
        images, token_ids = fixed_inputs(shipped, batch, seed=batch)
        np.testing.assert_allclose(towers.encode_images(images), numpy(shipped.encode_images(images)), atol=ATOL)
        np.testing.assert_allclose(towers.encode_texts(token_ids), numpy(shipped.encode_texts(token_ids)),
                                   atol=ATOL)


@on_tensorflow
@pytest.mark.parametrize("format", FORMATS)
def test_naflex_exports_match_keras(naflex, format, tmp_path):
    """Images of other aspect ratios than any seen while exporting: the
    position grid is resized per image inside the exported graph."""
    towers = ExportedTowers(export(naflex, tmp_path / "export", format=format, max_num_patches=20, verbose=False))
    assert towers.manifest["towers"]["image"]["inputs"]["patches"]["shape"] == [None, 20, 48]
    for grids in ([(4, 5), (2, 7), (1, 9), (5, 3)], [(3, 3)]):
        x = naflex_batch(grids, 20, 48, seed=len(grids))
        np.testing.assert_allclose(towers.encode_images(x), numpy(naflex.encode_images(x)), atol=ATOL)
    token_ids = np.random.default_rng(1).integers(2, 60, (2, 6)).astype("int32")
    np.testing.assert_allclose(towers.encode_texts(token_ids), numpy(naflex.encode_texts(token_ids)), atol=ATOL)


def min_cosine(a, b):
    return float(np.min(np.sum(a * b, axis=-1)))  # rows are L2-normalised


@pytest.fixture(scope="module")
def int8_model(shipped):
    model = SigLIPBackbone.from_config(shipped.get_config())
    model.set_weights(shipped.get_weights())
    model.quantize("int8")
    return model


@on_tensorflow
@pytest.mark.parametrize("format", FORMATS)
def test_int8_exports_stay_close(shipped, int8_model, format, tmp_path):
    """SavedModel and ONNX run Keras' int8 layers: the export computes what the
    quantized Keras model does, up to activations that round to the other side
    of a quantization step (min cosine 0.99997). LiteRT's int8 is the
    converter's dynamic-range quantization of the float model. Each stays as
    close to float as the int8 bound (0.999). Measured min cosine to float,
    image / text: SavedModel and ONNX 0.99994 / 0.99990, LiteRT 0.99993 /
    0.99990."""
    if format == "litert":
        out = export(shipped, tmp_path / "export", format=format, quantize="int8", verbose=False)
        float_out = export(shipped, tmp_path / "float", format=format, towers="image", verbose=False)
        assert os.path.getsize(os.path.join(out, "image_encoder.tflite")) < 0.4 * os.path.getsize(
            os.path.join(float_out, "image_encoder.tflite"))
    else:
        out = export(int8_model, tmp_path / "export", format=format, verbose=False)
    towers = ExportedTowers(out)
    assert towers.manifest["quantization"] == "int8"
    images, token_ids = fixed_inputs(shipped, 8)
    for ours, quantized, reference in (
        (towers.encode_images(images), int8_model.encode_images(images), shipped.encode_images(images)),
        (towers.encode_texts(token_ids), int8_model.encode_texts(token_ids), shipped.encode_texts(token_ids)),
    ):
        if format != "litert":
            assert min_cosine(ours, numpy(quantized)) > 0.9999
        assert min_cosine(ours, numpy(reference)) > 0.999


def test_quantized_exports_a_format_cannot_run_are_refused(int8_model, shipped, tmp_path):
    with pytest.raises(ValueError, match="does not convert to LiteRT.*quantize='int8'"):
        export(int8_model, tmp_path / "a", format="litert")
    with pytest.raises(ValueError, match="A float8 model does not export to onnx"):
        export(shipped, tmp_path / "a", format="onnx", quantize="float8")
    with pytest.raises(ValueError, match=r"already quantized \(int8\)"):
        export(int8_model, tmp_path / "a", format="onnx", quantize="int4")
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(keras.backend.backend() == "tensorflow", reason="the in-process path is tested on TensorFlow")
def test_export_from_another_backend_runs_on_tensorflow(naflex, tmp_path):
    """From JAX or torch the model is saved and exported in a TensorFlow
    subprocess; the artifact matches this backend's embeddings."""
    out = export(naflex, tmp_path / "export", format="onnx", towers="image", max_num_patches=20, verbose=False)
    towers = ExportedTowers(out)
    x = naflex_batch([(4, 5), (2, 3)], 20, 48)
    np.testing.assert_allclose(towers.encode_images(x), numpy(naflex.encode_images(x)), atol=ATOL)
    with pytest.raises(ValueError, match="has no text tower"):
        towers.encode_texts(np.zeros((1, 6), "int32"))
    with pytest.raises(ValueError, match=r"expected shape \(B, 20, 48\)"):
        towers.encode_images({**x, "patches": x["patches"][:, :10]})


def test_bad_arguments_fail_before_writing(naflex, shipped, tmp_path):
    with pytest.raises(ValueError, match="Unknown export format 'tflite'"):
        export(shipped, tmp_path / "a", format="tflite")
    with pytest.raises(ValueError, match="towers must be distinct names"):
        export(shipped, tmp_path / "a", format="onnx", towers=("image", "audio"))
    with pytest.raises(ValueError, match="give max_num_patches"):
        export(naflex, tmp_path / "a", format="onnx")
    with pytest.raises(ValueError, match="applies to a NaFlex image tower"):
        export(shipped, tmp_path / "a", format="onnx", max_num_patches=64)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="without export.json, not an export"):
        export(shipped, tmp_path / "notes", format="onnx", overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "a").exists()


def test_a_missing_exporter_names_the_extra(shipped, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else find_spec(name, *a))
    with pytest.raises(ImportError, match=r"Exporting to ONNX needs tf2onnx.*pip install 'keras-siglip\[export\]'"):
        export(shipped, tmp_path / "a", format="onnx")


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    cases = [
        (["export", PRESET, str(tmp_path / "taken"), "--format", "onnx"], "already exists; pass --overwrite"),
        (["export", PRESET, str(tmp_path / "o"), "--format", "onnx", "--input", "naflex"],
         "is a fixed-resolution model (input 'images'); --input naflex needs a model trained for it"),
        (["export", PRESET, str(tmp_path / "o"), "--format", "onnx", "--max-num-patches", "64"],
         "applies to a NaFlex image tower"),
        (["export", PRESET, str(tmp_path / "missing" / "o"), "--format", "onnx"], "does not exist"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("keras-siglip: error: ") and message in err and err.count("\n") == 1, err
    for argv in (["export", PRESET, str(tmp_path / "o"), "--format", "tflite"],
                 ["export", PRESET, str(tmp_path / "o"), "--format", "onnx", "--towers", "image,audio"]):
        with pytest.raises(SystemExit) as exit:
            cli.main(argv)
        assert exit.value.code == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="one backend's pass runs the installed command")
def test_installed_command_exports_litert_whatever_the_backend(shipped, tmp_path):
    """`keras-siglip export` run as a user would, with KERAS_BACKEND=jax: the
    export runs on TensorFlow; `--overwrite` replaces an export whole."""
    command = [os.path.join(os.path.dirname(sys.executable), "keras-siglip"), "export", PRESET,
               str(tmp_path / "lite"), "--format", "litert", "--towers", "text"]
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    for extra in ([], ["--overwrite"]):
        run = subprocess.run(command + extra, capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0 and run.stdout == f"Wrote {tmp_path / 'lite'}\n", run.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "lite")) == ["export.json", "text_encoder.tflite", "tokenizer.model"]
    _, token_ids = fixed_inputs(shipped, 2)
    np.testing.assert_allclose(ExportedTowers(tmp_path / "lite").encode_texts(token_ids),
                               numpy(shipped.encode_texts(token_ids)), atol=ATOL)
