from keras_siglip.presets.siglip2_recipes import COMMON, RECIPES, recipe_card, size_factor_for_width
from keras_siglip.models.siglip2.siglip2_pretrainer import (
    DistillationState,
    DistillationSwitch,
    SigLIP2Pretrainer,
)
from keras_siglip.models.siglip2.resolution import (
    NAFLEX_SEQUENCE_LENGTHS,
    StretchedSchedule,
    at_resolution,
    pi_resize_patch_kernel,
)
from keras_siglip.models.siglip2.active_curation import (
    ActiveCurationTrainer,
    joint_selection,
    learnability_scores,
)
