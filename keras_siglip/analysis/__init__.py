"""Analysis tools: fractal parameters of per-token surprisal series."""

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
