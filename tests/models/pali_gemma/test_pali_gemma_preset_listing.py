"""PaliGemma cards in the preset listings, `from_preset` on a card, and
converting an HF PaliGemma folder (with its tokenizer) into a preset that
`PaliGemmaCausalLM.from_preset` loads whole."""

import os
import re

import numpy as np
import pytest

from keras import ops

from keras_siglip import cli
from keras_siglip.hub import PresetUnavailable
from keras_siglip.models.cappa.cappa_generation import compile_stateless
from keras_siglip.models.pali_gemma import (
    PaliGemmaBackbone,
    PaliGemmaCausalLM,
    PaliGemmaImageConverter,
    PaliGemmaTokenizer,
    pali_gemma_parameter_count,
)
from keras_siglip.presets.pali_gemma import PALI_GEMMA_PRESETS
from tests.helpers import numpy

PT = [f"paligemma_3b_pt_{r}" for r in (224, 448, 896)] + [
    f"paligemma2_{size}_pt_{r}" for size in ("3b", "10b", "28b") for r in (224, 448, 896)
]
MIX = [f"paligemma2_{size}_mix_{r}" for size in ("3b", "10b", "28b") for r in (224, 448)]
DOCCI = ["paligemma2_3b_ft_docci_448", "paligemma2_10b_ft_docci_448"]
NAMES = PT + MIX + DOCCI
TEXTS = ["caption en", "detect cat ; dog", "a red circle", "two green triangles", "answer en what colour"] * 8


def test_listings_hold_every_pali_gemma_card(capsys):
    import keras_siglip.presets as presets

    assert sorted(presets.PALI_GEMMA_PRESETS) == sorted(NAMES)
    sections = presets.list_presets()
    assert sorted(sections["pali_gemma"]) == sorted(NAMES)
    assert {"shipped", "published", "recipes"} <= set(sections)
    cli.main(["presets", "-v"])
    out = capsys.readouterr().out
    for name in NAMES:
        card = PALI_GEMMA_PRESETS[name]
        line = next(line for line in out.splitlines() if line.split()[:1] == [name])
        assert f"{card['metadata']['params']:,}" in line, line
        assert card["metadata"]["params"] == pali_gemma_parameter_count(card["config"])
    assert PALI_GEMMA_PRESETS["paligemma2_28b_pt_896"]["sources"]["huggingface"] in out
    assert "2,923,335,408" in out  # PaliGemma 3B 224 (HF card)


def test_mix_and_docci_cards():
    """Same architecture as the pt card of their size and resolution; their own
    HF ids; the installed keras-hub's Kaggle handles for the same checkpoints
    (the cards copy them, spellings included); the prompts they were fine-tuned on.
    Strings only: no hub is reached (downloads are tested against tests/hub_server.py)."""
    from keras_hub.src.models.pali_gemma.pali_gemma_presets import backbone_presets

    handles = {preset["kaggle_handle"] for preset in backbone_presets.values()}
    for name in MIX + DOCCI:
        card = PALI_GEMMA_PRESETS[name]
        meta, sources = card["metadata"], card["sources"]
        size, res = name.split("_")[1], int(name.split("_")[-1])
        pt = PALI_GEMMA_PRESETS[f"paligemma2_{size}_pt_{res}"]
        assert card["config"] == pt["config"] and meta["params"] == pt["metadata"]["params"], name
        assert meta["image_size"] == card["config"]["image_size"] == res
        assert meta["family"] == "PaliGemma 2" and f"{res}px" in meta["description"]
        variant = "mix" if name in MIX else "ft-docci"
        assert meta["variant"] == variant and pt["metadata"]["variant"] == "pt"
        assert sources["huggingface"] == pt["sources"]["huggingface"].replace("-pt-", f"-{variant}-"), name
        assert sources["kaggle"] in handles, name
        handle = sources["kaggle"].rsplit("/", 2)[-2]  # keras-hub's preset name in the handle
        assert size in handle and str(res) in handle and variant.split("-")[-1] in handle, (name, handle)
    assert set(PALI_GEMMA_PRESETS["paligemma2_10b_mix_448"]["metadata"]["prompts"]) == {
        "caption", "describe", "ocr", "answer", "detect", "segment"}
    assert PALI_GEMMA_PRESETS["paligemma2_3b_ft_docci_448"]["metadata"]["prompts"] == {"caption": "caption en"}
    assert PALI_GEMMA_PRESETS["paligemma2_28b_mix_448"]["metadata"]["params"] == 27_651_076_848
    assert PALI_GEMMA_PRESETS["paligemma2_3b_mix_224"]["config"]["num_key_value_heads"] == 4


@pytest.mark.parametrize("name", ["paligemma2_3b_mix_896", "paligemma2_28b_ft_docci_448", "paligemma_3b_mix_224",
                                  "paligemma2_3b_ft_docci_224"])
def test_unreleased_names_still_error(name):
    assert name not in PALI_GEMMA_PRESETS
    for load_weights in (False, True):
        with pytest.raises(ValueError, match="Unknown preset"):
            PaliGemmaBackbone.from_preset(name, load_weights=load_weights)
    with pytest.raises(ValueError, match="Unknown preset"):
        PaliGemmaCausalLM.from_preset(name)


def test_card_builds_the_architecture_without_weights(monkeypatch):
    tiny = dict(vocabulary_size=40, image_size=8, num_layers=1, num_query_heads=2, num_key_value_heads=1,
                hidden_dim=8, intermediate_dim=12, head_dim=4, vit_patch_size=4, vit_hidden_dim=8, vit_num_layers=1,
                vit_num_heads=2, vit_intermediate_dim=12)
    card = {**PALI_GEMMA_PRESETS["paligemma_3b_pt_224"], "config": tiny}
    monkeypatch.setitem(PALI_GEMMA_PRESETS, "tiny_card", card)
    backbone = PaliGemmaBackbone.from_preset("tiny_card", load_weights=False)
    assert backbone.count_params() == pali_gemma_parameter_count(tiny)
    assert backbone.get_config()["vocabulary_size"] == 40
    naflex = PaliGemmaBackbone.from_preset("tiny_card", load_weights=False, input_format="naflex",
                                           max_num_patches=6)
    assert naflex.input_format == "naflex" and naflex.num_image_tokens == 6
    for name in ("tiny_card", "paligemma2_3b_pt_448", "paligemma2_10b_mix_224", "paligemma2_3b_ft_docci_448"):
        # tests run offline (KERAS_SIGLIP_OFFLINE)
        with pytest.raises(PresetUnavailable, match=r"Could not fetch the weights of .*offline.*convert"):
            PaliGemmaBackbone.from_preset(name)


# === Converting an HF folder with its tokenizer ===

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny random HF PaliGemma (Gemma 1) saved with a SentencePiece
    `tokenizer.model` holding the loc/seg tokens."""
    tokenizer = PaliGemmaTokenizer.from_texts(TEXTS, vocabulary_size=1500)
    vocab = tokenizer.vocabulary_size() + 1  # + the image placeholder token
    torch.manual_seed(0)
    config = transformers.PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=24,
                           num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=4,
                           vision_use_head=False),
        text_config=dict(model_type="gemma", vocab_size=vocab, hidden_size=16, intermediate_size=24,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         pad_token_id=0, bos_token_id=2, eos_token_id=1),
        projection_dim=16, image_token_index=vocab - 1, vocab_size=vocab,
    )
    model = transformers.PaliGemmaForConditionalGeneration(config).float().eval()
    folder = str(tmp_path_factory.mktemp("hf_paligemma"))
    model.save_pretrained(folder, safe_serialization=True)
    with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
        f.write(tokenizer.proto)
    return folder, tokenizer


def test_converted_folder_loads_as_a_whole_task(hf_folder, tmp_path):
    from keras_siglip.convert import convert
    from keras_siglip.convert.pali_gemma import load_pali_gemma

    folder, tokenizer = hf_folder
    destination = convert(folder, str(tmp_path / "pg"), progress=False)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporary leftovers
    lm = PaliGemmaCausalLM.from_preset(destination)
    assert isinstance(lm.preprocessor.tokenizer, PaliGemmaTokenizer)
    assert lm.preprocessor.tokenizer.proto == tokenizer.proto
    assert isinstance(lm.preprocessor.image_converter, PaliGemmaImageConverter)
    assert tuple(lm.preprocessor.image_converter.image_size) == (16, 16)

    reference = load_pali_gemma(folder)
    x, _, _ = lm.preprocessor({"images": np.zeros((1, 20, 30, 3), "uint8"), "prompts": ["caption en"],
                               "responses": ["a red circle"]})
    logits = [numpy(compile_stateless(model, model)({k: ops.convert_to_tensor(v) for k, v in x.items()}))
              for model in (lm.backbone, reference)]
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-6, rtol=0)
    images = np.random.default_rng(0).integers(0, 256, (2, 24, 24, 3)).astype("uint8")
    texts = lm.generate(images, ["caption en", "detect cat"], max_new_tokens=3)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_folder_without_tokenizer_gives_a_backbone_preset(hf_folder, tmp_path):
    import shutil

    from keras_siglip.convert import convert

    folder, _ = hf_folder
    bare = str(tmp_path / "bare")
    shutil.copytree(folder, bare, ignore=shutil.ignore_patterns("tokenizer.model"))
    destination = convert(bare, str(tmp_path / "pg_bare"), progress=False)
    assert not os.path.exists(os.path.join(destination, "preprocessor.json"))
    lm = PaliGemmaCausalLM.from_preset(destination, preprocessor=None)
    assert lm.preprocessor is None
    with pytest.raises(ValueError, match="tokenizer is supported for SigLIP"):
        convert(bare, str(tmp_path / "pg_tok"), tokenizer=os.path.join(folder, "tokenizer.model"), progress=False)
    assert not (tmp_path / "pg_tok").exists()


def test_the_task_names_a_card_clearly():
    from keras_siglip.models import PaliGemmaCausalLM

    repo = PALI_GEMMA_PRESETS["paligemma2_3b_pt_224"]["sources"]["huggingface"]
    with pytest.raises(PresetUnavailable, match=re.escape(repo) + " .*keras-siglip convert"):  # offline: no hub
        PaliGemmaCausalLM.from_preset("paligemma2_3b_pt_224")
