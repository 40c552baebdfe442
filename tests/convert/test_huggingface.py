"""Hugging Face folders <-> keras_siglip (`keras_siglip.convert.huggingface`).

Random, fully perturbed HF models (`tests/hf_reference.build_hf_siglip`) are
saved with `save_pretrained` (one file, sharded, bfloat16), read with
`read_huggingface` and loaded with `common.load_into`; both models then see the
same inputs. HF -> ours -> HF must give back every tensor bit for bit, and a
random backbone of ours written with `write_huggingface` must load in
`transformers.AutoModel` and reproduce our outputs.

Tolerance: ATOL 1e-5 on L2-normalised embeddings and logits (exp(t) = 10,
b = -10), float32 on CPU. Measured max |ours - HF| over every case here: jax
image 3.6e-7 / text 3.0e-7 / logits 2.9e-6; tensorflow 1.9e-7 / 3.6e-7 / 3.8e-6;
torch 1.5e-7 / 0 / 1.9e-6. NaFlex grids avoid one-patch-wide (h, 1) grids,
where torch's antialiased resize is wrong on CPU (reference/peers.md 7.1).
"""

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from keras_siglip.convert.common import CheckpointMismatch, build_backbone, load_into  # noqa: E402
from keras_siglip.convert.huggingface import read_huggingface, write_huggingface  # noqa: E402
from keras_siglip.models import (  # noqa: E402
    SigLIPBackbone, SigLIPTextEncoder, SigLIPTokenizer, SigLIPVisionEncoder,
)
from tests.helpers import perturb_siglip_backbone, tiny_backbone  # noqa: E402
from tests.hf_siglip_cases import ATOL, assert_outputs_match, hf_model  # noqa: E402


def read_and_load(folder):
    checkpoint = read_huggingface(folder)
    return checkpoint, load_into(build_backbone(checkpoint.config), checkpoint, progress=False)


# -- reading ---------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["single", "sharded", "bfloat16"])
@pytest.mark.parametrize("naflex", [False, True], ids=["siglip", "siglip2_naflex"])
def test_read_matches_hf(tmp_path, naflex, layout):
    model = hf_model(naflex)
    folder = str(tmp_path / "hf")
    if layout == "bfloat16":
        model = model.to(torch.bfloat16)
        model.save_pretrained(folder, safe_serialization=True)
        model = model.float()  # the reference: the same bfloat16 numbers in float32
    else:
        model.save_pretrained(folder, safe_serialization=True,
                              max_shard_size="100KB" if layout == "sharded" else "50GB")
    if layout == "sharded":
        assert os.path.exists(os.path.join(folder, "model.safetensors.index.json"))
        assert len([f for f in os.listdir(folder) if f.endswith(".safetensors")]) > 1
    checkpoint, backbone = read_and_load(folder)
    dtypes = {str(value.dtype) for _, value in checkpoint.tensors()}
    assert dtypes == {"bfloat16" if layout == "bfloat16" else "float32"}
    assert backbone.vision_encoder.input_format == ("naflex" if naflex else "images")
    assert_outputs_match(backbone, model, naflex)


def test_tokenizer_and_preprocessing_are_carried(tmp_path, t5_proto, gemma_proto):
    # SigLIP 1: HF's own tokenizer files (spiece.model + tokenizer_config.json).
    folder = tmp_path / "siglip"
    hf_model(False).save_pretrained(folder)
    (tmp_path / "spiece.model").write_bytes(t5_proto)
    transformers.SiglipTokenizer(vocab_file=str(tmp_path / "spiece.model")).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": 16, "width": 16},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    }))
    checkpoint = read_huggingface(folder)
    assert checkpoint.tokenizer == {"proto": t5_proto, "pad_token": "</s>"}
    name, kwargs = checkpoint.image_converter
    assert name == "SigLIPImageConverter"
    assert kwargs == {"image_size": (16, 16), "scale": pytest.approx(1 / 127.5), "offset": -1.0,
                      "interpolation": "bicubic", "antialias": True}

    # SigLIP 2 NaFlex: a Gemma-layout tokenizer.model without tokenizer_config.json.
    folder = tmp_path / "siglip2"
    hf_model(True).save_pretrained(folder)
    (folder / "tokenizer.model").write_bytes(gemma_proto)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "Siglip2ImageProcessor", "patch_size": 4, "max_num_patches": 64}))
    checkpoint = read_huggingface(folder)
    assert checkpoint.tokenizer == {"proto": gemma_proto, "pad_token": "<pad>"}
    assert checkpoint.image_converter == ("NaFlexImageConverter", {"patch_size": 4, "max_num_patches": 64})
    os.remove(folder / "preprocessor_config.json")
    assert read_huggingface(folder).image_converter[1]["max_num_patches"] == 256


# -- round trips -----------------------------------------------------------------


@pytest.mark.parametrize("naflex", [False, True], ids=["siglip", "siglip2_naflex"])
def test_hf_to_ours_to_hf_is_bit_exact(tmp_path, naflex):
    source, target = str(tmp_path / "source"), str(tmp_path / "target")
    hf_model(naflex).save_pretrained(source, safe_serialization=True)
    checkpoint, backbone = read_and_load(source)
    write_huggingface(backbone, target)
    original = load_file(os.path.join(source, "model.safetensors"))
    written = load_file(os.path.join(target, "model.safetensors"))
    assert sorted(written) == sorted(original)
    for name, value in original.items():
        assert written[name].dtype == value.dtype and written[name].shape == value.shape, name
        np.testing.assert_array_equal(written[name].view("uint32"), value.view("uint32"), err_msg=name)
    assert read_huggingface(target).config == checkpoint.config


def load_in_transformers(folder):
    model, info = transformers.AutoModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    return model.float().eval()


def test_write_fixed_resolution_loads_in_transformers(tmp_path, t5_proto):
    backbone = perturb_siglip_backbone(tiny_backbone(image_size=16))  # 8 px patches, text width 24 -> head 32
    folder = str(tmp_path / "export")
    write_huggingface(backbone, folder, tokenizer=SigLIPTokenizer(proto=t5_proto))
    model = load_in_transformers(folder)
    assert type(model).__name__ == "SiglipModel"
    assert_outputs_match(backbone, model, naflex=False, length=8)
    assert (tmp_path / "export" / "spiece.model").read_bytes() == t5_proto
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ours = SigLIPTokenizer(proto=t5_proto)
    text = "a photo of a red circle"
    assert hf_tokenizer(text)["input_ids"] == ops.convert_to_numpy(ours(text)).tolist() + [1]
    assert read_huggingface(folder).tokenizer == {"proto": t5_proto, "pad_token": "</s>"}


def test_write_naflex_headless_text_loads_in_transformers(tmp_path, gemma_proto):
    keras.utils.set_random_seed(0)
    backbone = perturb_siglip_backbone(SigLIPBackbone(
        SigLIPVisionEncoder(4, 32, 2, 4, 48, image_size=16, input_format="naflex"),
        SigLIPTextEncoder(60, 32, 2, 2, 64, sequence_length=6),  # no head: width = embedding width
    ))
    folder = str(tmp_path / "export")
    write_huggingface(backbone, folder, tokenizer=SigLIPTokenizer(proto=gemma_proto, pad_token="<pad>"))
    model = load_in_transformers(folder)
    assert type(model).__name__ == "Siglip2Model"
    np.testing.assert_array_equal(model.text_model.head.weight.detach().numpy(), np.eye(32))
    np.testing.assert_array_equal(model.text_model.head.bias.detach().numpy(), np.zeros(32))
    assert_outputs_match(backbone, model, naflex=True)
    assert read_huggingface(folder).tokenizer == {"proto": gemma_proto, "pad_token": "<pad>"}
    # Gemma's end of sequence is `<eos>` (id 1): both tokenizers end texts with it. (The
    # pieces themselves differ here: HF rebuilds this tiny word-level model as BPE.)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ours = SigLIPTokenizer(proto=gemma_proto, pad_token="<pad>")
    assert ours.end_token == hf_tokenizer.eos_token == "<eos>" and ours.end_token_id == 1
    assert hf_tokenizer("a photo of a red circle")["input_ids"][-1] == 1


def test_export_takes_a_preset_name(tmp_path):
    """`export_huggingface` takes what `from_preset` takes: the shipped preset by name."""
    from keras_siglip.convert import export_huggingface

    folder = export_huggingface("siglip2_shapes_tiny", str(tmp_path / "export"))
    model = load_in_transformers(folder)
    backbone = SigLIPBackbone.from_preset("siglip2_shapes_tiny")
    size = backbone.vision_encoder.image_size[0]
    x = {"images": np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype("float32")}
    token_ids = np.random.default_rng(1).integers(2, 100, (2, backbone.text_encoder.sequence_length)).astype("int32")
    ours = backbone.predict({**x, "token_ids": token_ids}, verbose=0)
    with torch.no_grad():
        theirs = model(input_ids=torch.from_numpy(token_ids).long(),
                       pixel_values=torch.from_numpy(x["images"]).permute(0, 3, 1, 2))
    np.testing.assert_allclose(ours["logits"], theirs.logits_per_image.numpy(), atol=ATOL)


def test_write_replaces_the_folder_whole(tmp_path):
    """No file of an earlier model (shards, index, README) survives beside the new one."""
    folder = tmp_path / "export"
    hf_model(False).save_pretrained(folder, max_shard_size="100KB")  # shards + index
    (folder / "README.md").write_text("of the old model")
    write_huggingface(tiny_backbone(image_size=16), str(folder))
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    load_in_transformers(str(folder))


def test_write_refuses_what_hf_cannot_express(tmp_path):
    backbone = SigLIPBackbone(
        SigLIPVisionEncoder(8, 32, 1, 2, 64, image_size=32, pooling="gap"),
        SigLIPTextEncoder(60, 32, 1, 2, 64, sequence_length=8),
    )
    with pytest.raises(ValueError, match="image pooling 'gap'"):
        write_huggingface(backbone, str(tmp_path / "export"))
    assert not (tmp_path / "export").exists()


# -- errors ----------------------------------------------------------------------


@pytest.fixture
def hf_folder(tmp_path):
    folder = tmp_path / "hf"
    hf_model(False).save_pretrained(folder, safe_serialization=True)
    return folder


def edit_config(folder, **towers):
    config = json.loads((folder / "config.json").read_text())
    for key, value in towers.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def test_missing_files_and_pickles_are_refused(hf_folder):
    weights = hf_folder / "model.safetensors"
    os.remove(weights)
    (hf_folder / "pytorch_model.bin").write_bytes(b"\x80\x02pickle")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin.*only safetensors are read"):
        read_huggingface(hf_folder)
    os.remove(hf_folder / "config.json")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        read_huggingface(hf_folder)


def test_truncated_or_foreign_safetensors_are_refused(hf_folder):
    weights = hf_folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_huggingface(hf_folder)
    weights.write_bytes(b"PK\x03\x04 a zip archive, not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_huggingface(hf_folder)


def test_unsupported_configs_are_named(hf_folder):
    edit_config(hf_folder, model_type="clip")
    with pytest.raises(ValueError, match="model_type 'clip'"):
        read_huggingface(hf_folder)
    edit_config(hf_folder, model_type="siglip", architectures=["SiglipForImageClassification"])
    with pytest.raises(ValueError, match="architectures"):
        read_huggingface(hf_folder)
    edit_config(hf_folder, architectures=["SiglipModel"], vision_config={"hidden_act": "gelu", "vision_use_head": False},
                text_config={"layer_norm_eps": 1e-5})
    with pytest.raises(ValueError) as error:
        read_huggingface(hf_folder)
    for field in ("vision_config.hidden_act = 'gelu'", "vision_config.vision_use_head = False",
                  "text_config.layer_norm_eps = 1e-05"):
        assert field in str(error.value)


def test_wrong_names_and_shapes_are_listed(hf_folder):
    weights = load_file(hf_folder / "model.safetensors")
    del weights["logit_bias"]
    weights["extra.weight"] = np.zeros(3, "float32")
    weights["text_model.encoder.layers.0.self_attn.q_proj.weight"] = np.zeros((47, 48), "float32")
    save_file(weights, hf_folder / "model.safetensors", metadata={"format": "pt"})
    edit_config(hf_folder, text_config={"intermediate_size": 81})
    with pytest.raises(CheckpointMismatch) as error:
        read_and_load(hf_folder)
    message = str(error.value)
    missing = next(line for line in message.splitlines() if line.strip().startswith("missing"))
    assert "contrastive_head/bias" in missing
    assert "unexpected (1): huggingface:extra.weight" in message
    assert "transformer/encoder/block_0/mlp/dense_0/kernel: checkpoint (48, 80) vs model (48, 81)" in message
    assert "transformer/encoder/block_0/attention/query/kernel: checkpoint (47, 48) vs model (48, 3, 16)" in message


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_large_tensors_are_read_in_blocks(tmp_path, monkeypatch, dtype):
    """Tensors over the block size are read a block of rows at a time (the file
    reopened each time); the result is the tensor, whatever the remainder."""
    import ml_dtypes

    from keras_siglip.convert import huggingface

    rng = np.random.default_rng(0)
    tensors = {
        "rows": rng.normal(size=(37, 5, 3)).astype(np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else dtype),
        "vector": rng.normal(size=(101,)).astype("float32"),
        "scalar": np.array(3.0, "float32"),
    }
    path = str(tmp_path / "model.safetensors")
    save_file(tensors, path)
    monkeypatch.setattr(huggingface, "_READ_BLOCK_BYTES", 64)  # 2 rows of 5x3 x 2-4 bytes
    for name, value in tensors.items():
        read = huggingface.read_tensor(path, name)
        assert read.dtype == value.dtype and read.shape == value.shape, name
        assert read.tobytes() == value.tobytes(), name


def test_image_preprocessing_is_kept_without_a_tokenizer(tmp_path):
    """An HF folder with `preprocessor_config.json` but no SentencePiece file:
    the preset keeps the image settings (bicubic, antialias, size) although it
    cannot have a text preprocessor."""
    from keras_siglip import convert
    from keras_siglip.models import SigLIPImageConverter

    folder = tmp_path / "siglip"
    hf_model(False).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": 16, "width": 16},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    }))
    convert.convert(str(folder), str(tmp_path / "preset"), progress=False)
    converter = SigLIPImageConverter.from_preset(str(tmp_path / "preset"))
    assert (converter.interpolation, converter.antialias, converter.image_size) == ("bicubic", True, (16, 16))
    assert not (tmp_path / "preset" / "tokenizer.json").exists()
