"""The SigLIP 2 training recipe per model size (Tschannen et al. 2025, sections 2.1-2.5).

`RECIPES[size]` is a recipe card: what the paper trains each released size
with. Values the paper does not publish are marked UNCONFIRMED in `NOTES` and
chosen here (DINO's defaults for the self-distillation head and temperatures).
"""

# Shared by every size (paper section 2.1-2.4).
COMMON = {
    "optimizer": "Adam, lr 1e-3, decoupled weight decay 1e-4, global-norm clip 1.0 (SigLIPAdamW)",
    "batch_size": 32_768,
    "warmup_steps": 20_000,
    "schedule": "cosine",
    "examples_seen": 40_000_000_000,
    "resolution": 256,
    "patch_size": 16,
    "text_length": 64,
    "decoder_weight": 1.0,
    "masked_pred_prob": 0.5,
    "distillation_start": 0.8,
    "local_to_global_weight": 1.0,
    "masked_prediction_weight": 0.25,
    "num_local_views": 8,
    "global_crop_area": (0.4, 1.0),
    "local_crop_area": (0.05, 0.4),
    "mask_ratio": 0.5,
    "fixed_res_continuation": "from 95%: resize the position grid (/14: FlexiViT PI-resize of the patch "
                              "embedding), last 5% at the target resolution with all losses",
    "naflex_continuation": "from 90%: aspect-preserving, sequence length per batch from "
                           "{128, 256, 576, 784, 1024}, last 10% of the schedule stretched 3.75x, "
                           "no self-distillation",
}

# Per size: ViT variant (image tower), text tower variant, decoder depth (half
# the text tower's), `f_size` (the weight of both stage-B terms).
RECIPES = {
    "B": {"vision": "B", "text": "B", "width": 768, "decoder_depth": 6, "size_factor": 0.25,
          "active_curation": "ACID from an So400m teacher, filter ratio 0.5 (B/32: 0.75), 4B more examples"},
    "L": {"vision": "L", "text": "L", "width": 1024, "decoder_depth": 12, "size_factor": 0.5,
          "active_curation": None},
    "So400m": {"vision": "So400m", "text": "So400m", "width": 1152, "decoder_depth": 13, "size_factor": 1.0,
               "active_curation": None},
    "g-opt": {"vision": "g-opt", "text": "So400m", "width": 1536, "decoder_depth": 13, "size_factor": 0.5,
              "active_curation": None},
}

NOTES = {
    "decoder_depth": "half the text tower's depth; So400m's 27 -> 13 or 14 is UNCONFIRMED (13 here)",
    "head": "DINO head: 3-layer MLP (hidden 2048, bottleneck 256) to 65,536 prototypes (UNCONFIRMED; DINO's)",
    "temperatures": "student 0.1, teacher 0.04, centre momentum 0.9 (UNCONFIRMED; DINO's)",
    "ema_momentum": "fixed (SILC); value UNCONFIRMED, 0.996 here (DINO's starting value)",
    "active_curation": "stage D (ActiveCurationTrainer): lr 1e-5, no weight decay, sigmoid loss only; "
                       "learnability = learner - reference per-pair sigmoid loss, JEST joint selection in 16 "
                       "chunks (ACID's exact formula UNCONFIRMED)",
}


def recipe_card(size):
    """The recipe of one size (`"B"`, `"L"`, `"So400m"`, `"g-opt"`) merged with `COMMON`."""
    if size not in RECIPES:
        raise ValueError(f"No SigLIP 2 recipe for size {size!r}; sizes: {sorted(RECIPES)}.")
    return {**COMMON, **RECIPES[size]}


def size_factor_for_width(width):
    """`f_size` of the released size whose image tower has this width."""
    for size, card in RECIPES.items():
        if card["width"] == width:
            return card["size_factor"]
    widths = ", ".join(f"{card['width']} ({size})" for size, card in RECIPES.items())
    raise ValueError(
        f"The paper gives f_size only for its released sizes (image width {widths}); this image "
        f"tower has width {width}. Pass size_factor= explicitly."
    )
