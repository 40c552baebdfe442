"""Our SigLIP and PaliGemma presets exported for keras-hub (`export_keras_hub`,
`keras-siglip convert SRC DST --to keras-hub`) load with keras-hub's own
`from_preset` and give our outputs.

SigLIP: a SigLIP 1-style model (T5 vocabulary padded with `</s>`, a text head,
bicubic antialiased resize) and a SigLIP 2-style one (Gemma-layout vocabulary
padded with `<pad>`, a text tower without a head, exported with an identity
head as keras-hub always has one). PaliGemma: Gemma 1 and Gemma 2 (post
norms, soft caps of 2 and 3, a 9-token sliding window shorter than the
sequences), perturbed keras-hub models (`test_keras_hub_pali_gemma`) taken
into ours and exported again. Every weight is perturbed, so no bias is zero
and no norm scale one.

Tolerance ATOL = 1e-5 (float32, CPU). Measured max |ours - keras-hub|: SigLIP
logits (exp(t) = 10, b = -10), 1- / 2-style: jax 1.9e-6 / 9.5e-7, tensorflow 0 / 0,
torch 0 / 9.5e-7; PaliGemma logits of the real text positions (up to ~8 in size),
Gemma 1 / Gemma 2: jax 5.3e-6 / 1.8e-6, tensorflow 3.5e-6 / 2.5e-6, torch 3.7e-6 / 2.4e-6.
"""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest

from keras_siglip import convert
from keras_siglip.convert.keras_hub import keras_hub_config
from keras_siglip.convert.keras_hub_pali_gemma import (
    _keras_hub_honours_query_flag, config_from_keras_hub, config_to_keras_hub, load_keras_hub_pali_gemma,
)
from keras_siglip.models import (
    PaliGemmaBackbone, PaliGemmaCausalLM, SigLIPBackbone, SigLIPImageConverter, SigLIPPreprocessor,
    SigLIPTextEncoder, SigLIPTokenizer, SigLIPVisionEncoder,
)
from keras_siglip.models.pali_gemma import (
    PaliGemmaCausalLMPreprocessor, PaliGemmaImageConverter, PaliGemmaTokenizer,
)
from tests.helpers import (
    assert_one_line_error, numpy, perturb, perturb_pali_gemma, run_cli, tiny_backbone, train_sentencepiece,
)
from tests.keras_hub_pali_gemma_reference import BASE, CONFIGS, IMAGE, inputs, keras_hub_logits

ATOL = 1e-5
# Capitals, punctuation and an empty text; no "_" (keras-hub drops it, ours makes it a space).
TEXTS = ["a photo of a Red circle!", "two blue squares, at the BOTTOM", ""]


# === SigLIP ===


def siglip_model(style):
    """`(backbone, preprocessor)` of a tiny perturbed SigLIP 1- or 2-style model."""
    if style == "siglip1":
        backbone = tiny_backbone(image_size=32)  # text width 24, head to 32
        tokenizer = SigLIPTokenizer(proto=train_sentencepiece("t5"), pad_token="</s>")
        converter = SigLIPImageConverter(image_size=(32, 32), interpolation="bicubic", antialias=True)
    else:
        keras.utils.set_random_seed(1)
        backbone = SigLIPBackbone(
            SigLIPVisionEncoder(patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=48, image_size=16),
            SigLIPTextEncoder(60, 32, 2, 2, 64, sequence_length=6),  # no head
        )
        tokenizer = SigLIPTokenizer(proto=train_sentencepiece("gemma"), pad_token="<pad>")
        converter = SigLIPImageConverter(image_size=(16, 16))
    perturb(backbone, np.random.default_rng(2))
    backbone.contrastive_head.log_temperature.assign(np.log([10.0]).astype("float32"))
    backbone.contrastive_head.bias.assign(np.array([-10.0], "float32"))
    sequence_length = backbone.text_encoder.sequence_length
    return backbone, SigLIPPreprocessor(tokenizer, converter, sequence_length=sequence_length)


def save_preset(folder, *objects):
    for obj in objects:
        obj.save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="module", params=["siglip1", "siglip2"])
def siglip(request, tmp_path_factory):
    """`(style, ours, our preprocessor, source preset, keras-hub export)`."""
    folder = tmp_path_factory.mktemp(request.param)
    backbone, preprocessor = siglip_model(request.param)
    preset = save_preset(folder / "preset", backbone, preprocessor)
    assert convert.export_keras_hub(preset, folder / "export") == os.fspath(folder / "export")
    return request.param, backbone, preprocessor, preset, folder / "export"


def random_inputs(backbone, seed=0):
    rng = np.random.default_rng(seed)
    size = backbone.vision_encoder.image_size
    vocabulary, length = backbone.text_encoder.vocabulary_size, backbone.text_encoder.sequence_length
    token_ids = rng.integers(2, vocabulary, (3, length)).astype("int32")
    token_ids[:, -1] = 1
    return {"images": rng.uniform(-1, 1, (3, *size, 3)).astype("float32"), "token_ids": token_ids}


def test_keras_hub_loads_the_siglip_export_with_our_outputs(siglip):
    style, ours, _, _, folder = siglip
    assert json.loads((folder / "config.json").read_text())["registered_name"] == "keras_hub>SigLIPBackbone"
    theirs = keras_hub.models.SigLIPBackbone.from_preset(str(folder))
    x = random_inputs(ours)
    expected = numpy(ours(x)["logits"])
    got = numpy(theirs(x)["vision_logits"])
    print(f"{style} {keras.backend.backend()}: max |logit difference| = {np.abs(got - expected).max():.2e}")
    assert np.ptp(expected) > 1.0  # cosines scaled by 10: a wrong weight shows
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_keras_hub_preprocessor_packs_as_ours(siglip):
    """keras-hub's `SigLIPPreprocessor.from_preset` gives our token ids and
    images, and its backbone our logits. Images are float in [0, 255]:
    keras-hub rounds uint8 images after resizing, ours resize in float; and
    keras-hub does not clip a bicubic resize's overshoot, where ours (like
    HF's processor) stays within [-1, 1]."""
    style, ours, preprocessor, _, folder = siglip
    theirs = keras_hub.models.SigLIPPreprocessor.from_preset(str(folder))
    expected_class = {"siglip1": "SigLIPTokenizer", "siglip2": "GemmaTokenizer"}[style]
    assert type(theirs.tokenizer).__name__ == expected_class
    images = np.random.default_rng(3).uniform(0, 255, (3, 20, 28, 3)).astype("float32")
    packed = theirs({"images": images, "prompts": TEXTS})
    x = preprocessor({"images": images, "texts": TEXTS})
    np.testing.assert_array_equal(numpy(packed["token_ids"]), numpy(x["token_ids"]))
    np.testing.assert_allclose(np.clip(numpy(packed["images"]), -1, 1), numpy(x["images"]), atol=1e-6)
    assert numpy(x["images"]).min() >= -1 and numpy(x["images"]).max() <= 1
    model = keras_hub.models.SigLIPBackbone.from_preset(str(folder))
    got = numpy(model({"images": x["images"], "token_ids": packed["token_ids"]})["vision_logits"])
    np.testing.assert_allclose(got, numpy(ours(x)["logits"]), atol=ATOL)


@pytest.mark.parametrize("siglip", ["siglip1"], indirect=True)  # a head-less tower comes back with a head
def test_siglip_round_trip_is_bit_exact(siglip, tmp_path):
    """Read back (keras-hub -> ours) the export is our backbone, tensor for tensor."""
    _, ours, _, _, folder = siglip
    convert.convert(folder, tmp_path / "back", progress=False)
    back = SigLIPBackbone.from_preset(str(tmp_path / "back"))
    expected = {v.path: numpy(v) for v in ours.weights}
    assert sorted(expected) == sorted(v.path for v in back.weights)
    for variable in back.weights:
        np.testing.assert_array_equal(numpy(variable), expected[variable.path], err_msg=variable.path)


def test_what_keras_hub_siglip_cannot_express_is_refused(tmp_path):
    keras.utils.set_random_seed(0)
    backbone = SigLIPBackbone(
        SigLIPVisionEncoder(8, 32, 1, 2, 64, image_size=(16, 24), pooling="gap", num_classes=32),
        SigLIPTextEncoder(60, 32, 1, 2, 64, sequence_length=8, pooling="first"),
    )
    with pytest.raises(ValueError) as error:
        keras_hub_config(backbone)
    text = str(error.value)
    for words in ("image pooling 'gap'", "an image head of 32 classes", "non-square image size 16x24",
                  "text pooling 'first'"):
        assert words in text, text
    naflex = SigLIPBackbone(SigLIPVisionEncoder(4, 32, 1, 2, 64, image_size=16, input_format="naflex"),
                            SigLIPTextEncoder(60, 32, 1, 2, 64, sequence_length=6))
    save_preset(tmp_path / "naflex", naflex)
    with pytest.raises(ValueError, match="input_format 'naflex'"):
        convert.export_keras_hub(tmp_path / "naflex", tmp_path / "export")
    assert not os.path.exists(tmp_path / "export")


# === PaliGemma ===

# keras-hub 0.32 ignores query_head_dim_normalize=False (see keras_hub_pali_gemma): the
# exportable Gemma 2 scales queries by head_dim.
EXPORTABLE = {"gemma1": CONFIGS["gemma1"], "gemma2": dict(CONFIGS["gemma2"], query_head_dim_normalize=True)}


@pytest.fixture(scope="module", params=sorted(EXPORTABLE))
def pali_gemma(request, tmp_path_factory):
    """`(name, the keras-hub source, ours, keras-hub's load of our export)`."""
    keras.utils.set_random_seed(0)
    source = keras_hub.models.PaliGemmaBackbone(**BASE, **EXPORTABLE[request.param])
    perturb_pali_gemma(source, np.random.default_rng(1))
    ours = load_keras_hub_pali_gemma(source)
    folder = tmp_path_factory.mktemp(request.param)
    save_preset(folder / "preset", ours)
    convert.export_keras_hub(folder / "preset", folder / "export")
    return request.param, source, ours, keras_hub.models.PaliGemmaBackbone.from_preset(str(folder / "export"))


def test_keras_hub_loads_the_pali_gemma_export_with_our_logits(pali_gemma):
    name, _, ours, theirs = pali_gemma
    assert theirs.get_config()["use_sliding_window_attention"] == (name == "gemma2")
    x = inputs(np.random.default_rng(2))
    expected = numpy(ours(x))
    got = keras_hub_logits(theirs, x)
    real = x["padding_mask"].astype(bool)  # padded rows differ by design (keras-hub zeroes them)
    print(f"{name} {keras.backend.backend()}: max |logit difference| = {np.abs(got - expected)[real].max():.2e}")
    assert np.abs(expected[real]).max() > 1.0
    np.testing.assert_allclose(got[real], expected[real], atol=ATOL, rtol=0)


def test_keras_hub_greedy_generation_equals_ours(pali_gemma):
    _, _, ours, theirs = pali_gemma
    rng = np.random.default_rng(3)
    batch, prompt, new = 2, 4, 8
    images = rng.uniform(-1, 1, (batch, IMAGE, IMAGE, 3)).astype("float32")
    prompt_ids = rng.integers(2, BASE["vocabulary_size"], (batch, prompt)).astype("int32")
    reference = keras_hub.models.PaliGemmaCausalLM(backbone=theirs, preprocessor=None)
    reference.compile(sampler="greedy")
    padded = np.concatenate([prompt_ids, np.zeros((batch, new), "int32")], axis=1)
    mask = np.concatenate([np.ones((batch, prompt), bool), np.zeros((batch, new), bool)], axis=1)
    out = reference.generate({"images": images, "token_ids": padded, "padding_mask": mask}, stop_token_ids=None)
    expected = numpy(out["token_ids"])[:, prompt:]
    got = PaliGemmaCausalLM(ours, preprocessor=None).generate(images, token_ids=prompt_ids, max_new_tokens=new)
    np.testing.assert_array_equal(got, expected)


def test_pali_gemma_round_trip_is_bit_exact(pali_gemma):
    """keras-hub -> ours -> keras-hub gives back the source's config and every weight."""
    _, source, _, theirs = pali_gemma
    for key, value in source.get_config().items():
        if key not in ("name", "trainable", "dtype", "vit_name"):
            assert theirs.get_config()[key] == value, key
    assert len(theirs.weights) == len(source.weights)
    for a, b in zip(source.weights, theirs.weights):
        np.testing.assert_array_equal(numpy(b), numpy(a), err_msg=a.path)


def test_keras_hub_pali_gemma_task_loads_with_the_preprocessor(tmp_path):
    """With a tokenizer, keras-hub's `PaliGemmaCausalLM.from_preset` loads the
    export whole: keras-hub's tokenizer and image converter give our ids and
    images (keras-hub adds no "\\n" after the prompt: the prompt carries it)."""
    tokenizer = PaliGemmaTokenizer.from_texts(["caption en", "detect cat ; dog", "a red circle"] * 8,
                                             vocabulary_size=1500)
    config = config_from_keras_hub(dict(BASE, vocabulary_size=tokenizer.vocabulary_size()))
    keras.utils.set_random_seed(0)
    ours = PaliGemmaBackbone(**config)
    preprocessor = PaliGemmaCausalLMPreprocessor(tokenizer, PaliGemmaImageConverter(image_size=(IMAGE, IMAGE)),
                                                 sequence_length=10)
    save_preset(tmp_path / "preset", ours, preprocessor)
    convert.export_keras_hub(tmp_path / "preset", tmp_path / "export")
    lm = keras_hub.models.PaliGemmaCausalLM.from_preset(str(tmp_path / "export"))
    theirs = lm.preprocessor
    assert type(theirs).__name__ == "PaliGemmaCausalLMPreprocessor" and theirs.sequence_length == 10
    image = np.random.default_rng(0).uniform(0, 255, (1, 20, 24, 3)).astype("float32")
    x = preprocessor.generate_preprocess({"images": image, "prompts": ["caption en"]})
    packed = theirs.generate_preprocess({"images": image, "prompts": ["caption en\n"]})
    n = int(numpy(x["padding_mask"]).sum())
    np.testing.assert_array_equal(numpy(packed["token_ids"])[0, :n], numpy(x["token_ids"])[0, :n])
    np.testing.assert_allclose(numpy(packed["images"]), numpy(x["images"]), atol=1e-6)


def test_what_keras_hub_pali_gemma_cannot_express_is_refused(tmp_path):
    config = config_from_keras_hub(BASE)  # 4 image tokens, hidden 32 / 4 heads = 8, head_dim 6
    bad = dict(config, input_format="naflex", max_num_patches=4, query_pre_attn_scalar=5, sliding_window=4)
    with pytest.raises(ValueError) as error:
        config_to_keras_hub(bad)
    text = str(error.value)
    for words in ("input_format = 'naflex'", "query_pre_attn_scalar = 5", "sliding_window = 4"):
        assert words in text, text
    # hidden_dim / heads (PaliGemma 2 28B's scale): keras-hub's config says so, but 0.32 computes head_dim.
    scaled = dict(config, query_pre_attn_scalar=8)
    if _keras_hub_honours_query_flag():
        assert config_to_keras_hub(scaled)["query_head_dim_normalize"] is False
    else:
        with pytest.raises(ValueError, match="query_head_dim_normalize=True whatever the config says"):
            config_to_keras_hub(scaled)

    keras.utils.set_random_seed(0)
    save_preset(tmp_path / "naflex", PaliGemmaBackbone(**dict(config, input_format="naflex")))
    with pytest.raises(ValueError, match="input_format = 'naflex'"):
        convert.export_keras_hub(tmp_path / "naflex", tmp_path / "export")
    assert not os.path.exists(tmp_path / "export")


# === The command ===


@pytest.mark.slow
@pytest.mark.parametrize("siglip", ["siglip1"], indirect=True)
def test_installed_command_exports_to_keras_hub(siglip, tmp_path):
    """`keras-siglip convert SRC DST --to keras-hub` in a subprocess: "Wrote DST"
    on stdout and a folder keras-hub loads."""
    import shutil
    import subprocess
    import sys

    _, ours, _, preset, _ = siglip
    command = shutil.which("keras-siglip") or os.path.join(os.path.dirname(sys.executable), "keras-siglip")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    run = subprocess.run([command, "convert", str(preset), str(tmp_path / "kh"), "--to", "keras-hub"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"Wrote {tmp_path / 'kh'}\n"
    theirs = keras_hub.models.SigLIPBackbone.from_preset(str(tmp_path / "kh"))
    x = random_inputs(ours)
    np.testing.assert_allclose(numpy(theirs(x)["vision_logits"]), numpy(ours(x)["logits"]), atol=ATOL)


@pytest.mark.parametrize("siglip", ["siglip1"], indirect=True)
def test_command_refusals_are_one_line_errors(siglip, tmp_path, capsys):
    _, _, _, preset, _ = siglip
    keras.utils.set_random_seed(0)
    naflex = SigLIPBackbone(SigLIPVisionEncoder(4, 32, 1, 2, 64, image_size=16, input_format="naflex"),
                            SigLIPTextEncoder(60, 32, 1, 2, 64, sequence_length=6))
    save_preset(tmp_path / "naflex", naflex)
    assert_one_line_error(*run_cli(capsys, "convert", str(tmp_path / "naflex"), str(tmp_path / "x"),
                                   "--to", "keras-hub")[::2], "input_format 'naflex'", "keras-hub")
    assert_one_line_error(*run_cli(capsys, "convert", str(preset), str(tmp_path / "x"), "--to", "keras-hub",
                                   "--tokenizer", "t.spm")[::2], "--tokenizer")
    assert_one_line_error(*run_cli(capsys, "convert", str(preset), str(preset), "--to", "keras-hub")[::2],
                          "is the source")
    assert not os.path.exists(tmp_path / "x")
