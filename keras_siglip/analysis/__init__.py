"""Analysis tools: fractal parameters of per-token surprisal series, detecting generated text
by them, and model-level bias metrics (M4)."""

from keras_siglip.analysis import fractal
from keras_siglip.analysis.fractal import (
    PAPER_SETTINGS,
    FractalResult,
    expected_rescaled_range,
    PowerLawFit,
    fractal_analysis,
    fractal_parameters,
    fractional_gaussian_noise,
    hurst_exponent,
    joseph_exponent,
    plot_fractal_fits,
    power_law_fit,
    prepare_increments,
    score_token_log_probs,
    self_similarity_exponent,
    surprisal,
    token_log_probs,
)
from keras_siglip.analysis import bias
from keras_siglip.analysis.bias import (
    AssociationBias,
    RepresentationBias,
    association_bias,
    association_bias_from_predictions,
    representation_bias,
    zero_shot_predictions,
)
from keras_siglip.analysis import detection
from keras_siglip.analysis.detection import (
    GenerationRow,
    LogisticDetector,
    bootstrap_interval,
    detection_experiment,
    document_features,
    generation_sweep,
    keras_hub_generator,
    roc_auc,
)
