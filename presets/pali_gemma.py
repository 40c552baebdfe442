"""Preset cards of the published PaliGemma 1 and PaliGemma 2 checkpoints: the
pretrained (`pt`) ones, PaliGemma 2 `mix` and PaliGemma 2 `ft-docci`.

Architecture only (like `keras_siglip.presets.PUBLISHED_PRESETS`): the
`PaliGemmaBackbone` config, the parameter count computed from it, and where the
weights live (Hugging Face, keras-hub on Kaggle, big_vision vanity names).
Listed by `keras-siglip presets` and `keras_siglip.presets.list_presets()`;
`PaliGemmaBackbone.from_preset(name, load_weights=False)` builds one with random
weights (kwargs override the config, e.g. `input_format="naflex"`). No weights
are shipped: convert the Hugging Face folder (`keras-siglip convert`, which also
bundles its `tokenizer.model` as a `PaliGemmaCausalLMPreprocessor`).

Variants (`metadata["variant"]`, with the prompts a card's model answers in
`metadata["prompts"]`):
- `pt` (224 / 448 / 896 px): pretrained, transfer-oriented; fine-tune them (the
  task prefixes of the pretraining mixture work, but are not the point).
- `mix` (PaliGemma 2, 3B / 10B / 28B at 224 / 448 px; Feb 2025): fine-tuned on a
  mixture of academic tasks, usable as they are: `caption en` (short caption),
  `describe en` (long description), `ocr`, `answer en <question>`, `detect <thing>
  ; <thing>` and `segment <thing>` (see `PaliGemmaCausalLM`'s task helpers).
- `ft-docci` (PaliGemma 2, 3B / 10B at 448 px): fine-tuned on DOCCI for long,
  fine-grained descriptions: prompt `caption en`.
Every variant of a size and resolution has the same architecture and the same
config (soft caps as HF's configs), and converts with the same flags.

Choices where the references differ:
- Sliding window: HF's Gemma 2 configs put a 4096-token window on the even
  layers; big_vision (which trained PaliGemma 2) attends globally in every layer.
  The cards follow big_vision (`sliding_window=None`); it matters only at 896 px
  for suffix tokens more than 4096 positions after a key.
- Final logit soft cap: 30 for PaliGemma 2, as HF's configs and big_vision's model
  default; big_vision's transfer configs set it to 0 ("better for transfer"):
  pass `final_logit_soft_cap=None` when fine-tuning that way.
"""

VOCABULARY_SIZE = 257_152  # Gemma 256,000 + 1024 <locNNNN> + 128 <segNNN>
TOKENIZER = "Gemma SentencePiece + 1024 <locNNNN> + 128 <segNNN> (PaliGemma)"
RESOLUTIONS = (224, 448, 896)

# Gemma sizes (big_vision `models/ppp/gemma.py`, HF conversion scripts).
GEMMA_1_2B = dict(num_layers=18, num_query_heads=8, num_key_value_heads=1, hidden_dim=2048,
                  intermediate_dim=16_384, head_dim=256)
GEMMA_2 = dict(attention_logit_soft_cap=50.0, final_logit_soft_cap=30.0, use_post_norms=True, sliding_window=None)
GEMMA_2_2B = dict(num_layers=26, num_query_heads=8, num_key_value_heads=4, hidden_dim=2304,
                  intermediate_dim=9216, head_dim=256, query_pre_attn_scalar=256, **GEMMA_2)
GEMMA_2_9B = dict(num_layers=42, num_query_heads=16, num_key_value_heads=8, hidden_dim=3584,
                  intermediate_dim=14_336, head_dim=256, query_pre_attn_scalar=256, **GEMMA_2)
# 27B scales queries by (hidden_dim / heads) ** -0.5 = 144 ** -0.5, not head_dim 128.
GEMMA_2_27B = dict(num_layers=46, num_query_heads=32, num_key_value_heads=16, hidden_dim=4608,
                   intermediate_dim=36_864, head_dim=128, query_pre_attn_scalar=144, **GEMMA_2)
# SigLIP So400m/14 (our `PaliGemmaBackbone` defaults).
SO400M_14 = dict(vit_patch_size=14, vit_hidden_dim=1152, vit_num_layers=27, vit_num_heads=16,
                 vit_intermediate_dim=4304)


def pali_gemma_config(gemma, image_size):
    """The `PaliGemmaBackbone` config of a released checkpoint."""
    return dict(vocabulary_size=VOCABULARY_SIZE, image_size=image_size, **gemma, **SO400M_14)


def gemma_parameter_count(config):
    """Trainable parameters of a `GemmaDecoder` config (tied output embedding)."""
    d, f = config["hidden_dim"], config["intermediate_dim"]
    n, k, h = config["num_query_heads"], config["num_key_value_heads"], config["head_dim"]
    norms = 4 if config.get("use_post_norms") else 2
    block = 2 * n * d * h + 2 * k * d * h + 3 * d * f + norms * d
    return config["vocabulary_size"] * d + config["num_layers"] * block + d


def pali_gemma_parameter_count(config):
    """Trainable parameters of a `PaliGemmaBackbone` config, without building it."""
    p = config.get("vit_patch_size", 14)
    w = config.get("vit_hidden_dim", 1152)
    m = config.get("vit_intermediate_dim", 4304)
    depth = config.get("vit_num_layers", 27)
    tokens = (config["image_size"] // p) ** 2
    block = 4 * (w * w + w) + 2 * w * m + m + w + 4 * w
    vision = (p * p * 3 + 1) * w + tokens * w + depth * block + 2 * w
    projector = (w + 1) * config["hidden_dim"]
    return vision + projector + gemma_parameter_count(config)


MIX_RESOLUTIONS = (224, 448)
DOCCI_RESOLUTION = 448
PT_PROMPTS = {
    "caption": "caption {lang}", "ocr": "ocr", "answer": "answer {lang} {question}",
    "detect": "detect {object} ; {object}", "segment": "segment {object}",
}
MIX_PROMPTS = {
    "caption": "caption {lang}", "describe": "describe {lang}", "ocr": "ocr",
    "answer": "answer {lang} {question}", "detect": "detect {object} ; {object}", "segment": "segment {object}",
}
DOCCI_PROMPTS = {"caption": "caption en"}
# (variant, names, resolutions, description, HF id pattern, keras-hub Kaggle handle, big_vision, prompts);
# Kaggle handles as keras-hub 0.32's `pali_gemma_presets.py` (its 28B mix handles put the size first).
_FINE_TUNED = {
    "3b": (
        ("mix", "paligemma2_3b_mix_{res}", MIX_RESOLUTIONS, "mix fine-tuned (caption, describe, OCR, VQA, detect, "
         "segment)", "google/paligemma2-3b-mix-{res}", "kaggle://keras/paligemma2/keras/pali_gemma2_mix_3b_{res}/2",
         None, MIX_PROMPTS),
        ("ft-docci", "paligemma2_3b_ft_docci_{res}", (DOCCI_RESOLUTION,), "fine-tuned on DOCCI (long, detailed "
         "captions)", "google/paligemma2-3b-ft-docci-{res}",
         "kaggle://keras/paligemma2/keras/pali_gemma_2_ft_docci_3b_{res}/2",
         "google/paligemma2-3b-ft-docci-{res}-jax", DOCCI_PROMPTS),
    ),
    "10b": (
        ("mix", "paligemma2_10b_mix_{res}", MIX_RESOLUTIONS, "mix fine-tuned (caption, describe, OCR, VQA, detect, "
         "segment)", "google/paligemma2-10b-mix-{res}", "kaggle://keras/paligemma2/keras/pali_gemma2_mix_10b_{res}/3",
         None, MIX_PROMPTS),
        ("ft-docci", "paligemma2_10b_ft_docci_{res}", (DOCCI_RESOLUTION,), "fine-tuned on DOCCI (long, detailed "
         "captions)", "google/paligemma2-10b-ft-docci-{res}",
         "kaggle://keras/paligemma2/keras/pali_gemma2_ft_docci_10b_{res}/3",
         "google/paligemma2-10b-ft-docci-{res}-jax", DOCCI_PROMPTS),
    ),
    "28b": (
        ("mix", "paligemma2_28b_mix_{res}", MIX_RESOLUTIONS, "mix fine-tuned (caption, describe, OCR, VQA, detect, "
         "segment)", "google/paligemma2-28b-mix-{res}", "kaggle://keras/paligemma2/keras/pali_gemma2_28b_mix_{res}/3",
         None, MIX_PROMPTS),
    ),
}


def _card(family, size, lm, gemma, res, variant, what, prompts, sources):
    config = pali_gemma_config(gemma, res)
    return {
        "metadata": {
            "family": family,
            "variant": variant,
            "description": f"{family} {size} {what} at {res}px: SigLIP So400m/14 "
                           f"({(res // 14) ** 2} image tokens) + {lm}",
            "params": pali_gemma_parameter_count(config),
            "image_size": res,
            "tokenizer": TOKENIZER,
            "pad_token": "<pad>",
            "prompts": dict(prompts),
        },
        "config": config,
        "sources": sources,
    }


def _cards():
    cards = {}
    families = [
        # (name prefix, family, size, language model, Gemma, HF prefix, Kaggle handle, big_vision name)
        ("paligemma_3b_pt", "PaliGemma", "3B", "Gemma 2B", GEMMA_1_2B, "google/paligemma-3b-pt",
         "kaggle://keras/paligemma/keras/pali_gemma_3b_{res}/4", "pt_{res}"),
        ("paligemma2_3b_pt", "PaliGemma 2", "3B", "Gemma 2 2B", GEMMA_2_2B, "google/paligemma2-3b-pt",
         "kaggle://keras/paligemma2/keras/pali_gemma2_pt_3b_{res}/2", "pt_3b_{res}"),
        ("paligemma2_10b_pt", "PaliGemma 2", "10B", "Gemma 2 9B", GEMMA_2_9B, "google/paligemma2-10b-pt",
         "kaggle://keras/paligemma2/keras/pali_gemma2_pt_10b_{res}/3", "pt_10b_{res}"),
        ("paligemma2_28b_pt", "PaliGemma 2", "28B", "Gemma 2 27B", GEMMA_2_27B, "google/paligemma2-28b-pt",
         "kaggle://keras/paligemma2/keras/pali_gemma2_pt_28b_{res}/{version}", "pt_28b_{res}"),
    ]
    for prefix, family, size, lm, gemma, hf, kaggle, big_vision in families:
        for res in RESOLUTIONS:
            version = 4 if res == 224 else 3  # keras-hub's 28B handles (unused by the others)
            cards[f"{prefix}_{res}"] = _card(family, size, lm, gemma, res, "pt", "pretrained", PT_PROMPTS, {
                "huggingface": f"{hf}-{res}",
                "kaggle": kaggle.format(res=res, version=version),
                "big_vision": f"PaliGemma vanity name {big_vision.format(res=res)}",
            })
        for variant, name, resolutions, what, hf_id, handle, jax_id, prompts in _FINE_TUNED.get(
                prefix.split("_")[1] if family == "PaliGemma 2" else None, ()):
            for res in resolutions:
                sources = {"huggingface": hf_id.format(res=res), "kaggle": handle.format(res=res)}
                if jax_id:  # the big_vision checkpoint's HF repo (informational: not fetched)
                    sources["big_vision"] = f"HF {jax_id.format(res=res)}"
                cards[name.format(res=res)] = _card(family, size, lm, gemma, res, variant, what, prompts, sources)
    return cards


PALI_GEMMA_PRESETS = _cards()
