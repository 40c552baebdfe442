"""`convert` and the Hugging Face export never lose or mix files: the destination
may not be (or hold, or lie in) the source, a file, or an unrelated folder; an
existing preset is replaced whole only with `overwrite`; a tokenizer is checked
against the model before anything is written; exports keep the preprocessing."""

import hashlib
import json
import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_siglip import convert
from keras_siglip.convert.big_vision import write_big_vision
from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor

CONFIG = {
    "vision_encoder": dict(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, image_size=32),
    "text_encoder": dict(vocabulary_size=60, width=32, depth=1, num_heads=2, mlp_dim=48,
                         sequence_length=8, num_classes=32),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory, t5_proto):
    """A big_vision .npz of a tiny SigLIP and a SentencePiece file of its vocabulary."""
    folder = tmp_path_factory.mktemp("source")
    keras.utils.set_random_seed(3)
    npz = str(folder / "params.npz")
    write_big_vision(convert.build_backbone(CONFIG), npz)
    spm = folder / "vocab.model"
    spm.write_bytes(t5_proto)
    return npz, str(spm)


def tree_digest(path):
    """Names and contents of every file under `path` (hidden ones included)."""
    digest = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                digest[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return digest


def test_destination_equal_to_inside_or_around_the_source_is_refused(tmp_path, source):
    npz, spm = source
    preset = str(tmp_path / "preset")
    convert.convert(npz, preset, tokenizer=spm, progress=False)
    before = tree_digest(tmp_path)
    for destination, words in ((preset, "is the source"), (os.path.join(preset, "sub"), "inside the source"),
                               (str(tmp_path), "lies inside the destination")):
        # A preset of ours as the source of an export; the HF folder as a convert source.
        with pytest.raises(ValueError, match=words):
            convert.export_huggingface(preset, destination, overwrite=True)
    hf = str(tmp_path / "hf")
    convert.export_huggingface(preset, hf)
    before = tree_digest(tmp_path)
    with pytest.raises(ValueError, match="is the source"):
        convert.convert(hf, hf, overwrite=True, progress=False)
    with pytest.raises(ValueError, match="is the source"):
        convert.convert(hf, hf + "/.", overwrite=True, progress=False)
    with pytest.raises(ValueError, match="inside the source"):
        convert.convert(hf, os.path.join(hf, "converted"), progress=False)
    assert tree_digest(tmp_path) == before  # nothing touched, nothing left behind


def test_a_file_as_destination_is_refused_and_kept(tmp_path, source):
    npz, _ = source
    target = tmp_path / "notes.txt"
    target.write_text("my notes")
    with pytest.raises(ValueError, match="is a file"):
        convert.convert(npz, str(target), overwrite=True, progress=False)
    assert target.read_text() == "my notes"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # no hidden .old-* / .tmp-* copies


def test_existing_preset_needs_overwrite_and_is_replaced_whole(tmp_path, source, t5_proto):
    npz, spm = source
    destination = tmp_path / "preset"
    convert.convert(npz, str(destination), tokenizer=spm, progress=False)
    (destination / "unrelated.txt").write_text("left by someone")
    with pytest.raises(ValueError, match="already exists.*overwrite"):
        convert.convert(npz, str(destination), progress=False)
    assert (destination / "tokenizer.json").exists()
    # Without a tokenizer this time: the old tokenizer must not survive beside the new backbone.
    convert.convert(npz, str(destination), overwrite=True, progress=False)
    # (the image settings stay: big_vision's resize needs no tokenizer)
    assert sorted(os.listdir(destination)) == ["config.json", "image_converter.json", "metadata.json",
                                               "model.weights.h5"]
    SigLIPBackbone.from_preset(str(destination))


def test_unrelated_folder_is_never_replaced(tmp_path, source):
    npz, _ = source
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ValueError, match="without config.json.*even with --overwrite"):
        convert.convert(npz, str(folder), overwrite=True, progress=False)
    assert (folder / "holiday.jpg").read_bytes() == b"precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    convert.convert(npz, str(empty), progress=False)  # an empty folder is fine
    assert (empty / "config.json").exists()


def test_tokenizer_is_checked_before_converting(tmp_path, source):
    import io

    import sentencepiece

    npz, _ = source
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([f"word{i} other{i} thing{i}" for i in range(200)]), model_writer=model,
        vocab_size=100, model_type="word", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )
    big = tmp_path / "big.model"
    big.write_bytes(model.getvalue())
    with pytest.raises(ValueError, match=r"100 pieces but the model only 60"):
        convert.convert(npz, str(tmp_path / "out"), tokenizer=str(big), progress=False)
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        convert.convert(npz, str(tmp_path / "out"), tokenizer=str(junk), progress=False)
    with pytest.raises(FileNotFoundError):
        convert.convert(npz, str(tmp_path / "out"), tokenizer=str(tmp_path / "missing.model"), progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("interpolation,antialias", [("bilinear", False), ("bicubic", True)])
def test_huggingface_round_trip_keeps_preprocessing(tmp_path, source, interpolation, antialias):
    from keras_siglip.models import SigLIPImageConverter

    npz, spm = source
    preset = str(tmp_path / "preset")
    convert.convert(npz, preset, tokenizer=spm, progress=False)
    preprocessor = SigLIPPreprocessor.from_preset(preset)
    preprocessor.image_converter = SigLIPImageConverter(
        image_size=(32, 32), interpolation=interpolation, antialias=antialias)
    preprocessor.save_to_preset(preset)
    hf = str(tmp_path / "hf")
    convert.export_huggingface(preset, hf)
    settings = json.loads(open(os.path.join(hf, "preprocessor_config.json")).read())
    assert settings["resample"] == {"bilinear": 2, "bicubic": 3}[interpolation]
    back = str(tmp_path / "back")
    convert.convert(hf, back, progress=False)
    ours, again = (SigLIPPreprocessor.from_preset(p).image_converter.get_config() for p in (preset, back))
    for key in ("image_size", "interpolation", "antialias", "crop_to_aspect_ratio"):
        assert tuple(np.ravel(again[key])) == tuple(np.ravel(ours[key])), key
    np.testing.assert_allclose(again["scale"], ours["scale"], rtol=1e-12)
    np.testing.assert_allclose(again["offset"], ours["offset"], rtol=1e-12)
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3)).astype("uint8")
    np.testing.assert_allclose(
        ops.convert_to_numpy(SigLIPPreprocessor.from_preset(back).convert_images(image)),
        ops.convert_to_numpy(SigLIPPreprocessor.from_preset(preset).convert_images(image)), atol=1e-6)


def test_huggingface_export_describes_the_image_processor_for_transformers(tmp_path, source):
    transformers = pytest.importorskip("transformers")
    npz, spm = source
    preset = str(tmp_path / "preset")
    convert.convert(npz, preset, tokenizer=spm, progress=False)
    hf = str(tmp_path / "hf")
    convert.export_huggingface(preset, hf)
    processor = transformers.AutoImageProcessor.from_pretrained(hf)
    image = np.full((40, 60, 3), 200, "uint8")  # flat: every resize filter agrees
    theirs = processor(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = ops.convert_to_numpy(SigLIPPreprocessor.from_preset(preset).convert_images(image))
    np.testing.assert_allclose(theirs, ours, atol=1e-6)
