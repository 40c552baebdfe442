"""Our PaliGemma 1 and 2 presets exported for Hugging Face (`export_huggingface`,
`convert.pali_gemma.write_pali_gemma`) load in transformers'
`PaliGemmaForConditionalGeneration` with the same logits and greedy tokens.

Tiny random HF models (`tests/models/pali_gemma/test_pali_gemma`: every
parameter shifted by noise, so no bias is zero and no norm scale one) are
converted to ours, saved as presets of ours and exported; transformers loads
the export. Gemma 2 (soft caps that bite, query scale != head_dim) is exported
twice: with HF's 4-token sliding window (shorter than the sequences) and
without one (big_vision's global attention, written as `layer_types` all
"full_attention").

Tolerance ATOL = 1e-5 on the logits of the real text positions (CPU, float32,
logits up to ~5); greedy tokens identical. Measured max |ours - HF| over two
input batches, Gemma 1 / Gemma 2 window / Gemma 2 global: jax 1.1e-6 / 2.0e-6 /
1.7e-6, tensorflow 1.1e-6 / 1.7e-6 / 1.7e-6, torch 9.5e-7 / 1.5e-6 / 1.5e-6.
"""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import keras  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from keras_siglip import convert  # noqa: E402
from keras_siglip.convert.pali_gemma import (  # noqa: E402
    _canonical_name, config_to_hf, load_pali_gemma, read_pali_gemma,
)
from keras_siglip.models.pali_gemma import (  # noqa: E402
    PaliGemmaBackbone, PaliGemmaCausalLM, PaliGemmaCausalLMPreprocessor, PaliGemmaImageConverter, PaliGemmaTokenizer,
)
from tests import pali_gemma_reference as reference  # noqa: E402
from tests.helpers import numpy  # noqa: E402
from tests.pali_gemma_reference import (  # noqa: E402
    GEMMA_1, GEMMA_2, NUM_IMAGE_TOKENS, TEXTS, build_hf_pali_gemma, keras_logits, make_inputs, max_real_difference,
    random_images, random_prompts,
)

ATOL = 1e-5
EOS, PAD = 1, 0
NEW_TOKENS = 10
# name: (HF text config, our sliding window when converting it)
MODELS = {"gemma1": (GEMMA_1, None), "gemma2_window": (GEMMA_2, "config"), "gemma2_global": (GEMMA_2, None)}


def load_in_transformers(folder):
    model, info = transformers.PaliGemmaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    return model.float().eval()


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported(request, tmp_path_factory):
    """`(name, HF source folder, ours, HF model of our export, export folder)`."""
    name = request.param
    text, window = MODELS[name]
    folder = tmp_path_factory.mktemp(name)
    build_hf_pali_gemma(text, seed=len(name)).save_pretrained(folder / "source")
    ours = load_pali_gemma(str(folder / "source"), sliding_window=window)
    ours.save_to_preset(str(folder / "preset"))
    convert.export_huggingface(folder / "preset", folder / "export")
    return name, folder / "source", ours, load_in_transformers(str(folder / "export")), folder / "export"


def test_logits_match_transformers(exported, monkeypatch):
    name, _, ours, model, folder = exported
    layer_types = json.loads((folder / "config.json").read_text())["text_config"].get("layer_types")
    if name == "gemma2_global":
        assert layer_types == ["full_attention"] * GEMMA_2["num_hidden_layers"]
    monkeypatch.setattr(reference, "IMAGE_TOKEN", model.config.image_token_index)  # our export's placeholder id
    for seed in (0, 1):
        inputs = make_inputs(seed)
        expected = reference.hf_text_logits(model, inputs)
        actual = keras_logits(ours, inputs)
        difference = max_real_difference(actual, expected, inputs)
        print(f"{name} {keras.backend.backend()}: max |logit difference| = {difference:.2e}")
        assert np.abs(expected).max() > 1.0 and difference <= ATOL


def test_greedy_tokens_match_transformers(exported):
    """HF `generate(do_sample=False)` on the export (its generation_config.json:
    EOS and pad) gives our greedy tokens."""
    name, _, ours, model, _ = exported
    images = random_images(2, seed=3)
    prompt, _ = random_prompts([6, 6], seed=4, avoid=(EOS,))
    expected_ours = PaliGemmaCausalLM(ours, preprocessor=None).generate(images, token_ids=prompt,
                                                                       max_new_tokens=NEW_TOKENS)
    image_ids = np.full((2, NUM_IMAGE_TOKENS), model.config.image_token_index, "int64")
    input_ids = np.concatenate([image_ids, prompt], axis=1)
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (EOS, PAD)
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.from_numpy(input_ids),
            pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
            attention_mask=torch.ones(input_ids.shape, dtype=torch.long),
            token_type_ids=torch.zeros(input_ids.shape, dtype=torch.long),
            do_sample=False, max_new_tokens=NEW_TOKENS,
        )
    theirs = out.numpy()[:, input_ids.shape[1]:]
    theirs = np.pad(theirs, ((0, 0), (0, NEW_TOKENS - theirs.shape[1])), constant_values=PAD)
    np.testing.assert_array_equal(expected_ours, theirs)
    assert (theirs[0] != PAD).sum() >= 8, theirs  # a long generation, not an early EOS


def test_round_trip_keeps_every_tensor(exported):
    """The export holds the source's tensors bit for bit (under the Hub
    checkpoints' names) and reads back into the same backbone config."""
    name, source, ours, _, folder = exported
    original = {_canonical_name(k): v for k, v in load_file(source / "model.safetensors").items()}
    written = load_file(folder / "model.safetensors")
    assert all(k.startswith(("vision_tower.vision_model.", "language_model.model.", "multi_modal_projector."))
               for k in written)
    written = {_canonical_name(k): v for k, v in written.items()}
    assert sorted(written) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(written[key].view("uint32"), value.view("uint32"), err_msg=key)
    config = read_pali_gemma(str(folder), sliding_window="config").config  # window: as written
    assert {key: ours.get_config()[key] for key in config} == config


def test_tokenizer_and_processor_are_carried(tmp_path):
    """A preset with a tokenizer: transformers' `PaliGemmaProcessor` loads the
    export, lays out prompt and response as our preprocessor does, puts
    `<image>` at the id config.json names, and the model reproduces our logits
    on its inputs."""
    tokenizer = PaliGemmaTokenizer.from_texts(TEXTS, vocabulary_size=1500)
    vocabulary = tokenizer.vocabulary_size()
    model = build_hf_pali_gemma(dict(GEMMA_1, vocab_size=vocabulary), seed=7)
    model.save_pretrained(tmp_path / "source")
    ours = load_pali_gemma(str(tmp_path / "source"))
    preprocessor = PaliGemmaCausalLMPreprocessor(tokenizer, PaliGemmaImageConverter(image_size=(16, 16)),
                                                 sequence_length=14)
    ours.save_to_preset(str(tmp_path / "preset"))
    preprocessor.save_to_preset(str(tmp_path / "preset"))
    convert.export_huggingface(tmp_path / "preset", tmp_path / "export")
    folder = tmp_path / "export"
    assert (folder / "tokenizer.model").read_bytes() == tokenizer.proto
    assert json.loads((folder / "preprocessor_config.json").read_text())["image_seq_length"] == NUM_IMAGE_TOKENS

    processor = transformers.PaliGemmaProcessor.from_pretrained(folder)
    model = load_in_transformers(str(folder))
    assert processor.image_token_id == model.config.image_token_index == vocabulary  # the first id after the pieces
    prompt, response = "caption en", "a red circle"
    image = np.random.default_rng(0).integers(0, 256, (20, 24, 3)).astype("uint8")
    hf = processor(text=["<image>" + prompt], images=[image], suffix=[response], return_tensors="np")
    x, _, _ = preprocessor({"images": image[None], "prompts": [prompt], "responses": [response]})
    n = int(numpy(x["padding_mask"]).sum())
    np.testing.assert_array_equal(hf["input_ids"][0, NUM_IMAGE_TOKENS:], numpy(x["token_ids"])[0, :n])
    np.testing.assert_array_equal(hf["token_type_ids"][0, NUM_IMAGE_TOKENS:], numpy(x["response_mask"])[0, :n])

    images = numpy(x["images"])  # our resize (big_vision's), fed to both
    with torch.no_grad():
        logits = model(
            input_ids=torch.from_numpy(hf["input_ids"]), attention_mask=torch.from_numpy(hf["attention_mask"]),
            token_type_ids=torch.from_numpy(hf["token_type_ids"]),
            pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
        ).logits.numpy()[0, NUM_IMAGE_TOKENS:]
    expected = numpy(ours({k: numpy(v) for k, v in x.items()}))[0, :n]
    np.testing.assert_allclose(expected, logits, atol=ATOL)


def test_what_hugging_face_cannot_express_is_refused(tmp_path):
    tiny = dict(vocabulary_size=40, image_size=8, num_layers=1, num_query_heads=2, num_key_value_heads=1,
                hidden_dim=8, intermediate_dim=12, head_dim=4, vit_patch_size=4, vit_hidden_dim=8, vit_num_layers=1,
                vit_num_heads=2, vit_intermediate_dim=12)
    with pytest.raises(ValueError) as error:  # Gemma 1 with Gemma 2 options
        config_to_hf(dict(tiny, final_logit_soft_cap=30.0, query_pre_attn_scalar=5), image_token_index=40)
    assert "final_logit_soft_cap = 30.0" in str(error.value) and "query_pre_attn_scalar = 5" in str(error.value)

    keras.utils.set_random_seed(0)
    PaliGemmaBackbone(**tiny, input_format="naflex").save_to_preset(str(tmp_path / "naflex"))
    with pytest.raises(ValueError, match="input_format = 'naflex'"):
        convert.export_huggingface(tmp_path / "naflex", tmp_path / "export")
    assert not os.path.exists(tmp_path / "export")


def test_convert_chooses_the_gemma_2_sliding_window(exported, tmp_path, capsys):
    """`keras-siglip convert --sliding-window none|config` of an HF PaliGemma 2
    folder: none (the default) attends globally, as big_vision; config keeps the
    folder's window, and then the logits equal transformers' on sequences longer
    than the window (the global model's do not). Elsewhere the option is an error."""
    from tests.helpers import assert_one_line_error, run_cli

    name, source, _, _, _ = exported
    if name != "gemma2_window":
        pytest.skip("one Gemma 2 source is enough")
    windows = {}
    for option in (None, "none", "config"):
        destination = tmp_path / f"preset_{option}"
        status, out, err = run_cli(capsys, "convert", str(source), str(destination),
                                   *(["--sliding-window", option] if option else []))
        assert status == 0, err
        windows[option] = PaliGemmaBackbone.from_preset(str(destination))
    window = {option: model.get_config()["sliding_window"] for option, model in windows.items()}
    assert window == {None: None, "none": None, "config": GEMMA_2["sliding_window"]}, window
    hf = load_in_transformers(str(source))
    inputs = make_inputs(seed=3)  # 16 image tokens + text: longer than the 4-token window
    theirs = reference.hf_text_logits(hf, inputs)
    differences = {option: max_real_difference(keras_logits(model, inputs), theirs, inputs)
                   for option, model in windows.items()}
    assert differences["config"] <= ATOL, differences
    assert differences["none"] > 100 * ATOL, differences
    capsys.readouterr()  # transformers' loading bar
    status, _, err = run_cli(capsys, "convert", str(source), str(tmp_path / "x"), "--sliding-window", "config",
                             "--to", "huggingface")
    assert_one_line_error(status, err, "--sliding-window", "not --to huggingface")
    with pytest.raises(ValueError, match="applies to Hugging Face PaliGemma folders; .* keras_siglip preset"):
        convert.read_checkpoint(tmp_path / "preset_config", sliding_window="config")
